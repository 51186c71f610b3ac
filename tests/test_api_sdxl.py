"""SDXL through the A1111 API as a client sees it: ``python app.py --nowebui`` with tiny SDXL base and
refiner files (and an SD 1.x one) in models/checkpoints: the refiner fields, SDXL's size fields, the
infotext read back by png-info, and the errors a client gets for a refiner that cannot work.
"""
from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.tiny import tiny_checkpoint
from webui.jobs import infotext


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    data = tmp_path_factory.mktemp("api-sdxl")
    ckpts = data / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    base = tiny_checkpoint(ckpts / "xl-base.safetensors", "sdxl")
    tiny_checkpoint(ckpts / "xl-refiner.safetensors", "sdxl-refiner")
    tiny_checkpoint(ckpts / "sd1.safetensors")
    return app_server("--nowebui", "--ckpt", base, data=data, wait_model=120)   # the model loads in the background


def _post(server, body):
    return server["session"].post(f"{server['base']}/sdapi/v1/txt2img", json=body, timeout=300)


BASE = {"prompt": "a red cat", "negative_prompt": "blurry", "steps": 4, "width": 64, "height": 64, "seed": 5,
        "sampler_name": "Euler"}


def _image(response) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))


def test_sdxl_model_is_loaded_and_described(server):
    assert "SDXL, eps-prediction" in server["log"].read_text()
    models = server["session"].get(f"{server['base']}/sdapi/v1/sd-models").json()
    assert {m["model_name"] for m in models} >= {"xl-base", "xl-refiner", "sd1"}


def test_refiner_switch_is_applied_and_recorded(server):
    plain = _post(server, BASE)
    refined = _post(server, {**BASE, "refiner_checkpoint": "xl-refiner", "refiner_switch_at": 0.5})
    assert plain.status_code == refined.status_code == 200, refined.text
    text = json.loads(refined.json()["info"])["infotexts"][0]
    params = infotext.parse(text)
    assert params["Refiner"].startswith("xl-refiner [") and params["Refiner switch at"] == "0.5"
    assert "Refiner" not in infotext.parse(json.loads(plain.json()["info"])["infotexts"][0])
    difference = max(abs(a - b) for a, b in zip(_image(plain).tobytes(), _image(refined).tobytes()))
    assert difference > 2                                    # the refiner ran the last steps
    # png-info reads the fields back from the PNG itself
    info = server["session"].post(f"{server['base']}/sdapi/v1/png-info",
                                  json={"image": refined.json()["images"][0]}).json()
    assert info["parameters"]["Refiner switch at"] in (0.5, "0.5")
    # switch at 1: the refiner never takes over, the image is the base model's and nothing is recorded
    never = _post(server, {**BASE, "refiner_checkpoint": "xl-refiner", "refiner_switch_at": 1.0})
    assert _image(never).tobytes() == _image(plain).tobytes()
    assert "Refiner" not in json.loads(never.json()["info"])["infotexts"][0]


def test_size_conditioning_fields(server):
    plain = _post(server, BASE)
    sized = _post(server, {**BASE, "original_size": [128, 96], "crops_coords_top_left": [8, 0],
                           "target_size": [64, 64]})
    assert sized.status_code == 200, sized.text
    params = infotext.parse(json.loads(sized.json()["info"])["infotexts"][0])
    # "WxH" values are split as A1111 splits every one of them (Size-1, Size-2)
    assert (params["Original size-1"], params["Original size-2"], params["Crop top-left"],
            params["Target size-1"]) == ("96", "128", "8,0", "64")
    assert _image(sized).tobytes() != _image(plain).tobytes()
    bad = _post(server, {**BASE, "original_size": [64]})
    assert bad.status_code == 422 and "original_size" in bad.text


@pytest.mark.parametrize("refiner, status, words", [
    ("nope", 422, "unknown checkpoint 'nope'"),
    ("sd1", 422, "refiner sd1.safetensors is a SD 1.x model; it cannot refine SDXL images"),
])
def test_refiner_errors(server, refiner, status, words):
    response = _post(server, {**BASE, "refiner_checkpoint": refiner})
    assert response.status_code == status and words in response.json()["detail"], response.text
    assert _post(server, BASE).status_code == 200           # and the server goes on
