"""ControlNet preprocessors that need no model weights, with sd-webui-controlnet's names and semantics.

Every preprocessor takes an HWC uint8 image (gray, RGB or RGBA; RGBA is composited over white, gray is
repeated to RGB) and returns an HWC uint8 RGB image. Those that work at a resolution follow
sd-webui-controlnet's rule: the short side is scaled to ``resolution`` (cubic when enlarging, area when
shrinking, sides rounded), the image is edge-padded to multiples of 64, processed, and the padding is
cut off again -- so the output is the scaled size, not the input size. ``none`` and ``invert`` keep the
input size (sd-webui-controlnet hides the resolution slider for them).

``PREPROCESSORS`` maps each name to ``(function, sliders)``: the sliders describe ``threshold_a`` and
``threshold_b`` in order (as sd-webui-controlnet's API calls them), for UIs and for defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_RESOLUTION = 512
UNSET = -1  # sd-webui-controlnet's API value for "use the default" (processor_res, threshold_a/b)


@dataclass(frozen=True)
class Slider:
    label: str
    minimum: float
    maximum: float
    default: float
    step: float = 1


RESOLUTION = Slider("Resolution", 64, 2048, DEFAULT_RESOLUTION, 8)
RESOLUTION_RULE = f"-1 (the default) or within 1..{RESOLUTION.maximum:g}"
MAX_PIXELS = 16_000_000   # the largest scaled image (a huge resolution, or a very long image, is refused)


def resolution_allowed(resolution: int) -> bool:
    """A ``processor_res`` as the API takes it (``RESOLUTION_RULE``): a unit's and the detect route's."""
    return resolution == UNSET or 1 <= resolution <= RESOLUTION.maximum


def hwc3(image: np.ndarray) -> np.ndarray:
    """An HWC uint8 RGB image from gray (HW or HW1), RGB, or RGBA (composited over white)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"preprocessors take uint8 images, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.shape[2] == 3:
        return image
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    blended = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return blended.clip(0, 255).astype(np.uint8)


def scaled_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to ``resolution`` (each side rounded)."""
    k = float(resolution) / min(height, width)
    return int(np.round(height * k)), int(np.round(width * k))


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The image scaled (short side = ``resolution``) and edge-padded to multiples of 64, and the function
    that cuts a result of the padded size back to the scaled size."""
    image = hwc3(image)
    height, width = image.shape[:2]
    target_h, target_w = scaled_size(height, width, resolution)
    if target_h * target_w > MAX_PIXELS:
        raise ValueError(f"resolution {resolution} would scale the {width}x{height} image to {target_w}x{target_h}, "
                         f"more than {MAX_PIXELS} pixels")
    enlarge = resolution > min(height, width)
    resized = cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA)
    padded = np.pad(resized, [[0, -target_h % 64], [0, -target_w % 64], [0, 0]], mode="edge")

    def remove_pad(result: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(result[:target_h, :target_w])

    return np.ascontiguousarray(padded), remove_pad


def _gray_to_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[:, :, None], 3, axis=2)


# ------------------------------------------------------------------------------------ preprocessors

