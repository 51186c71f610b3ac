"""The request shapes of A1111's own API test suite (``test/test_txt2img.py``, ``test/test_img2img.py``),
sent to ``python app.py --nowebui`` as A1111's tests send them: every one answers 200 with images, except
face restoration, which this version cannot do and refuses with a 422 that says why."""
from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image

from tests.tiny import tiny_checkpoint


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


TXT2IMG = {  # A1111's simple_txt2img_request
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0, "firstphase_height": 0,
    "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "", "prompt": "example prompt",
    "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
    "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
    "subseed_strength": 0, "tiling": False, "width": 64,
}
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (16, 16, 48, 48))
IMG2IMG = {  # A1111's simple_img2img_request
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64, "include_init_images": False,
    "init_images": [_b64(Image.new("RGB", (64, 64), (30, 120, 200)))], "inpaint_full_res": False,
    "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None, "mask_blur": 4,
    "n_iter": 1, "negative_prompt": "", "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1,
    "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1,
    "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False,
    "width": 64,
}
CASES = [
    ("txt2img", "simple", {}, 1),
    ("txt2img", "negative prompt", {"negative_prompt": "example negative prompt"}, 1),
    ("txt2img", "complex prompt", {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], "
                                             "[alt|alt1]"}, 1),
    ("txt2img", "not square", {"height": 128}, 1),
    ("txt2img", "hires fix", {"enable_hr": True}, 1),
    ("txt2img", "tiling", {"tiling": True}, 1),
    ("txt2img", "PLMS", {"sampler_index": "PLMS"}, 1),
    ("txt2img", "DDIM", {"sampler_index": "DDIM"}, 1),
    ("txt2img", "UniPC", {"sampler_index": "UniPC"}, 1),
    ("txt2img", "multiple batches", {"n_iter": 2}, 2),
    ("txt2img", "batch", {"batch_size": 2}, 2),
    ("img2img", "simple", {}, 1),
    ("img2img", "masked", {"mask": _b64(MASK)}, 1),
    ("img2img", "inverted mask", {"mask": _b64(MASK), "inpainting_mask_invert": True}, 1),
    ("img2img", "sd upscale", {"script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]}, 1),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    data = tmp_path_factory.mktemp("a1111-suite")
    (data / "models" / "checkpoints").mkdir(parents=True)
    ckpt = tiny_checkpoint(data / "models" / "checkpoints" / "tiny.safetensors")
    return app_server("--nowebui", "--ckpt", ckpt, data=data, wait_model=120).base  # the model loads in the background


@pytest.mark.parametrize("kind, name, changes, count", CASES, ids=[f"{k}-{n}" for k, n, _, _ in CASES])
def test_a1111_request_shapes(server, kind, name, changes, count):
    body = {**(TXT2IMG if kind == "txt2img" else IMG2IMG), **changes}
    response = requests.post(f"{server}/sdapi/v1/{kind}", json=body, timeout=300)
    assert response.status_code == 200, response.text
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in response.json()["images"]]
    assert len(images) == count
    if name == "hires fix":                 # A1111's defaults: "Latent", scale 2
        assert images[0].size == (128, 128)
    if name == "sd upscale":
        assert images[0].size == (128, 128)


def test_face_restoration_is_refused_with_the_reason(server):
    response = requests.post(f"{server}/sdapi/v1/txt2img", json={**TXT2IMG, "restore_faces": True}, timeout=60)
    assert response.status_code == 422 and "face restoration" in response.text.lower()
