"""Weight-free ControlNet preprocessors: sd-webui-controlnet's sizes, thresholds and names."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from extensions.controlnet import preprocessors as pp


def _scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """White background, dark lines and filled shapes in a few colours, mild noise: RGB uint8."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 245, np.uint8)
    cv2.rectangle(img, (width // 8, height // 6), (width // 2, height // 2), (200, 40, 40), -1)
    cv2.circle(img, (2 * width // 3, 2 * height // 3), min(height, width) // 5, (30, 160, 60), -1)
    cv2.line(img, (0, height - 10), (width - 1, 10), (10, 10, 10), 3)
    noise = rng.integers(-6, 7, img.shape)
    return (img.astype(np.int32) + noise).clip(0, 255).astype(np.uint8)


def _scaled_reference(img: np.ndarray, resolution: int) -> np.ndarray:
    height, width = img.shape[:2]
    k = resolution / min(height, width)
    size = (round(width * k), round(height * k))
    return cv2.resize(img, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


@pytest.mark.parametrize("shape, resolution, expected", [
    ((300, 500), 512, (512, 853)),   # enlarged, width padded to 896 inside and cut back
    ((1000, 700), 256, (366, 256)),  # shrunk
    ((128, 192), 256, (256, 384)),   # multiples of 64: no padding
])
def test_output_sizes_follow_the_resolution_rule(shape, resolution, expected):
    img = _scene(*shape)
    for name in ("canny", "threshold", "binary", "scribble_xdog"):
        out = pp.run_preprocessor(name, img, resolution)
        assert out.shape == (*expected, 3) and out.dtype == np.uint8, name
    for name in ("none", "invert"):  # sd-webui-controlnet runs these at the input size
        assert pp.run_preprocessor(name, img, resolution).shape == (*shape, 3)
    padded, remove_pad = pp.resize_with_pad(img, resolution)
    assert padded.shape[0] % 64 == 0 and padded.shape[1] % 64 == 0
    assert remove_pad(padded).shape == (*expected, 3)


def test_canny_equals_opencv_on_the_scaled_image():
    img = _scene(128, 192)  # scales to 256 x 384: no padding
    scaled = _scaled_reference(img, 256)
    for low, high in ((100, 200), (30, 60)):
        out = pp.run_preprocessor("canny", img, 256, low, high)
        edges = cv2.Canny(scaled, low, high)
        assert edges.any()
        np.testing.assert_array_equal(out, np.repeat(edges[:, :, None], 3, axis=2))
    # with padding: the edges of the edge-padded image, cut back
    img = _scene(300, 500)
    scaled = _scaled_reference(img, 512)
    padded = np.pad(scaled, [[0, 0], [0, 896 - scaled.shape[1]], [0, 0]], mode="edge")
    np.testing.assert_array_equal(pp.canny(img, 512, 100, 200)[:, :, 0], cv2.Canny(padded, 100, 200)[:, :853])
    # defaults are the sliders' 100 / 200
    np.testing.assert_array_equal(pp.run_preprocessor("canny", img, 512), pp.canny(img, 512, 100, 200))


def test_invert_and_none():
    img = _scene(90, 70)
    np.testing.assert_array_equal(pp.run_preprocessor("invert", img, 512), 255 - img)
    np.testing.assert_array_equal(pp.run_preprocessor("invert (from white bg & black line)", img), 255 - img)
    np.testing.assert_array_equal(pp.run_preprocessor("none", img), img)
    gray = img[:, :, 1]
    np.testing.assert_array_equal(pp.invert(gray), 255 - np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.dstack([img, np.zeros(img.shape[:2], np.uint8)])  # fully transparent: white
    assert (pp.none(rgba) == 255).all() and (pp.invert(rgba) == 0).all()


def _patches() -> np.ndarray:
    """Four 64x64 flat patches: grey 200, grey 150, (200, 100, 200) and grey 90."""
    img = np.zeros((64, 256, 3), np.uint8)
    for i, colour in enumerate([(200, 200, 200), (150, 150, 150), (200, 100, 200), (90, 90, 90)]):
        img[:, 64 * i:64 * (i + 1)] = colour
    return img


def _patch_values(out: np.ndarray) -> list[int]:
    assert (out == out[:, :, :1]).all()  # gray as RGB
    return [int(out[32, 64 * i + 32, 0]) for i in range(4)]


def test_threshold_is_white_where_every_channel_is_above():
    img = _patches()  # resolution 64 = the short side: same size, no padding
    assert _patch_values(pp.run_preprocessor("threshold", img, 64, 127)) == [255, 255, 0, 0]
    assert _patch_values(pp.run_preprocessor("threshold", img, 64, 150)) == [255, 0, 0, 0]  # strictly above
    assert _patch_values(pp.run_preprocessor("threshold", img, 64, 80)) == [255, 255, 255, 255]
    assert _patch_values(pp.run_preprocessor("threshold", img, 64)) == [255, 255, 0, 0]  # default 127
    assert set(np.unique(pp.run_preprocessor("threshold", _scene(100, 120), 128))) <= {0, 255}


def test_binary_marks_dark_pixels_and_uses_otsu_at_0_and_255():
    img = _patches()  # gray values 200, 150, 141 (0.299*200 + 0.587*100 + 0.114*200), 90
    assert _patch_values(pp.run_preprocessor("binary", img, 64, 145)) == [0, 0, 255, 255]
    assert _patch_values(pp.run_preprocessor("binary", img, 64, 150)) == [0, 255, 255, 255]  # at or below
    two_tone = np.full((64, 128, 3), 220, np.uint8)
    two_tone[:, :40] = 30
    for otsu in (0, 255, -1, None):  # -1 / None: the slider default, 0 (Otsu)
        out = pp.run_preprocessor("binary", two_tone, 64, otsu)
        assert (out[:, :40] == 255).all() and (out[:, 40:] == 0).all(), otsu


def test_scribble_xdog_gives_binary_strokes_on_the_lines():
    img = np.full((128, 128, 3), 255, np.uint8)
    cv2.line(img, (10, 64), (118, 64), (0, 0, 0), 2)
    cv2.circle(img, (64, 64), 40, (80, 80, 80), 1)
    out = pp.run_preprocessor("scribble_xdog", img, 128)
    assert set(np.unique(out)) == {0, 255} and (out == out[:, :, :1]).all()
    strokes = out[:, :, 0] > 0
    assert strokes[62:67, 20:40].any() and strokes[64 - 40 - 2:64 - 40 + 3, 60:68].any()  # on the line and circle
    assert not strokes[:10].any() and not strokes[:, :5].any()  # flat background stays black
    assert strokes.mean() < 0.2
    counts = [int((pp.scribble_xdog(img, 128, t)[:, :, 0] > 0).sum()) for t in (4, 32, 64)]
    assert counts[0] > counts[1] > counts[2] > 0  # a higher threshold keeps fewer strokes


def test_scribble_xdog_matches_the_documented_formula():
    """sd-webui-controlnet's XDoG: per channel blur(sigma 5) - blur(sigma 0.5), darkest channel, through
    uint8 (clipped), doubled in uint8 arithmetic (wrapping at 256), compared with the threshold."""
    img = _scene(128, 192)
    cv2.line(img, (5, 100), (180, 110), (0, 0, 0), 1)  # thin and black: responses of 128 and more
    scaled = _scaled_reference(img, 256).astype(np.float32)  # 256 x 384: no padding
    response = np.min(cv2.GaussianBlur(scaled, (0, 0), 5.0) - cv2.GaussianBlur(scaled, (0, 0), 0.5), axis=2)
    darkness = 255 - (255 - response).clip(0, 255).astype(np.uint8).astype(np.int64)
    assert ((darkness >= 128) & ((2 * darkness) % 256 <= 32)).any()  # the wrap matters for this scene
    for t in (8, 32):
        expected = np.where((2 * darkness) % 256 > t, 255, 0)
        np.testing.assert_array_equal(pp.run_preprocessor("scribble_xdog", img, 256, t)[:, :, 0], expected)


def test_registry_names_sliders_and_errors():
    assert {"none", "canny", "invert", "threshold", "scribble_xdog"} <= set(pp.PREPROCESSORS)
    for name, (function, sliders) in pp.PREPROCESSORS.items():
        assert len(sliders) <= 2
        for s in sliders:
            assert s.minimum <= s.default <= s.maximum and s.label
    assert [s.default for s in pp.PREPROCESSORS["canny"][1]] == [100, 200]
    assert pp.PREPROCESSORS["scribble_xdog"][1][0].default == 32
    with pytest.raises(ValueError) as error:
        pp.run_preprocessor("depth_midas", _scene(64, 64))
    assert "depth_midas" in str(error.value) and "canny" in str(error.value) and "scribble_xdog" in str(error.value)
    with pytest.raises(ValueError, match="uint8"):
        pp.run_preprocessor("canny", np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        pp.run_preprocessor("canny", np.zeros((64, 64, 2), np.uint8))
    # -1 / None resolution: the default 512
    assert pp.run_preprocessor("canny", _scene(64, 64), -1).shape == (512, 512, 3)
