"""Scripts through the API as A1111 clients call them (``script_name`` / ``script_args``): X/Y/Z plot with
its grid first and the runs saved, prompt matrix, prompts from file, the lists, an extension's own script."""
import base64
import io
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from tests.tiny import tiny_checkpoint
from webui.api.routes import Api
from webui.jobs.backend import Backend
from webui.options import Options
from webui.paths import Paths


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("scripts_api")
    (root / "models" / "checkpoints").mkdir(parents=True)
    tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")
    tiny_checkpoint(root / "models" / "checkpoints" / "other.safetensors", seed=3)
    (root / "styles.csv").write_text('name,prompt,negative_prompt\nTop,"{prompt}, top",blurry\n')
    backend = Backend(Paths(root=root), Options(), device="cpu", log=lambda m: None)
    backend.start("tiny.safetensors").wait()
    api = Api(backend)
    app = FastAPI()
    app.include_router(api.router())
    yield api, TestClient(app), root
    backend.stop()


def test_xyz_over_the_api(api):
    api, client, root = api
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5, "save_images": True,
            "script_name": "x/y/z plot",
            "script_args": [4, "1, 2", [], 11, "tiny, other", [], 0, "", [], True, True, False, False, False, False,
                            False, 0, True]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    info = json.loads(out["info"])
    assert len(out["images"]) == 5 and info["index_of_first_image"] == 1
    grid = Image.open(io.BytesIO(base64.b64decode(out["images"][0])))
    assert grid.width == 2 * 64 + 48 and "X/Y/Z plot" in grid.info["parameters"]
    assert info["all_seeds"] == [5, 5, 5, 5, 5]
    grids = list((root / "outputs" / "txt2img-grids").rglob("xyz_grid-*.png"))
    samples = list((root / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(grids) == 1 and len(samples) == 4, (grids, samples)
    bad = dict(body, script_args=[9, "Euler, Eulr"])
    r = client.post("/sdapi/v1/txt2img", json=bad)
    assert r.status_code == 422 and "unknown sampler 'Eulr'" in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", json=dict(body, script_args=[4, "1, 200"]))
    assert r.status_code == 422 and "steps must be within 1..150 (got 200)" in r.json()["detail"], r.text
    r = client.post("/sdapi/v1/txt2img", json=dict(body, script_name="Loopback"))
    assert r.status_code == 422 and "Script 'Loopback' not found" in r.json()["detail"]


def test_prompt_matrix_and_prompts_from_file(api):
    api, client, root = api
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat|red", "steps": 2, "width": 64, "height": 64,
                                               "script_name": "Prompt matrix", "styles": ["Top"]})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 3 and info["all_prompts"][1:] == ["a cat, top", "a cat, red, top"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "", "steps": 2, "width": 64, "height": 64, "seed": 3,
                                               "script_name": "prompts from file or textbox",
                                               "script_args": [True, False, "start", "one\n--prompt two --steps 1"]})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["one", "two"] and info["all_seeds"] == [3, 4]


def test_lists(api):
    api, client, root = api
    assert client.get("/sdapi/v1/scripts").json()["txt2img"][:3] == ["prompt matrix", "prompts from file or textbox",
                                                                     "x/y/z plot"]
    info = client.get("/sdapi/v1/script-info").json()
    assert {i["name"] for i in info} == {"prompt matrix", "prompts from file or textbox", "x/y/z plot", "sd upscale",
                                         "poor man's outpainting"}


def test_an_extension_adds_a_script(tmp_path):
    from webui.hooks.registry import ExtensionManager
    ext = tmp_path / "extensions" / "my_script"
    ext.mkdir(parents=True)
    (ext / "extension.toml").write_text('name = "my_script"\ntitle = "My script"\nversion = "1"\n')
    (ext / "__init__.py").write_text(
        "from webui.jobs.scripts import PromptMatrix\n"
        "class Twice(PromptMatrix):\n    title = 'Twice'\n"
        "def setup(hooks):\n    hooks.script(Twice())\n")
    paths = Paths(root=tmp_path)
    manager = ExtensionManager(tmp_path / "extensions", paths, Options(), log=lambda m: None)
    manager.load()
    backend = Backend(paths, Options(), device="cpu", log=lambda m: None, extensions=manager)
    assert backend.scripts.names("txt2img")[-1] == "twice", [e.errors for e in manager.extensions.values()]
    assert backend.scripts.find("Twice", "img2img").env is backend.scripts.find("x/y/z plot", "txt2img").env


def test_hires_axis_over_the_api(api):
    api, client, root = api
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5, "enable_hr": True, "hr_scale": 1.5,
            "denoising_strength": 0.5, "script_name": "X/Y/Z plot",
            "script_args": [5, "1, 2", [], 0, "", [], 0, "", [], False, True]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in r.json()["images"]]
    assert images[0].size == (192, 96) and [i.size for i in images[1:]] == [(96, 96), (96, 96)]
    assert "Hires steps: 2" in images[2].info["parameters"]
