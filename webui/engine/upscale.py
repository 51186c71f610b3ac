"""Upscaling for hires fix and the Extras: A1111's latent upscale modes and its image upscalers.

Upscaler models (ESRGAN, RealESRGAN, SwinIR, DAT, GFPGAN, CodeFormer) are not here: A1111 and ComfyUI load
them through ``spandrel``, which imports torchvision, and no torchvision build imports beside this
project's pinned CPU torch. Only the resampling upscalers exist until then.

- **Latent modes** (``Latent``, ``Latent (antialiased)``, ``Latent (bicubic)``, ...): the latents are
  interpolated with torch (A1111's ``shared.latent_upscale_modes``).
- **Image upscalers**: ``None`` and ``Lanczos`` (PIL's Lanczos resize), ``Nearest``. A1111's ``resize_image``
  rule: an upscaler scales by ``max(w / width, h / height)`` when that is above 1, then the result is
  resized to exactly ``w x h`` with Lanczos.

``hires_target`` is A1111's ``calculate_target_resolution``: the second pass's size from ``hr_scale`` or
``hr_resize_x/y`` (keeping the aspect ratio and cropping the latent when both are given).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

# name -> (torch interpolation mode, antialias), A1111's order
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
DEFAULT_LATENT_MODE = "Latent"
# name -> the PIL resample it scales with (A1111's UpscalerNone / UpscalerLanczos / UpscalerNearest)
IMAGE_UPSCALERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}


def upscaler_names() -> list[str]:
    """Every name hires fix accepts, as A1111 lists them: the image upscalers, then the latent modes."""
    return [*IMAGE_UPSCALERS, *LATENT_UPSCALE_MODES]


def _unknown_upscaler(name, available) -> ValueError:
    return ValueError(f"unknown upscaler {name!r}; available: {', '.join(available)} (upscaler models such as "
                      "ESRGAN are not available in this version)")


def check_upscaler(name: str | None) -> None:
    if name is not None and name not in IMAGE_UPSCALERS and name not in LATENT_UPSCALE_MODES:
        raise _unknown_upscaler(name, upscaler_names())


def upscale_latent(latents: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Latents interpolated to ``(height // 8, width // 8)`` with a latent mode."""
    interpolation, antialias = LATENT_UPSCALE_MODES[mode]
    return F.interpolate(latents, size=(height // 8, width // 8), mode=interpolation, antialias=antialias)


def upscale_by(image: Image.Image, scale: float, upscaler: str) -> Image.Image:
    """A1111's ``Upscaler.upscale``: the target is ``image size * scale`` rounded down to multiples of 8; the
    upscaler runs (up to three times) until the image reaches it, then a Lanczos resize lands on it exactly
    (``None`` only does that resize)."""
    check_upscaler(upscaler)
    dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
    if upscaler != "None":
        for _ in range(3):
            if image.width >= dest_w and image.height >= dest_h and scale != 1:
                break
            size = image.size
            image = image.resize((int(image.width * scale), int(image.height * scale)),
                                 resample=IMAGE_UPSCALERS[upscaler])
            if image.size == size:
                break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=Image.Resampling.LANCZOS)
    return image


def upscale_image(image: Image.Image, width: int, height: int, upscaler: str | None) -> Image.Image:
    """A1111's ``resize_image(0, image, width, height, upscaler_name)``: scale up with the upscaler by the
    larger of the two ratios when above 1 (``upscale_by``), then resize to exactly ``width x height`` with
    Lanczos."""
    if upscaler in (None, "None") or image.mode == "L":
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        image = upscale_by(image, scale, upscaler)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


@dataclass(frozen=True)
class ExtrasUpscale:
    """A1111's Extras "Upscale" (``postprocessing_upscale``): by a factor (``mode`` 0) or to a size (1, with
    an optional centred crop), upscaler 1, and upscaler 2 blended in with ``visibility``."""
    mode: int = 0
    scale: float = 2.0
    width: int = 512
    height: int = 512
    crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    visibility: float = 0.0

    def check(self) -> None:
        if self.mode not in (0, 1):
            raise ValueError(f"resize mode must be 0 (scale by) or 1 (scale to) (got {self.mode})")
        if not 0 < self.scale <= 8:
            raise ValueError(f"upscaling_resize must be within 0..8 (got {self.scale})")
        if self.mode == 1 and not (8 <= self.width <= 8192 and 8 <= self.height <= 8192):
            raise ValueError(f"upscaling_resize_w / _h must be within 8..8192 (got {self.width}x{self.height})")
        if not 0.0 <= self.visibility <= 1.0:
            raise ValueError(f"extras_upscaler_2_visibility must be within 0..1 (got {self.visibility})")
        for name in (self.upscaler_1, self.upscaler_2):
            if name not in IMAGE_UPSCALERS:
                raise _unknown_upscaler(name, IMAGE_UPSCALERS)

    def _one(self, image: Image.Image, upscaler: str, info: dict) -> Image.Image:
        if self.mode == 1:
            scale = max(self.width / image.width, self.height / image.height)
            info["Postprocess upscale to"] = f"{self.width}x{self.height}"
        else:
            scale = self.scale
            info["Postprocess upscale by"] = scale
        image = upscale_by(image, scale, upscaler)
        if self.mode == 1 and self.crop:
            cropped = Image.new("RGB", (self.width, self.height))
            cropped.paste(image, box=(self.width // 2 - image.width // 2, self.height // 2 - image.height // 2))
            image = cropped
            info["Postprocess crop to"] = f"{image.width}x{image.height}"
        return image

    def apply(self, image: Image.Image) -> tuple[Image.Image, dict]:
        """(upscaled image, A1111's postprocessing infotext entries). Upscaler 1 "None" leaves the image."""
        self.check()
        info: dict = {}
        if self.upscaler_1 == "None":
            return image, info
        result = self._one(image, self.upscaler_1, info)
        info["Postprocess upscaler"] = self.upscaler_1
        if self.upscaler_2 != "None" and self.visibility > 0:
            second = self._one(image, self.upscaler_2, info)
            if second.mode != result.mode:
                second = second.convert(result.mode)
            result = Image.blend(result, second, self.visibility)
            info["Postprocess upscaler 2"] = self.upscaler_2
        return result, info


@dataclass(frozen=True)
class HiresTarget:
    """The second pass's size: upscale to ``width x height`` (multiples of 8 in latents), then crop
    ``truncate_x / truncate_y`` latent columns / rows (split between the two sides), as A1111."""
    width: int
    height: int
    truncate_x: int = 0
    truncate_y: int = 0
    infotext: tuple[str, object] = ("Hires upscale", 2.0)

    @property
    def final_size(self) -> tuple[int, int]:
        return self.width - self.truncate_x * 8, self.height - self.truncate_y * 8


def hires_target(width: int, height: int, hr_scale: float = 2.0, hr_resize_x: int = 0,
                 hr_resize_y: int = 0) -> HiresTarget:
    """A1111's ``StableDiffusionProcessingTxt2Img.calculate_target_resolution``."""
    if hr_resize_x == 0 and hr_resize_y == 0:
        return HiresTarget(int(width * hr_scale), int(height * hr_scale), infotext=("Hires upscale", hr_scale))
    infotext = ("Hires resize", f"{hr_resize_x}x{hr_resize_y}")
    if hr_resize_y == 0:
        return HiresTarget(hr_resize_x, hr_resize_x * height // width, infotext=infotext)
    if hr_resize_x == 0:
        return HiresTarget(hr_resize_y * width // height, hr_resize_y, infotext=infotext)
    if width / height < hr_resize_x / hr_resize_y:
        to_x, to_y = hr_resize_x, hr_resize_x * height // width
    else:
        to_x, to_y = hr_resize_y * width // height, hr_resize_y
    return HiresTarget(to_x, to_y, (to_x - hr_resize_x) // 8, (to_y - hr_resize_y) // 8, infotext)


def truncate(latents: torch.Tensor, target: HiresTarget) -> torch.Tensor:
    """A1111's crop of the upscaled latents to the asked aspect ratio."""
    tx, ty = target.truncate_x, target.truncate_y
    return latents[:, :, ty // 2:latents.shape[2] - (ty + 1) // 2, tx // 2:latents.shape[3] - (tx + 1) // 2]
