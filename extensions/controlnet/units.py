"""ControlNet units: sd-webui-controlnet's fields, the hint image, and the residuals they add per call.

A unit is what one "ControlNet Unit N" panel (or one dict of ``alwayson_scripts.controlnet.args``) holds.
``control_residuals`` turns a loaded network and a prepared hint into a residual provider for the job's
``JobPatches``: active only while ``guidance_start <= step / steps <= guidance_end`` (sd-webui-controlnet
measures with A1111's ``sampling_step``); "My prompt is more important" scales the 13 residuals by
``0.825 ** (12 - i)`` (SDXL's 10 by the first 10 of those, as sd-webui-controlnet does); "ControlNet is
more important" does that and leaves the negative prompt's rows without control. SDXL networks also get
the job's size vector (``Cond.vector``) as ``y``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image

from webui.hooks.api import UNetExtras
from webui.hooks.api import images as im

from . import preprocessors as pp

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
MAX_UNITS = 3
MAX_PIXELS = 16_000_000


@dataclass
class Unit:
    enabled: bool = False
    image: np.ndarray | None = None        # HWC uint8 RGB(A)
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: int = 0
    resize_mode: int = 1
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    pixel_perfect: bool = False

    def check(self, n: int) -> None:
        problems = []
        if not 0.0 <= self.guidance_start <= self.guidance_end <= 1.0:
            problems.append("guidance_start/end must satisfy 0 <= start <= end <= 1")
        if not 0.0 <= self.weight <= 2.0:
            problems.append(f"weight must be within 0..2 (got {self.weight})")
        if not pp.resolution_allowed(self.processor_res):
            problems.append(f"processor_res must be {pp.RESOLUTION_RULE} (got {self.processor_res})")
        for name in ("threshold_a", "threshold_b"):
            if not math.isfinite(getattr(self, name)):
                problems.append(f"{name} must be a number (got {getattr(self, name)})")
        try:
            pp.resolve(self.module)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError(f"ControlNet unit {n}: " + "; ".join(problems))


def _choice(value, options: tuple[str, ...], name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be one of {', '.join(options)} or 0..{len(options) - 1}")
    if isinstance(value, (int, float)) and int(value) == value and 0 <= int(value) < len(options):
        return int(value)
    for i, option in enumerate(options):
        if isinstance(value, str) and value.lower() in (option.lower(), option.lower().replace(" ", "_")):
            return i
    legacy = {"Inner Fit (Scale to Fit)": 1, "Scale to Fit (Inner Fit)": 1, "Outer Fit (Shrink to Fit)": 2,
              "Envelope (Outer Fit)": 2}           # sd-webui-controlnet's old resize-mode names
    if value in legacy:
        return legacy[value]
    raise ValueError(f"{name} must be one of {', '.join(options)} or 0..{len(options) - 1} (got {value!r})")


def decode_image(value) -> np.ndarray | None:
    """A base64 PNG/JPEG (optionally a ``data:`` URL, or ``{"image": ...}``), a PIL image or an array -> HWC
    uint8; None for none. Base64 goes through the API's own decoder (no URLs, a pixel limit)."""
    if isinstance(value, dict):
        value = value.get("image")
    if value is None or (isinstance(value, str) and not value):
        return None
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, Image.Image):
        value = im.decode_base64(value, "image", MAX_PIXELS)
    return np.asarray(value.convert("RGBA" if "A" in value.mode else "RGB"))


