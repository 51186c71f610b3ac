"""The engine's facts as A1111's generation parameters: the one place that names infotext keys, in A1111's
order (``create_infotext``: Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash ... then the
``extra_generation_params`` in the order the processing adds them, then Version last).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..engine.hashing import model_hash
from ..engine.images import MASKED_CONTENT
from ..engine.request import GenerationRequest
from ..engine.result import GenerationFacts, GenerationResult, ImageRecord
from . import infotext

# a sampler parameter's request field -> its infotext key (``Eta DDIM`` for DDIM's eta, as A1111)
PARAMETER_KEYS = {"eta": "Eta", "s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax",
                  "s_noise": "Sigma noise"}


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

    @property
    def title(self) -> str:
        """A1111's short title: ``name [hash]``."""
        return f"{self.name} [{self.hash}]" if self.hash else self.name


def extra_params(facts: GenerationFacts, hires_checkpoint: ModelInfo | None = None) -> dict:
    """The job's parameters beyond the common ones (A1111's ``extra_generation_params``), in A1111's order:
    denoising strength, the inpainting settings, the noise multiplier, the sampler parameters, hires fix, tiling,
    the extensions' keys, textual inversions and the emphasis mode. ``hires_checkpoint``: hires fix's own
    checkpoint, written ``name [hash]`` (without it: the file's stem)."""
    p: dict = {}
    denoising = facts.denoising_strength if facts.hires is None else facts.hires.denoising_strength
    if denoising is not None:
        p["Denoising strength"] = denoising
    mask = facts.mask
    if mask is not None:
        if mask.invert:
            p["Mask mode"] = "Inpaint not masked"
        if mask.blur > 0:
            p["Mask blur"] = mask.blur
        if mask.only_masked_padding is not None:
            p["Inpaint area"] = "Only masked"
            p["Masked area padding"] = mask.only_masked_padding
        if mask.fill is not None:
            p["Masked content"] = MASKED_CONTENT[mask.fill]
    if facts.noise_multiplier is not None:
        p["Noise multiplier"] = facts.noise_multiplier
    for name, value in facts.parameters.items():
        p["Eta DDIM" if name == "eta" and facts.sampler == "DDIM" else PARAMETER_KEYS[name]] = value
    h = facts.hires
    if h is not None:
        if h.checkpoint:
            p["Hires checkpoint"] = (f"{hires_checkpoint.name} [{hires_checkpoint.hash}]" if hires_checkpoint
                                     else Path(h.checkpoint).stem)
        optional = (("Hires sampler", h.sampler), ("Hires schedule type", h.scheduler), ("Hires prompt", h.prompt),
                    ("Hires negative prompt", h.negative_prompt))
        p.update({key: value for key, value in optional if value is not None})
        p[h.target[0]] = h.target[1]
        if h.steps:
            p["Hires steps"] = h.steps
        if h.upscaler is not None:
            p["Hires upscaler"] = h.upscaler
    if facts.tiling:
        p["Tiling"] = True
    p.update(facts.extension_params)
    if facts.embeddings:
        p["TI hashes"] = ", ".join(infotext.hash_entry(name, short) for name, short in facts.embeddings)
    if facts.emphasis is not None:
        p["Emphasis"] = facts.emphasis
    return p


def image_params(request: GenerationRequest, result: GenerationResult, image: ImageRecord, model: ModelInfo,
                 refiner: ModelInfo | None = None, hires: ModelInfo | None = None) -> dict:
    """One image's parameters line, in A1111's key order. ``refiner``: the refiner that took over (``Refiner:
    name [hash]``, ``Refiner switch at``, as A1111 writes them once the switch happened)."""
    extra = extra_params(result.facts, hires)
    params = {
        "Steps": request.steps,
        "Sampler": result.facts.sampler,
        "Schedule type": result.facts.scheduler,
        "CFG scale": request.cfg_scale,
        "Seed": image.seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.hash,
        "Model": model.name,
        "VAE hash": model.vae_hash,
        "VAE": model.vae_name,
        "Variation seed": image.subseed if request.subseed_strength else None,
        "Variation seed strength": request.subseed_strength or None,
        "Seed resize from": (f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
                             if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0 else None),
        "Denoising strength": extra.pop("Denoising strength", None),
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
    }
    params.update(extra)
    params.update(size_params(request))
    if refiner is not None and result.facts.refiner_switched:
        params["Refiner"] = refiner.title
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


def infotexts(request: GenerationRequest, result: GenerationResult, model: ModelInfo, before_save=None,
              refiner: ModelInfo | None = None, hires: ModelInfo | None = None) -> list[str]:
    """One infotext per image; ``before_save(image, params)`` may add keys first (extensions)."""
    texts = []
    for record in result.images:
        params = image_params(request, result, record, model, refiner, hires)
        if before_save is not None:
            version = params.pop("Version", None)
            before_save(record.image, params)
            params["Version"] = version        # A1111 keeps Version last
        texts.append(infotext.build(record.prompt, record.negative_prompt, params))
    return texts
