"""The command line's arguments (``app.py txt2img|img2img``) -> a ``JobSpec``.

The flags map onto A1111's request fields; ``--request FILE.json`` takes an A1111 request body instead (the API's
own parser: hires fix, scripts, refiner, override settings ... everything the API has). Extensions get their
arguments from ``--alwayson-scripts FILE.json`` (A1111's ``alwayson_scripts`` object) and ``--controlnet``
units (``model=NAME,image=FILE,module=canny,weight=0.8``, repeatable). Files named on the command line
(``--ckpt``, ``--vae``, ``--refiner``) join the model lists under their file names.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

from ...engine.request import GenerationRequest
from ..spec import ExtensionArgs, JobSpec, Limits
from . import Requests

# the flags that make a request; --request takes the whole request instead
GENERATION_FLAGS = ("prompt", "negative_prompt", "sampler", "scheduler", "steps", "cfg_scale", "seed", "width",
                    "height", "batch_size", "n_iter", "clip_skip", "emphasis", "style", "refiner", "refiner_switch_at",
                    "original_size", "target_size", "crop_top_left", "init_image", "denoising_strength", "resize_mode",
                    "mask", "mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
                    "inpainting_mask_invert")


def open_image(path: Path, what: str):
    """A picture file as a PIL image; ValueError naming it."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from None


def job_from_args(requests: Requests, args, defaults: dict, *, width: int = 512, height: int = 512) -> JobSpec:
    """The command line's job. ``defaults``: the parser's defaults (a generation flag given together with
    ``--request`` is refused). ``width`` / ``height``: the model's native size, for the flags left out. Saving
    is the caller's: with ``-o`` it writes the files itself, else the job saves to the output folders."""
    kind, save = args.command, args.output is None
    checkpoint = cli_checkpoint(requests.catalog, args)
    vae = requests.catalog.add_vae(args.vae) if args.vae is not None else "None"   # no --vae: the file's own
    extension_args = ExtensionArgs(api=_alwayson(args))
    if args.request is not None:
        given = [f"--{name.replace('_', '-')}" for name in GENERATION_FLAGS
                 if name in vars(args) and getattr(args, name) != defaults.get(name)]
        if given:
            raise ValueError(f"--request takes the whole request; drop {', '.join(given)} (or set them in the file)")
        return _job_from_file(requests, args, kind, checkpoint, vae, extension_args, save)
    refiner = requests.catalog.add_checkpoint(args.refiner) if args.refiner is not None else None
    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, sampler_name=args.sampler, scheduler=args.scheduler,
        steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed, width=args.width or width,
        height=args.height or height, batch_size=args.batch_size, n_iter=args.n_iter, clip_skip=args.clip_skip,
        emphasis=args.emphasis, original_size=args.original_size, target_size=args.target_size,
        crops_coords_top_left=args.crop_top_left, refiner_checkpoint=refiner, refiner_switch_at=args.refiner_switch_at)
    if kind == "img2img":
        request.init_image = open_image(args.init_image, "init image")
        request.mask = open_image(args.mask, "mask") if args.mask else None
        request.denoising_strength = args.denoising_strength
        request.resize_mode = args.resize_mode
        request.mask_blur = args.mask_blur
        request.inpainting_fill = args.inpainting_fill
        request.inpaint_full_res = args.inpaint_full_res
        request.inpaint_full_res_padding = args.inpaint_full_res_padding
        request.inpainting_mask_invert = args.inpainting_mask_invert
    return requests.job(request, kind, checkpoint=checkpoint, vae=vae, styles=args.style,
                        extension_args=extension_args, save=save, owner="cli", limits=Limits.none())


def cli_checkpoint(catalog, args) -> str:
    """The checkpoint's listed name: ``--ckpt FILE``, else the first of ``--ckpt-dir`` that is not a demo model,
    else the demo model; ValueError when there is none."""
    if args.ckpt is not None:
        return catalog.add_checkpoint(args.ckpt)
    name = catalog.default_checkpoint_name()
    if name is None:
        raise ValueError(f"no checkpoint given and none found in {catalog.paths.checkpoints}; "
                         "put a .safetensors file there or pass --ckpt PATH")
    return name


def _job_from_file(requests: Requests, args, kind: str, checkpoint, vae, extension_args, save) -> JobSpec:
    from pydantic import ValidationError

    from .api import job_from_body
    from .body import Img2ImgRequest, Txt2ImgRequest
    path = args.request
    data = _json_file(path, "--request")
    try:
        body = (Img2ImgRequest if kind == "img2img" else Txt2ImgRequest).model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"--request {path}: {problems}") from None
    overrides = dict(body.override_settings or {})         # --ckpt / --vae win over the file's own choice
    if args.ckpt is not None or "sd_model_checkpoint" not in overrides:
        overrides["sd_model_checkpoint"] = checkpoint
    if args.vae is not None or "sd_vae" not in overrides:
        overrides["sd_vae"] = vae
    body = body.model_copy(update={"override_settings": overrides,
                                   "alwayson_scripts": {**body.alwayson_scripts, **extension_args.api}})
    return job_from_body(requests, body, kind, Limits.none(), owner="cli", resumable=False, save=save)


def _json_file(path: Path, flag: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag} {path}: {exc}") from None


def _alwayson(args) -> dict:
    """A1111's ``alwayson_scripts`` from ``--alwayson-scripts FILE`` and the ``--controlnet`` units."""
    alwayson = dict(_json_file(args.alwayson_scripts, "--alwayson-scripts")) if args.alwayson_scripts else {}
    if not isinstance(alwayson, dict):
        raise ValueError(f"--alwayson-scripts {args.alwayson_scripts}: expected a JSON object of title -> args")
    units = [controlnet_unit(text) for text in args.controlnet or []]
    if units:
        entry = alwayson.get("controlnet", {})
        existing = entry.get("args", []) if isinstance(entry, dict) else list(entry)
        alwayson["controlnet"] = {"args": [*existing, *units]}
    return alwayson


def controlnet_unit(text: str) -> dict:
    """``model=NAME,image=FILE,module=canny,weight=0.8`` -> sd-webui-controlnet's unit fields (``image``: the
    file, sent as base64; numbers and true/false converted; the unit enabled)."""
    unit: dict = {"enabled": True}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--controlnet {text!r}: expected key=value pairs, e.g. model=NAME,image=FILE")
        key, value = key.strip(), value.strip()
        if key == "image":
            try:
                unit[key] = base64.b64encode(Path(value).read_bytes()).decode("ascii")
            except OSError as exc:
                raise ValueError(f"--controlnet image {value}: {exc}") from None
        else:
            unit[key] = _scalar(value)
    return unit


def _scalar(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
