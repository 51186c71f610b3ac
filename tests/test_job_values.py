"""A job is a value: ``JobSpec`` goes to JSON and back unchanged (images and arrays included), the value that
comes back runs to the same pictures, and a job's result (``GenerationOutput``) crosses JSON too -- what another
process running the job would need."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.tiny import tiny_checkpoint
from webui.engine.request import GenerationRequest
from webui.jobs.backend import Backend
from webui.jobs.output import GenerationOutput
from webui.jobs.queue import DONE
from webui.jobs.spec import ExtensionArgs, JobSpec, Limits, ScriptChoice, decode, encode
from webui.options import Options
from webui.paths import Paths


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    root = tmp_path_factory.mktemp("values")
    (root / "models" / "checkpoints").mkdir(parents=True)
    tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")
    b = Backend(Paths(root=root), Options(), device="cpu", precision="full", persist=False, log=lambda m: None)
    assert b.start("tiny.safetensors").wait(120)
    yield b
    b.stop()


def _pictures():
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    ImageDraw.Draw(init).ellipse((8, 8, 40, 48), fill=(30, 200, 60))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 40), fill=255)
    return init, mask


def _run(backend, spec: JobSpec):
    job = backend.submit(spec)
    assert job.wait(300) and job.state == DONE, job.error
    return job.result


def test_an_inpainting_job_crosses_json_and_draws_the_same(backend):
    init, mask = _pictures()
    request = GenerationRequest(prompt="a [red:blue:2] cat", negative_prompt="blurry", steps=3, seed=5, width=64,
                                height=64, init_image=init, mask=mask, denoising_strength=0.7, mask_blur=2,
                                original_size=(64, 64), sampler_name="DPM++ 2M", batch_size=2)
    spec = backend.requests.job(request, "img2img", checkpoint="tiny.safetensors", save=False, owner="someone",
                                limits=Limits(), resumable=True)
    text = json.dumps(spec.to_json())                       # plain JSON
    again = JobSpec.from_json(json.loads(text))
    assert again == spec                                    # images compare by their pixels
    assert again.request.original_size == (64, 64) and isinstance(again.request.init_image, Image.Image)
    first, second = _run(backend, spec), _run(backend, again)
    assert [r.image.tobytes() for r in first.images] == [r.image.tobytes() for r in second.images]
    assert first.infotexts == second.infotexts and first.seeds == second.seeds == [5, 6]

    back = GenerationOutput.from_json(json.loads(json.dumps(first.to_json())))
    assert [r.image.tobytes() for r in back.images] == [r.image.tobytes() for r in first.images]
    assert (back.infotexts, back.seeds, back.subseeds, back.prompts) == (first.infotexts, first.seeds,
                                                                         first.subseeds, first.prompts)
    assert back.model_info == first.model_info and back.model == "tiny.safetensors"


def test_ui_values_scripts_and_extension_arguments_are_values_too():
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    values = {"ControlNet": {"unit0_image": array, "unit0_weight": 0.5, "unit0_enabled": True},
              "Other": {"picture": Image.new("CMYK", (4, 4), (1, 2, 3, 4)), "list": [1, "a", None]}}
    spec = JobSpec("txt2img", GenerationRequest(prompt="x"), script=ScriptChoice("X/Y/Z plot", (1, "1-3", [])),
                   extension_args=ExtensionArgs(ui=values, api={"controlnet": {"args": [{"model": "m"}]}}))
    again = JobSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert np.array_equal(again.extension_args.ui["ControlNet"]["unit0_image"], array)
    assert again.extension_args.ui["ControlNet"]["unit0_image"].dtype == np.uint8
    picture = again.extension_args.ui["Other"]["picture"]
    assert picture.mode == "CMYK" and picture.tobytes() == values["Other"]["picture"].tobytes()
    assert again.script == ScriptChoice("X/Y/Z plot", (1, "1-3", []))
    assert again.extension_args.api == spec.extension_args.api
    with pytest.raises(TypeError, match="cannot carry a object"):
        encode({"x": object()})
    assert decode(encode({"$a": 1})) == {"$a": 1}
