"""The UI's values -> a job, by field name (no Gradio here), and an infotext -> the UI's fields.

The UI hands a ``{field: value}`` dict (the names are ``GenerationRequest``'s, which are A1111's API
names); radio buttons that show words (masked content, inpaint area, mask mode, resize mode) are turned
into the engine's numbers here, the image editor's brush layers into a mask. ``fields_from_infotext`` does
the reverse for PNG Info's "send to" and the API's ``infotext`` field.
"""
from __future__ import annotations

from dataclasses import fields

import numpy as np
from PIL import Image

from ...engine import images as im
from ...engine.request import GenerationRequest
from .. import infotext
from ..spec import ExtensionArgs, JobSpec, ScriptChoice
from . import NO_REFINER, SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER  # noqa: F401  (the UI's words)

INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
TXT2IMG_FIELDS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "seed",
                  "width", "height", "batch_size", "n_iter", "clip_skip", "tiling", "refiner_checkpoint",
                  "refiner_switch_at", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")
MODES = ("img2img", "inpaint", "inpaint_upload")      # the img2img tab's sub-tabs
HIRES_FIELDS = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale", "hr_resize_x",
                "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                "hr_negative_prompt")
IMG2IMG_FIELDS = TXT2IMG_FIELDS + ("denoising_strength", "resize_mode", "mask_blur", "inpainting_fill",
                                   "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert")
_INTS = {"steps", "seed", "width", "height", "batch_size", "n_iter", "mask_blur", "inpaint_full_res_padding",
         "clip_skip", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "subseed", "seed_resize_from_w",
         "seed_resize_from_h"}
_FLOATS = {"cfg_scale", "denoising_strength", "refiner_switch_at", "hr_scale", "subseed_strength"}


def _choice(value, options: tuple[str, ...], name: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        index = int(value)
    elif value in options:
        index = options.index(value)
    else:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(options)}")
    if not 0 <= index < len(options):
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(options)}")
    return index


def _number(name: str, value):
    if value is None or value == "":
        raise ValueError(f"{name} is empty")
    if name in _INTS:
        number = float(value)
        if number != int(number):
            raise ValueError(f"{name} must be a whole number (got {value!r})")
        return int(number)
    return float(value)


def request_from_fields(values: dict) -> GenerationRequest:
    """A request from UI values keyed by field name (not checked yet: ``job_from_fields``); unknown names are a
    programming error."""
    known = {f.name for f in fields(GenerationRequest)}
    unknown = set(values) - known
    if unknown:
        raise KeyError(f"not request fields: {', '.join(sorted(unknown))}")
    converted = {}
    for name, value in values.items():
        if name in _INTS or name in _FLOATS:
            value = _number(name, value)
        elif name == "resize_mode":
            value = _choice(value, im.RESIZE_MODES, "resize mode")
        elif name == "inpainting_fill":
            value = _choice(value, im.MASKED_CONTENT, "masked content")
        elif name == "inpaint_full_res":
            value = bool(value) if isinstance(value, bool) else _choice(value, INPAINT_AREAS, "inpaint area") == 1
        elif name == "inpainting_mask_invert":
            value = bool(value) if isinstance(value, bool) else _choice(value, MASK_MODES, "mask mode") == 1
        elif name in ("prompt", "negative_prompt"):
            value = value or ""
        elif name in ("hr_prompt", "hr_negative_prompt"):
            value = value or ""
        elif name in ("enable_hr", "tiling"):
            value = bool(value)
        converted[name] = value
    return GenerationRequest(**converted)


def job_from_fields(requests, values: dict, kind: str, *, images: dict | None = None, checkpoint: str | None = None,
                    vae: str | None = None, styles=(), script: tuple[str, list] | None = None,
                    extension_values: dict | None = None, owner: str | None = None) -> JobSpec:
    """A generation tab's values as a job (``requests``: a ``jobs.request.Requests``). ``images``: the img2img
    tab's ``mode`` (one of ``MODES``) and its pictures (``init_image``, ``sketch`` -- the editor's value --,
    ``upload_image``, ``upload_mask``); ``script``: the picked script's title and positional arguments;
    ``extension_values``: extension title -> {name: value} of their UI sections."""
    request = request_from_fields(values)
    if kind == "img2img":
        request.init_image, request.mask = _img2img_images(**(images or {}))
    return requests.job(request, kind, checkpoint=checkpoint or None, vae=vae or None, styles=list(styles or []),
                        script=ScriptChoice(script[0], tuple(script[1])) if script else None,
                        extension_args=ExtensionArgs(ui=dict(extension_values or {})), owner=owner)


