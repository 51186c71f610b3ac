"""A1111's img2img scripts: SD upscale and Poor man's outpainting (tiles of the generation size cut with
A1111's ``split_grid``, each through img2img, blended back with ``combine_grid``), with fake runners for
their plans and seeds, and through the engine and the API on a tiny model."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.tiny import tiny_checkpoint
from webui.engine.request import GenerationRequest
from webui.engine.upscale import upscale_by
from webui.engine.result import ImageRecord
from webui.jobs.output import GenerationOutput
from webui.jobs.scripts.outpainting import OutpaintingOptions, PoorMansOutpainting, canvas
from webui.jobs.scripts.sd_upscale import SDUpscale
from webui.jobs.scripts.tiles import combine_grid, split_grid


def _picture(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_tiles_as_a1111():
    image = _picture(200, 150)
    grid = split_grid(image, 64, 64, 16)
    # A1111: ceil((w - overlap) / (tile - overlap)) columns, positions int(i * dx), the last flush right
    assert [x for x, _, _ in grid.rows[0][2]] == [0, 45, 90, 136]
    assert [y for y, _, _ in grid.rows] == [0, 43, 86]
    assert all(t.size == (64, 64) for _, _, row in grid.rows for _, _, t in row)
    assert combine_grid(grid).tobytes() == image.tobytes()      # unchanged tiles blend back to the picture


class Recorder:
    def __init__(self, change=None):
        self.runs, self.change = [], change

    def __call__(self, run):
        self.runs.append(run)
        tile = run.request.init_image
        return GenerationOutput([ImageRecord(self.change(tile) if self.change else tile, run.request.seed,
                                             infotext=f"tile\nSeed: {run.request.seed}, Version: x")])


def test_sd_upscale_plan_seeds_and_blend():
    init = _picture(64, 48)
    request = GenerationRequest(prompt="p", width=64, height=64, seed=100, n_iter=2, batch_size=2, init_image=init)
    script = SDUpscale()
    options = script.parse([None, 16, "Lanczos", 2.0], "img2img")
    recorder = Recorder()
    result = script.run(request, options, recorder)
    upscaled = upscale_by(init, 2.0, "Lanczos")
    assert upscaled.size == (128, 96) and len(result.images) == 2
    tiles = len(recorder.runs) // 2
    assert tiles == 6 and all(r.save_samples is False for r in recorder.runs)
    # A1111: batch k of two tiles starts at seed + k; the second upscale starts at seed + 1
    assert [r.request.seed for r in recorder.runs[:6]] == [100, 101, 101, 102, 102, 103]
    assert recorder.runs[6].request.seed == 101
    assert result.pictures[0].tobytes() == upscaled.tobytes()           # the tiles came back as they went
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos, Version: x" in result.infotexts[0]
    assert result.save_as_samples == [0, 1]
    with pytest.raises(ValueError, match="unknown upscaler"):
        script.parse([None, 16, "4x-UltraSharp", 2.0], "img2img")
    assert script.parse([None, 64, 2, 2.0], "img2img").upscaler == "Nearest"     # A1111's index


def test_outpainting_canvas_and_tiles():
    init = _picture(64, 64)
    options = OutpaintingOptions(pixels=32, mask_blur=4, inpainting_fill=1, directions=("left", "down"))
    c = canvas(init, options)
    assert c.image.size == (128, 128) and (c.left, c.right, c.up, c.down) == (64, 0, 0, 64)
    mask = np.asarray(c.mask)
    assert mask[:, :64 + 8].min() == 255 and mask[:64 - 8, 64 + 8:].max() == 0          # blur * 2 margin
    assert np.asarray(c.latent_mask)[:64 - 2, 64 + 2:].max() == 0                        # blur // 2 margin
    request = GenerationRequest(prompt="p", width=64, height=64, seed=7, init_image=init)
    recorder = Recorder(change=lambda tile: Image.new("RGB", tile.size, (255, 0, 0)))
    result = PoorMansOutpainting().run(request, options, recorder)
    # 2 x 2 tiles of 64 with overlap 32 -> 3 x 3; the one fully inside the original is skipped
    assert len(recorder.runs) == 8 and [r.request.seed for r in recorder.runs] == list(range(7, 15))
    first = recorder.runs[0].request
    assert (first.mask_blur, first.inpaint_full_res, first.latent_mask.size) == (8, False, (64, 64))
    assert result.pictures[0].size == (128, 128)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webui.api.routes import Api
    from webui.jobs.backend import Backend
    from webui.options import Options
    from webui.paths import Paths

    root = tmp_path_factory.mktemp("img2img-scripts")
    (root / "models" / "checkpoints").mkdir(parents=True)
    tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")
    backend = Backend(Paths(root=root), Options(), device="cpu", log=lambda m: None)
    backend.start("tiny.safetensors").wait()
    app = FastAPI()
    app.include_router(Api(backend).router())
    yield TestClient(app), root
    backend.stop()


def _b64(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_sd_upscale_and_outpainting_over_the_api(api):
    client, root = api
    body = {"prompt": "a red cat", "steps": 3, "width": 64, "height": 64, "seed": 5, "denoising_strength": 0.3,
            "init_images": [_b64(_picture(64, 64))], "save_images": True}
    up = client.post("/sdapi/v1/img2img", json={**body, "script_name": "SD upscale",
                                                "script_args": [None, 16, "Lanczos", 2.0]})
    assert up.status_code == 200, up.text
    image = Image.open(io.BytesIO(base64.b64decode(up.json()["images"][0])))
    assert image.size == (128, 128) and "SD upscale upscaler: Lanczos" in image.info["parameters"]
    assert len(list((root / "outputs" / "img2img-images").rglob("*.png"))) == 1       # the whole, not the tiles
    out = client.post("/sdapi/v1/img2img", json={**body, "script_name": "Poor man's outpainting",
                                                 "script_args": [None, 32, 4, "fill", ["right"]]})
    assert out.status_code == 200, out.text
    wide = Image.open(io.BytesIO(base64.b64decode(out.json()["images"][0])))
    assert wide.size == (128, 64)
    assert np.abs(np.asarray(wide, np.int16)[:, :40] - np.asarray(_picture(64, 64), np.int16)[:, :40]).mean() < 25
    bad = client.post("/sdapi/v1/img2img", json={**body, "script_name": "SD upscale", "script_args": [None, 16, 9]})
    assert bad.status_code == 422 and "no upscaler number 9" in bad.json()["detail"]
    txt = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "script_name": "SD upscale"})
    assert txt.status_code == 422 and "not found for txt2img" in txt.json()["detail"]
    listed = client.get("/sdapi/v1/scripts").json()
    assert {"sd upscale", "poor man's outpainting"} <= set(listed["img2img"]) and "sd upscale" not in listed["txt2img"]
    assert json.loads(up.json()["info"])["all_seeds"] == [5]
