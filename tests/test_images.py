"""webui/engine/images.py: resize modes, mask blur, "only masked" crop regions, fill and overlay.

References are independent: scipy's Gaussian filter for the blur, numpy slicing for what the resize
modes keep, A1111's documented examples for the crop regions.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.engine import images as im


def _arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _gradient(width: int, height: int) -> Image.Image:
    """RGB image whose red channel encodes x and green channel encodes y (0..255 each)."""
    yy, xx = np.mgrid[0:height, 0:width]
    r = xx * 255 // max(width - 1, 1)
    g = yy * 255 // max(height - 1, 1)
    return Image.fromarray(np.stack([r, g, np.full_like(r, 90)], -1).astype(np.uint8))


# ------------------------------------------------------------------------------------------- resize

@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("size", [(64, 64), (96, 48), (40, 72)])
def test_resize_modes_give_the_requested_size(mode, size):
    out = im.resize_image(mode, _gradient(128, 80), *size)
    assert out.size == size and out.mode == "RGB"


def test_just_resize_stretches_the_whole_image():
    src = _gradient(128, 64)
    out = _arr(im.resize_image(0, src, 64, 64))
    assert np.array_equal(out, _arr(src.resize((64, 64), Image.LANCZOS)))
    assert out[:, 0, 0].max() <= 3 and out[:, -1, 0].min() >= 252      # left and right edges kept


def test_crop_and_resize_drops_the_sides_of_a_wide_image():
    src = _gradient(128, 64)                    # 2:1 -> 1:1: scaled to 128x64 (no-op), centre 64 columns kept
    out = _arr(im.resize_image(1, src, 64, 64))
    assert np.array_equal(out, _arr(src)[:, 32:96])
    tall = _gradient(32, 96)                    # 1:3 -> 1:1: top and bottom rows go
    out = _arr(im.resize_image(1, tall, 32, 32))
    assert np.array_equal(out, _arr(tall)[32:64])


def test_crop_and_resize_scales_before_cropping():
    src = _gradient(200, 100)
    out = im.resize_image(1, src, 64, 64)
    expected = _arr(src.resize((128, 64), Image.LANCZOS))[:, 32:96]
    assert np.array_equal(_arr(out), expected)


def test_resize_and_fill_letterboxes_with_stretched_edge_rows():
    src = _gradient(128, 64)                    # fits as 64x32, centred at rows 16..47
    out = _arr(im.resize_image(2, src, 64, 64))
    fitted = _arr(src.resize((64, 32), Image.LANCZOS))
    assert np.array_equal(out[16:48], fitted)
    # the 16 rows above / below repeat (a stretch of) the first / last fitted row
    assert np.abs(out[:16] - fitted[0]).max() <= 3
    assert np.abs(out[48:] - fitted[-1]).max() <= 3
    assert out[:16, :, 1].max() < 40 and out[48:, :, 1].min() > 215   # green = y: top stays top


def test_resize_and_fill_pillarboxes_a_tall_image_with_stretched_edge_columns():
    src = _gradient(32, 128)                    # fits as 16x64 at columns 24..39
    out = _arr(im.resize_image(2, src, 64, 64))
    fitted = _arr(src.resize((16, 64), Image.LANCZOS))
    assert np.array_equal(out[:, 24:40], fitted)
    assert np.abs(out[:, :24] - fitted[:, :1]).max() <= 3      # a zero-width box resampled: edge-ish
    assert np.abs(out[:, 40:] - fitted[:, -1:]).max() <= 3
    assert out[:, :24, 0].max() < 10 and out[:, 40:, 0].min() > 245   # red = x: left stays left


def test_same_aspect_ratio_modes_agree_and_masks_stay_masks():
    src = _gradient(128, 128)
    plain = _arr(im.resize_image(0, src, 64, 64))
    for mode in (1, 2):
        assert np.array_equal(_arr(im.resize_image(mode, src, 64, 64)), plain)
    mask = Image.fromarray((np.arange(96 * 64).reshape(64, 96) % 256).astype(np.uint8))
    assert im.resize_image(2, mask, 64, 64).mode == "L"


def test_resize_mode_3_on_a_mask_falls_through_to_resize_and_fill():
    # A1111's resize_image has no branch for 3 ("latent upscale" never resizes the init image itself).
    mask = _gradient(128, 64).convert("L")
    assert np.array_equal(_arr(im.resize_image(3, mask, 64, 64)), _arr(im.resize_image(2, mask, 64, 64)))
    with pytest.raises(ValueError, match="resize mode"):
        im.resize_image(4, mask, 64, 64)


# ---------------------------------------------------------------------------------------- mask blur

def _scipy_blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur(ksize 2*int(2.5*s+0.5)+1, reflect-101) per axis, 8-bit between the passes."""
    from scipy.ndimage import gaussian_filter1d

    out = mask.astype(np.float64)
    for axis in (1, 0):
        out = np.clip(np.round(gaussian_filter1d(out, sigma, axis=axis, mode="mirror", truncate=2.5)), 0, 255)
    return out


