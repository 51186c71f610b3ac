"""Turning an engine result into what users keep: A1111 infotext and saved PNGs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..engine.hashing import model_hash
from ..engine.pipeline import GenerationRequest, GenerationResult
from . import infotext, saving


@dataclass(frozen=True)
class ModelInfo:
    """Names and short hashes as infotext shows them (``Model: v1-5-pruned-emaonly``)."""
    name: str
    hash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None

    @classmethod
    def of(cls, ckpt: Path, vae: Path | None = None, hash_cache: Path | None = None) -> "ModelInfo":
        return cls(ckpt.stem, model_hash(ckpt, hash_cache),
                   vae.name if vae else None, model_hash(vae, hash_cache) if vae else None)


def infotext_params(request: GenerationRequest, result: GenerationResult, seed: int, model: ModelInfo,
                    refiner: ModelInfo | None = None, subseed: int = -1) -> dict:
    """The parameters line, in A1111's key order. ``refiner``: the refiner that took over (``Refiner: name
    [hash]``, ``Refiner switch at``, as A1111 writes them once the switch happened)."""
    params = {
        "Steps": request.steps,
        "Sampler": result.sampler_name,
        "Schedule type": result.scheduler,
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.hash,
        "Model": model.name,
        "VAE hash": model.vae_hash,
        "VAE": model.vae_name,
        "Variation seed": subseed if request.subseed_strength else None,
        "Variation seed strength": request.subseed_strength or None,
        "Seed resize from": (f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
                             if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0 else None),
        "Denoising strength": result.extra.get("Denoising strength"),
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
    }
    params.update({k: v for k, v in result.extra.items() if k != "Denoising strength"})
    params.update(size_params(request))
    if refiner is not None:
        params["Refiner"] = f"{refiner.name} [{refiner.hash}]" if refiner.hash else refiner.name
        params["Refiner switch at"] = request.refiner_switch_at
    params["Version"] = __version__
    return params


def size_params(request: GenerationRequest) -> dict:
    """SDXL's size conditioning where the request set it (``WxH``, crop as ``top,left``)."""
    params = {}
    for key, name in (("original_size", "Original size"), ("target_size", "Target size")):
        value = getattr(request, key)
        if value is not None:
            params[name] = f"{value[1]}x{value[0]}"
    if request.crops_coords_top_left is not None:
        params["Crop top-left"] = "{},{}".format(*request.crops_coords_top_left)
    return params


def infotexts(request: GenerationRequest, result: GenerationResult, model: ModelInfo,
              before_save=None, refiner: ModelInfo | None = None) -> list[str]:
    """One infotext per image; ``before_save(image, params)`` may add keys first (extensions)."""
    texts = []
    for img in result.images:
        params = infotext_params(request, result, img.seed, model, refiner, img.subseed)
        if before_save is not None:
            version = params.pop("Version", None)
            before_save(img.image, params)
            params["Version"] = version        # A1111 keeps Version last
        texts.append(infotext.build(img.prompt, img.negative_prompt, params))
    return texts


def save_result(request: GenerationRequest, result: GenerationResult, model: ModelInfo, out: Path,
                kind: str = "txt2img", grid_dir: Path | None = None, refiner: ModelInfo | None = None) -> list[Path]:
    """Save every image with its infotext. ``out``: a ``.png`` file (one image, or ``name-N.png`` for
    several) or a folder (A1111 naming ``NNNNN-SEED.png``; a ``grid-NNNN.png`` too for several images,
    in ``grid_dir`` when given, e.g. ``saving.grid_folder(outputs, kind)``, else in ``out``)."""
    texts = infotexts(request, result, model, refiner=refiner if result.refiner_switched else None)
    out = Path(out)
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = [out] if len(texts) == 1 else [out.with_name(f"{out.stem}-{i + 1}.png") for i in range(len(texts))]
        for img, text, path in zip(result.images, texts, paths):
            path.write_bytes(saving.png_with_infotext(img.image, text))
        return paths
    paths = [saving.save_image(img.image, out, seed=img.seed, infotext=text)
             for img, text in zip(result.images, texts)]
    if len(paths) > 1:
        paths.append(saving.save_grid([img.image for img in result.images],
                                      out if grid_dir is None else grid_dir, texts[0]))
    return paths