def _img2img_images(mode: str = "img2img", init_image=None, sketch=None, upload_image=None, upload_mask=None):
    """(init image, mask) of the img2img tab's sub-tab ``mode``; ValueError naming what is missing."""
    if mode == "inpaint":
        if not sketch or sketch.get("background") is None:
            raise ValueError("inpaint: upload an image and paint the area to change")
        image = sketch["background"]
        mask = mask_from_layers(sketch.get("layers") or [], image.size)
        if mask is None:
            raise ValueError("inpaint: paint a mask over the area to change (the brush)")
        return image, mask
    if mode == "inpaint_upload":
        if upload_image is None or upload_mask is None:
            raise ValueError("inpaint upload: both the image and the mask are needed")
        return upload_image, uploaded_mask(upload_mask)
    if init_image is None:
        raise ValueError("img2img: upload an image first")
    return init_image, None


def mask_from_layers(layers: list[Image.Image | None], size: tuple[int, int]) -> Image.Image | None:
    """The brush strokes of an image editor (RGBA layers) -> an L mask, white where painted; None if empty."""
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        layer = layer.convert("RGBA")
        if layer.size != size:
            layer = layer.resize(size, Image.Resampling.NEAREST)
        mask |= np.asarray(layer)[..., 3] > 0
    if not mask.any():
        return None
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def uploaded_mask(mask: Image.Image) -> Image.Image:
    """An uploaded mask picture -> L (white = repaint); transparent pixels count as black."""
    if mask.mode in ("RGBA", "LA"):
        rgba = mask.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        mask = Image.alpha_composite(background, rgba)
    return mask.convert("L")


def fields_from_infotext(text: str) -> dict:
    """Infotext -> the UI fields it names (prompt, negative, steps, sampler, schedule type, CFG, seed, size,
    denoising strength, clip skip: 1 when the text has none, as A1111; the refiner's title and switch point,
    "None" when the text names no refiner) plus ``"checkpoint"`` (the model's name) when present; absent keys
    stay absent."""
    info = infotext.parse_typed(text)
    out: dict = {"prompt": info.prompt, "negative_prompt": info.negative_prompt}
    pairs = {"steps": info.steps, "sampler_name": info.sampler, "scheduler": info.scheduler,
             "cfg_scale": info.cfg_scale, "seed": info.seed, "width": info.width, "height": info.height,
             "denoising_strength": info.denoising_strength, "checkpoint": info.model, "clip_skip": info.clip_skip,
             "refiner_checkpoint": info.refiner or NO_REFINER, "refiner_switch_at": info.refiner_switch_at}
    extra = info.extra
    pairs["enable_hr"] = "Hires upscale" in extra or "Hires resize" in extra     # A1111 pastes it so
    pairs["tiling"] = extra.get("Tiling") == "True"
    pairs["subseed_strength"] = float(extra.get("Variation seed strength", 0))     # A1111: 0 when absent
    if "Variation seed" in extra:
        pairs["subseed"] = int(extra["Variation seed"])
    resize = extra.get("Seed resize from", "")
    if "x" in resize:
        w, h = resize.split("x", 1)
        pairs["seed_resize_from_w"], pairs["seed_resize_from_h"] = int(w), int(h)
    if "Hires upscale" in extra:
        pairs["hr_scale"] = float(extra["Hires upscale"])
    if "Hires resize" in extra and "x" in extra["Hires resize"]:
        x, y = extra["Hires resize"].split("x", 1)
        pairs["hr_resize_x"], pairs["hr_resize_y"] = int(x), int(y)
    for key, field, kind in (("Hires steps", "hr_second_pass_steps", int), ("Hires upscaler", "hr_upscaler", str),
                             ("Hires sampler", "hr_sampler_name", str), ("Hires prompt", "hr_prompt", str),
                             ("Hires negative prompt", "hr_negative_prompt", str)):
        if key in extra:
            pairs[field] = kind(infotext.unquote(extra[key]))
    out.update({k: v for k, v in pairs.items() if v is not None})
    return out