def _shape_mask(width=64, height=48) -> Image.Image:
    arr = np.zeros((height, width), dtype=np.uint8)
    arr[10:30, 20:50] = 255
    arr[35:, :6] = 200                 # touching the border: exercises the reflection
    arr[2, 60] = 255                   # isolated pixel near a corner
    return Image.fromarray(arr)


@pytest.mark.parametrize("sigma", [1, 2, 4, 8])
def test_mask_blur_matches_an_independent_gaussian(sigma):
    mask = _shape_mask()
    ours = _arr(im.blur_mask(mask, sigma))
    assert np.abs(ours - _scipy_blur(np.asarray(mask), sigma)).max() <= 1
    assert im.blur_mask(mask, sigma).mode == "L"
    assert np.abs(ours - _arr(mask)).max() > 50            # it did blur


def test_mask_blur_with_a_kernel_wider_than_the_image():
    mask = Image.fromarray(np.tile(np.array([0, 255, 0, 0, 255, 255, 0], dtype=np.uint8), (5, 1)))
    ours = _arr(im.blur_mask(mask, 16))                       # radius 40 >> 7 pixels: repeated reflection
    assert np.abs(ours - _scipy_blur(np.asarray(mask), 16)).max() <= 1


def test_mask_blur_zero_is_identity_and_axes_are_separate():
    mask = _shape_mask()
    assert np.array_equal(_arr(im.blur_mask(mask, 0)), _arr(mask))
    only_x = _arr(im.blur_mask(mask, 4, 0))
    assert np.array_equal((only_x > 0).any(axis=1), (_arr(mask) > 0).any(axis=1))   # no vertical spread
    assert not np.array_equal((only_x > 0).any(axis=0), (_arr(mask) > 0).any(axis=0))


def test_binary_mask_uses_alpha_of_transparent_rgba_masks():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 255                            # colour says "everything" ...
    rgba[:, :4, 3] = 200                           # ... alpha says "the left half" (above 128)
    rgba[:, 4:6, 3] = 100                          # below the threshold
    out = _arr(im.binary_mask(Image.fromarray(rgba)))
    assert out[:, :4].min() == 255 and out[:, 4:].max() == 0
    opaque = Image.fromarray(np.dstack([np.full((8, 8, 3), 77, np.uint8), np.full((8, 8), 255, np.uint8)]))
    assert np.array_equal(_arr(im.binary_mask(opaque)), np.full((8, 8), 77))   # no transparency: luminance
    assert im.binary_mask(Image.new("RGB", (4, 4), (255, 255, 255))).mode == "L"


# ----------------------------------------------------------------------------------- crop regions

def _mask_with_box(width, height, box) -> Image.Image:
    arr = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr)


def test_crop_region_is_the_padded_bounding_box_clipped_to_the_image():
    mask = _mask_with_box(100, 80, (30, 20, 50, 35))
    assert im.crop_region(mask, 0) == (30, 20, 50, 35)
    assert im.crop_region(mask, 10) == (20, 10, 60, 45)
    assert im.crop_region(mask, 40) == (0, 0, 90, 75)
    assert im.crop_region(Image.new("L", (16, 16)), 8) is None       # blank mask


def test_expand_crop_region_a1111_docstring_example():
    # "if user drew mask in a 128x32 region, and the dimensions for processing are 512x512,
    #  the region will be expanded to 128x128"
    region = im.expand_crop_region((100, 100, 228, 132), 512, 512, 1024, 1024)
    assert region == (100, 52, 228, 180)
    x1, y1, x2, y2 = region
    assert (x2 - x1, y2 - y1) == (128, 128)