def unit_from_dict(data: dict, n: int) -> Unit:
    """One unit from sd-webui-controlnet's API fields (unknown fields are refused by name)."""
    # sd-webui-controlnet's other unit fields (clients such as webuiapi send them): accepted, not used
    ignored = {"input_image", "mask", "low_vram", "guessmode", "lowvram", "hr_option", "save_detected_map",
               "input_mode", "batch_images", "output_dir", "loopback", "effective_region_mask", "mask_image",
               "ipadapter_input", "union_control_type", "inpaint_crop_input_image", "is_ui", "advanced_weighting"}
    known = {f.name for f in fields(Unit)} | ignored
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"ControlNet unit {n}: unknown field(s) {', '.join(unknown)}")
    unit = Unit(enabled=bool(data.get("enabled", True)))
    try:
        unit.image = decode_image(data.get("image", data.get("input_image")))
        unit.module = pp.resolve(str(data.get("module", "none")))
        unit.model = str(data.get("model", "None"))
        for name in ("weight", "guidance_start", "guidance_end", "threshold_a", "threshold_b"):
            if name in data:
                setattr(unit, name, float(data[name]))
        unit.processor_res = int(data.get("processor_res", -1))
        unit.control_mode = _choice(data.get("control_mode", 0), CONTROL_MODES, "control_mode")
        unit.resize_mode = _choice(data.get("resize_mode", 1), RESIZE_MODES, "resize_mode")
        unit.pixel_perfect = bool(data.get("pixel_perfect", False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ControlNet unit {n}: {exc}") from None
    unit.check(n)
    return unit


def pixel_perfect_resolution(image: np.ndarray, width: int, height: int, resize_mode: int) -> int:
    """sd-webui-controlnet's "pixel perfect": the preprocessor resolution that lands on the target size."""
    raw_h, raw_w = image.shape[:2]
    k_h, k_w = height / raw_h, width / raw_w
    k = min(k_h, k_w) if resize_mode == 2 else max(k_h, k_w)
    return int(np.round(k * min(raw_h, raw_w)))


def prepare_hint(unit: Unit, image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The preprocessed control image at the generation size (HWC uint8 RGB)."""
    resolution = unit.processor_res
    if unit.pixel_perfect:
        resolution = pixel_perfect_resolution(image, width, height, unit.resize_mode)
    detected = pp.run_preprocessor(unit.module, image, None if resolution < 0 else resolution,
                                   None if unit.threshold_a < 0 else unit.threshold_a,
                                   None if unit.threshold_b < 0 else unit.threshold_b)
    # A1111's resize modes: 0 just resize, 1 crop and resize, 2 resize and fill
    return np.array(im.resize_image(unit.resize_mode, Image.fromarray(detected), width, height))


def hint_tensor(hint: np.ndarray, device, dtype) -> torch.Tensor:
    return torch.from_numpy(hint).to(device=device, dtype=torch.float32).permute(2, 0, 1)[None].div(255.0).to(dtype)


def control_residuals(net, hint: torch.Tensor, unit: Unit):
    """A residual provider (``JobPatches.residuals``) for one unit."""
    soft = unit.control_mode != 0
    count = len(net.input_blocks) + 1
    # sd-webui-controlnet's soft weights are 0.825 ** (12 - i) for SD 1.x's 13 residuals; for SDXL-style
    # networks (10 residuals) it keeps the first 10 of those 13, so the middle block's gets 0.825 ** 3
    top = 12 if net.config.adm_in_channels is not None else count - 1
    scales = [unit.weight * (0.825 ** float(top - i)) if soft else unit.weight for i in range(count)]

    features = None          # the hint's features: computed on the first call, the same for every call after
    masks: dict[tuple, torch.Tensor] = {}   # uncond rows -> 0/1 row mask, made once per batch layout

    def provider(x, t, cond, info):
        nonlocal features
        if info.total_steps:
            progress = info.sampling_step / info.total_steps
            if progress < unit.guidance_start or progress > unit.guidance_end:
                return None
        if features is None:
            features = net.hint_features(hint)
        y = cond.vector if net.config.adm_in_channels is not None else None
        residuals = net(x[:, :net.config.in_channels], None, t, cond.crossattn, y, features=features)
        if unit.control_mode != 2:
            out = [r * scale for r, scale in zip(residuals, scales)]
        else:                           # the negative prompt's rows get no control
            key = tuple(info.uncond_rows)
            if key not in masks:
                masks[key] = torch.tensor([0.0 if u else 1.0 for u in key], device=x.device,
                                          dtype=residuals[0].dtype).view(-1, 1, 1, 1)
            out = [r * (masks[key] * scale) for r, scale in zip(residuals, scales)]
        return UNetExtras(input_residuals=out[:-1], middle_residual=out[-1])
    return provider


def infotext(unit: Unit, model_title: str) -> str:
    """sd-webui-controlnet's ``ControlNet N`` infotext value."""
    return (f"Module: {unit.module}, Model: {model_title}, Weight: {unit.weight:g}, "
            f"Resize Mode: {RESIZE_MODES[unit.resize_mode]}, Processor Res: {unit.processor_res}, "
            f"Threshold A: {unit.threshold_a:g}, Threshold B: {unit.threshold_b:g}, "
            f"Guidance Start: {unit.guidance_start:g}, Guidance End: {unit.guidance_end:g}, "
            f"Pixel Perfect: {unit.pixel_perfect}, Control Mode: {CONTROL_MODES[unit.control_mode]}")
