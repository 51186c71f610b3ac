"""A1111's Extras (upscale by a factor or to a size, upscaler 2 blended in) as ``Upscaler.upscale`` and
``postprocessing_upscale`` compute it, over the API too; face restoration is refused, with the reason."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, PngImagePlugin

from webui.engine.upscale import ExtrasUpscale, upscale_by
from webui.jobs import extras


def _image(w=37, h=29):
    image = Image.new("RGB", (w, h))
    image.putdata([((x * 7) % 256, (y * 11) % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    return image


def test_upscale_by_as_a1111():
    image = _image()
    out = upscale_by(image, 2.0, "Lanczos")
    assert out.size == (72, 56)                        # 74 x 58 rounded down to multiples of 8
    expected = image.resize((74, 58), Image.Resampling.LANCZOS).resize((72, 56), Image.Resampling.LANCZOS)
    assert out.tobytes() == expected.tobytes()
    nearest = upscale_by(image, 2.0, "Nearest")
    assert nearest.tobytes() == image.resize((74, 58), Image.Resampling.NEAREST).resize(
        (72, 56), Image.Resampling.LANCZOS).tobytes()
    assert upscale_by(image, 2.0, "None").tobytes() == image.resize((72, 56), Image.Resampling.LANCZOS).tobytes()


def test_scale_to_with_crop_and_a_second_upscaler():
    image = _image(40, 20)
    out, info = ExtrasUpscale(mode=1, width=64, height=64, crop=True, upscaler_1="Lanczos", upscaler_2="Nearest",
                              visibility=0.5).apply(image)
    assert out.size == (64, 64)
    first = upscale_by(image, 3.2, "Lanczos")                  # max(64/40, 64/20)
    second = upscale_by(image, 3.2, "Nearest")
    canvas = lambda im: _paste(im, 64, 64)                     # noqa: E731
    assert out.tobytes() == Image.blend(canvas(first), canvas(second), 0.5).tobytes()
    assert info == {"Postprocess upscale to": "64x64", "Postprocess crop to": "64x64",
                    "Postprocess upscaler": "Lanczos", "Postprocess upscaler 2": "Nearest"}
    same, nothing = ExtrasUpscale(upscaler_1="None").apply(image)
    assert same is image and nothing == {}


def _paste(image, w, h):
    canvas = Image.new("RGB", (w, h))
    canvas.paste(image, box=(w // 2 - image.width // 2, h // 2 - image.height // 2))
    return canvas


def test_png_keeps_parameters_and_adds_postprocessing():
    source = _image()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Seed: 1, Size: 37x29")
    buffer = io.BytesIO()
    source.save(buffer, format="PNG", pnginfo=info)
    loaded = Image.open(io.BytesIO(buffer.getvalue()))
    result, text = extras.postprocess(loaded, ExtrasUpscale(scale=2.0, upscaler_1="Lanczos"))
    out = Image.open(io.BytesIO(extras.png_bytes(result, text)))
    assert out.info["parameters"].startswith("a cat")
    assert out.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"


@pytest.mark.parametrize("fields, words", [(dict(upscaler_1="R-ESRGAN 4x+"), "unknown upscaler"),
                                           (dict(mode=3), "resize mode"), (dict(scale=20), "upscaling_resize")])
def test_bad_extras_are_refused(fields, words):
    with pytest.raises(ValueError, match=words):
        ExtrasUpscale(**{"upscaler_1": "Lanczos", **fields}).apply(_image())


def test_extras_over_the_api(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webui.api.routes import Api
    from webui.jobs.backend import Backend
    from webui.options import Options
    from webui.paths import Paths

    app = FastAPI()
    app.include_router(Api(Backend(Paths(root=tmp_path), Options(), device="cpu")).router())
    client = TestClient(app)
    buffer = io.BytesIO()
    _image(32, 24).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    single = client.post("/sdapi/v1/extra-single-image", json={"image": data, "upscaling_resize": 2,
                                                               "upscaler_1": "Lanczos"})
    assert single.status_code == 200, single.text
    assert Image.open(io.BytesIO(base64.b64decode(single.json()["image"]))).size == (64, 48)
    assert "Postprocess upscaler: Lanczos" in single.json()["html_info"]
    batch = client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": data, "name": "a.png"}] * 2,
                                                              "resize_mode": 1, "upscaling_resize_w": 40,
                                                              "upscaling_resize_h": 40, "upscaler_1": "Nearest"})
    assert batch.status_code == 200 and len(batch.json()["images"]) == 2
    faces = client.post("/sdapi/v1/extra-single-image", json={"image": data, "codeformer_visibility": 1})
    assert faces.status_code == 422 and "face restoration is not available" in faces.json()["detail"]
    bad = client.post("/sdapi/v1/extra-single-image", json={"image": data, "upscaler_1": "4x-UltraSharp"})
    assert bad.status_code == 422 and "available: None, Lanczos, Nearest" in bad.json()["detail"]