@pytest.mark.parametrize("region, size, image, expected", [
    ((0, 0, 40, 10), (64, 64), (100, 100), (0, 0, 40, 40)),          # against the top edge: pushed down
    ((60, 90, 100, 100), (64, 64), (100, 100), (60, 60, 100, 100)),  # against the bottom edge: pushed up
    ((45, 0, 55, 100), (64, 32), (100, 100), (0, 0, 100, 100)),      # wider than the image: clipped
    ((10, 10, 20, 50), (128, 64), (200, 200), (0, 10, 80, 50)),         # left edge: shifted right
])
def test_expand_crop_region_edge_cases(region, size, image, expected):
    out = im.expand_crop_region(region, *size, *image)
    assert out == expected
    x1, y1, x2, y2 = out
    assert 0 <= x1 < x2 <= image[0] and 0 <= y1 < y2 <= image[1]


@pytest.mark.parametrize("seed", range(20))
def test_expand_crop_region_matches_the_processing_aspect_ratio(seed):
    rng = np.random.default_rng(seed)
    iw, ih = (int(v) for v in rng.integers(64, 400, 2))
    w, h = (int(v) * 8 for v in rng.integers(8, 40, 2))
    x1, y1 = int(rng.integers(0, iw - 8)), int(rng.integers(0, ih - 8))
    x2, y2 = int(rng.integers(x1 + 4, iw + 1)), int(rng.integers(y1 + 4, ih + 1))
    ex1, ey1, ex2, ey2 = im.expand_crop_region((x1, y1, x2, y2), w, h, iw, ih)
    assert 0 <= ex1 <= x1 and 0 <= ey1 <= y1 and x2 <= ex2 <= iw and y2 <= ey2 <= ih   # contains, inside
    grown_w, grown_h = ex2 - ex1, ey2 - ey1
    if grown_w < iw and grown_h < ih:     # not clipped by the image: the ratio is met to a pixel
        assert abs(grown_w * h - grown_h * w) <= max(w, h)


# ------------------------------------------------------------------------------------ fill, overlay

def test_fill_paints_the_masked_area_with_surrounding_colour():
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[:, :32] = (200, 40, 40)
    arr[:, 32:] = (40, 40, 200)
    arr[16:48, 16:48] = (0, 255, 0)              # the masked area holds a colour found nowhere else
    mask = _mask_with_box(64, 64, (16, 16, 48, 48))
    out = _arr(im.fill(Image.fromarray(arr), mask))
    inside = out[16:48, 16:48]
    assert inside[..., 1].max() < 60            # the green is gone
    assert inside[:, :8, 0].mean() > 150 and inside[:, -8:, 2].mean() > 150   # red left, blue right
    keep = _arr(mask) == 0
    assert np.array_equal(out[keep], arr[keep])       # unmasked pixels unchanged


def test_overlay_and_apply_overlay_keep_unmasked_pixels_exactly():
    original = _gradient(64, 64)
    mask = im.blur_mask(_mask_with_box(64, 64, (16, 16, 40, 48)), 4)
    keep = Image.fromarray(255 - np.asarray(mask))
    layer = im.overlay(original, keep)
    assert layer.mode == "RGBA" and np.array_equal(_arr(layer)[..., 3], _arr(keep))
    generated = Image.new("RGB", (64, 64), (0, 0, 255))
    out = _arr(im.apply_overlay(generated, None, layer))
    untouched = _arr(mask) == 0
    assert np.array_equal(out[untouched], _arr(original)[untouched])
    fully = _arr(mask) == 255
    assert np.array_equal(out[fully], np.broadcast_to([0, 0, 255], out[fully].shape))
    assert im.apply_overlay(generated, None, None) is generated


def test_apply_overlay_pastes_a_crop_back_in_place():
    original = _gradient(100, 80)
    mask = _mask_with_box(100, 80, (40, 30, 60, 50))
    keep = Image.fromarray(255 - np.asarray(mask))
    generated = Image.new("RGB", (64, 64), (0, 0, 255))          # processed at 64x64 ...
    out = _arr(im.apply_overlay(generated, (30, 20, 40, 40), im.overlay(original, keep)))   # ... pasted at 40x40
    assert out.shape == (80, 100, 3)
    assert np.array_equal(out[30:50, 40:60], np.broadcast_to([0, 0, 255], (20, 20, 3)))
    untouched = _arr(mask) == 0
    assert np.array_equal(out[untouched], _arr(original)[untouched])


def test_to_pil_truncates_like_a1111():
    import torch

    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 6).expand(3, 1, 6)
    out = _arr(im.to_pil(x))[0, :, 0]
    assert out.tolist() == [0, 0, 127, 254, 255, 255]
    back = im.to_tensor(im.to_pil(x))
    assert back.shape == (3, 1, 6) and float(back.min()) == -1.0 and float(back.max()) == 1.0
