"""Image preparation for img2img and inpainting, with A1111's semantics.

Resize modes: 0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale).
Masks: white = repaint. Mask blur is a separable Gaussian (kernel ``2*int(2.5*r+0.5)+1``, reflect-101
borders, one rounded 8-bit pass per axis, as A1111's two OpenCV calls). "Only masked" inpainting crops
the mask's padded bounding box, widened to the output aspect ratio, and pastes the result back.
"""
from __future__ import annotations

import base64
import binascii
import io
import struct

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")


def flatten(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """RGB version of ``image``; transparency is composited over ``background``."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), resample=Image.LANCZOS)


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """Bring ``image`` to ``width`` x ``height`` the way A1111's ``images.resize_image`` does.

    Mode 3 only exists for the init image, which A1111 never resizes (it scales the latent instead);
    anything else resized with mode 3 (the inpainting mask) gets A1111's fall-through: resize and fill.
    """
    if mode not in range(len(RESIZE_MODES)):
        raise ValueError(f"unknown resize mode {mode}; choose 0-3 ({', '.join(RESIZE_MODES)})")
    if mode == 0:
        return _lanczos(image, width, height)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:  # crop and resize: cover the target, centre-crop the overflow
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    else:  # resize and fill: fit inside, stretch the edge pixels into the borders
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = _lanczos(image, src_w, src_h)
    result = Image.new(image.mode, (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode != 1:
        if ratio < src_ratio and (fill := height // 2 - src_h // 2) > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                         box=(0, fill + src_h))
        elif ratio > src_ratio and (fill := width // 2 - src_w // 2) > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill + src_w, 0))
    return result


def binary_mask(mask: Image.Image) -> Image.Image:
    """A1111's ``create_binary_mask``: an RGBA mask with some transparency is its alpha channel
    thresholded at 128 (what the UI's mask editor sends); any other mask is converted to ``L``."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        return mask.getchannel("A").point(lambda v: 255 if v > 128 else 0)
    return mask.convert("L")


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(2.5 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _reflect101(n: int, pad: int) -> np.ndarray:
    """Source indices of ``range(-pad, n + pad)`` with reflect-101 borders (``dcb|abcd|cba``), any ``pad``."""
    if n == 1:
        return np.zeros(n + 2 * pad, dtype=np.int64)
    period = 2 * (n - 1)
    i = np.abs(np.arange(-pad, n + pad)) % period
    return np.where(i >= n, period - i, i)


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float | None = None) -> Image.Image:
    """Gaussian blur of an ``L`` mask: horizontal then vertical pass, each rounded to 8 bits (A1111's
    two ``cv2.GaussianBlur`` calls with kernels ``(k, 1)`` and ``(1, k)``)."""
    blur_y = blur_x if blur_y is None else blur_y
    arr = np.asarray(mask.convert("L"), dtype=np.float64)
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        if sigma <= 0:
            continue
        kernel = _gaussian_kernel(sigma)
        padded = np.take(arr, _reflect101(arr.shape[axis], len(kernel) // 2), axis=axis)
        windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=axis)
        arr = np.clip(np.round(windows @ kernel), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box of the non-zero mask, grown by ``padding`` and clipped to the image."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _grow(lo: int, hi: int, want: float, limit: int) -> tuple[int, int]:
    diff = int(want - (hi - lo))
    lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_crop_region(region, width: int, height: int, image_width: int, image_height: int):
    """Widen ``region`` to the processing aspect ratio ``width/height``, staying inside the image."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, (x2 - x1) * height / width, image_height)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * width / height, image_width)
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the masked area takes the blurred colours of its surroundings."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def overlay(image: Image.Image, keep_mask: Image.Image) -> Image.Image:
    """``image`` with alpha = ``keep_mask`` (255 keeps the original pixel when composited)."""
    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=keep_mask.convert("L"))
    return layer.convert("RGBA")


def apply_overlay(generated: Image.Image, paste_box, original_overlay: Image.Image | None) -> Image.Image:
    """Paste a generated (possibly cropped) image back and lay the unmasked original over it."""
    if original_overlay is None:
        return generated
    if paste_box is not None:
        x, y, w, h = paste_box
        base = Image.new("RGBA", original_overlay.size)
        base.paste(resize_image(1, generated, w, h), (x, y))
        generated = base
    result = generated.convert("RGBA")
    result.alpha_composite(original_overlay)
    return result.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1) * 2.0 - 1.0


def to_pil(x: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) in [-1, 1] -> PIL RGB, rounding like A1111 (255 * clamp, truncation)."""
    arr = ((x.float().clamp(-1, 1) + 1.0) / 2.0 * 255.0).permute(1, 2, 0).to("cpu", torch.float32).numpy()
    return Image.fromarray(arr.astype(np.uint8))


class ImageInputError(ValueError):
    """A base64 image that cannot be used; ``too_large`` when it is only its size (HTTP 413, not 422)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


# What PIL's decoders raise for a malformed file besides OSError / ValueError (a PNG chunk of the wrong
# length: SyntaxError "broken PNG file"; short headers: struct.error, EOFError, IndexError ...).
_MALFORMED = (SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error, ZeroDivisionError)


def _decodable_formats() -> list[str]:
    """Every format PIL reads but EPS, which it decodes by running Ghostscript on the file (a PostScript
    interpreter on a request's bytes, writing temporary files)."""
    Image.init()
    return [f for f in Image.ID if f != "EPS"]


def decode_base64(data: str, what: str, max_pixels: int) -> Image.Image:
    """base64 or ``data:image/...;base64,`` -> a loaded PIL image. Remote URLs are never fetched; a picture of
    more than ``max_pixels`` is refused from its header, before it is decoded."""
    if not isinstance(data, str) or not data:
        raise ImageInputError(f"{what}: empty image")
    if data.startswith(("http://", "https://", "file:", "ftp://")):
        raise ImageInputError(f"{what}: URLs are not fetched; send the image as base64 or a data: URL")
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if ";base64" not in header:
            raise ImageInputError(f"{what}: only base64 data: URLs are accepted")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(f"{what}: not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw), formats=_decodable_formats()) as probe:
            if probe.width * probe.height > max_pixels:
                raise ImageInputError(f"{what}: {probe.width}x{probe.height} is larger than {max_pixels} pixels",
                                      too_large=True)
            probe.load()
            return probe.copy()
    except ImageInputError:
        raise
    except Image.DecompressionBombError:        # PIL's own header check, for pictures far over its limit
        raise ImageInputError(f"{what}: the picture is larger than {max_pixels} pixels", too_large=True) from None
    except (UnidentifiedImageError, OSError, ValueError, *_MALFORMED) as exc:
        raise ImageInputError(f"{what}: not a readable image ({type(exc).__name__})") from None