def none(image: np.ndarray, res: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """The image itself (as RGB)."""
    return hwc3(image).copy()


def invert(image: np.ndarray, res: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """255 - image, at the input size: black lines on white become white lines on black."""
    return 255 - hwc3(image)


def canny(image: np.ndarray, res: int = DEFAULT_RESOLUTION, low: float = 100, high: float = 200) -> np.ndarray:
    """Canny edges (OpenCV, hysteresis thresholds ``low``/``high``) of the scaled image: white on black."""
    padded, remove_pad = resize_with_pad(image, res)
    return remove_pad(_gray_to_rgb(cv2.Canny(padded, int(low), int(high))))


def threshold(image: np.ndarray, res: int = DEFAULT_RESOLUTION, threshold: float = 127) -> np.ndarray:
    """White where every channel of the scaled image is above ``threshold``, black elsewhere."""
    padded, remove_pad = resize_with_pad(image, res)
    scaled = remove_pad(padded)
    return _gray_to_rgb(np.where(scaled.min(axis=2) > threshold, 255, 0).astype(np.uint8))


def binary(image: np.ndarray, res: int = DEFAULT_RESOLUTION, threshold: float = 0) -> np.ndarray:
    """sd-webui-controlnet's former ``binary``: white where the gray value is at or below ``threshold``
    (dark strokes become white), black elsewhere; 0 or 255 picks the threshold by Otsu's method."""
    padded, remove_pad = resize_with_pad(image, res)
    gray = cv2.cvtColor(remove_pad(padded), cv2.COLOR_RGB2GRAY)
    if threshold in (0, 255):
        _, mask = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    else:
        _, mask = cv2.threshold(gray, float(threshold), 255, cv2.THRESH_BINARY_INV)
    return _gray_to_rgb(mask)


def scribble_xdog(image: np.ndarray, res: int = DEFAULT_RESOLUTION, threshold: float = 32) -> np.ndarray:
    """Scribble strokes by a difference of Gaussians (sigma 0.5 and 5): white where twice the darkest
    channel's DoG response exceeds ``threshold`` (lower: more strokes), black elsewhere.

    As in sd-webui-controlnet (and ControlNet 1.1's annotator) the doubled response is a uint8, so it wraps
    modulo 256: the strongest responses (128 and up) count only when their wrapped value still exceeds the
    threshold. Kept so that the maps are the ones those tools make."""
    padded, remove_pad = resize_with_pad(image, res)
    pixels = padded.astype(np.float32)
    fine = cv2.GaussianBlur(pixels, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(pixels, (0, 0), 5.0)
    # darker than the surroundings, per channel; sd-webui-controlnet rounds it through uint8 on the way
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    strokes = (2 * (255 - dog.astype(np.int32))) % 256 > threshold
    return remove_pad(_gray_to_rgb(np.where(strokes, 255, 0).astype(np.uint8)))


PREPROCESSORS: dict[str, tuple[Callable[..., np.ndarray], list[Slider]]] = {
    "none": (none, []),
    "invert": (invert, []),
    "canny": (canny, [Slider("Low Threshold", 0, 256, 100), Slider("High Threshold", 0, 256, 200)]),
    "threshold": (threshold, [Slider("Binarization Threshold", 0, 255, 127)]),
    "binary": (binary, [Slider("Binary threshold", 0, 255, 0)]),
    "scribble_xdog": (scribble_xdog, [Slider("XDoG Threshold", 1, 64, 32)]),
}
LABELS = {"invert": "invert (from white bg & black line)"}  # sd-webui-controlnet's UI names, where they differ
ALIASES = {label: name for name, label in LABELS.items()}
NO_RESOLUTION = frozenset({"none", "invert"})  # work at the input size


def labels() -> list[str]:
    """The preprocessors as sd-webui-controlnet's UI names them."""
    return [LABELS.get(name, name) for name in PREPROCESSORS]


def resolve(name: str) -> str:
    """The registry name for ``name`` or one of its UI labels; ValueError listing the known names."""
    name = ALIASES.get(name, name)
    if name not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessor {name!r}; known: {', '.join(PREPROCESSORS)}")
    return name


def run_preprocessor(name: str, image: np.ndarray, resolution: int | None = DEFAULT_RESOLUTION,
                     threshold_a: float | None = None, threshold_b: float | None = None) -> np.ndarray:
    """Run a preprocessor by name (or UI label). ``resolution``, ``threshold_a``, ``threshold_b``: None or
    -1 mean the default (sd-webui-controlnet's API convention); thresholds fill the sliders in order."""
    function, sliders = PREPROCESSORS[resolve(name)]
    if resolution is None or resolution == UNSET:
        resolution = DEFAULT_RESOLUTION
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    values = [slider.default if value is None or value == UNSET else value
              for slider, value in zip(sliders, (threshold_a, threshold_b))]
    return function(image, int(resolution), *values)
