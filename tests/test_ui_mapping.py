"""webui/jobs/request/fields.py: UI values -> a validated job by field name, and infotext -> UI fields."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.engine.request import GenerationRequest
from webui.jobs import infotext
from webui.jobs.backend import Backend
from webui.jobs.request import fields as mapping
from webui.options import Options
from webui.paths import Paths

TXT2IMG = {"prompt": "a red circle", "negative_prompt": "blue", "sampler_name": "DPM++ 2M", "scheduler": "Karras",
           "steps": 25.0, "cfg_scale": 6, "seed": 1234.0, "width": 96, "height": 64, "batch_size": 2, "n_iter": 3}


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    """The request parsers of a server with no models (the UI's values are checked there)."""
    return Backend(Paths(root=tmp_path_factory.mktemp("ui")), Options(), persist=False, log=lambda m: None).requests


def test_txt2img_fields_map_by_name():
    request = mapping.request_from_fields(TXT2IMG)
    assert request == GenerationRequest(prompt="a red circle", negative_prompt="blue", sampler_name="DPM++ 2M",
                                        scheduler="Karras", steps=25, cfg_scale=6.0, seed=1234, width=96,
                                        height=64, batch_size=2, n_iter=3)
    assert isinstance(request.steps, int) and isinstance(request.seed, int) and isinstance(request.cfg_scale, float)


def test_img2img_words_become_the_engine_numbers():
    values = dict(TXT2IMG, denoising_strength=0.3, resize_mode="Crop and resize", mask_blur=8,
                  inpainting_fill="latent noise", inpaint_full_res="Only masked", inpaint_full_res_padding=16,
                  inpainting_mask_invert="Inpaint not masked")
    request = mapping.request_from_fields(values)
    assert (request.resize_mode, request.inpainting_fill, request.inpaint_full_res, request.inpainting_mask_invert,
            request.mask_blur, request.inpaint_full_res_padding, request.denoising_strength) == (1, 2, True, True, 8, 16, 0.3)
    plain = mapping.request_from_fields(dict(values, inpaint_full_res="Whole picture",
                                             inpainting_mask_invert="Inpaint masked", inpainting_fill="fill"))
    assert (plain.inpaint_full_res, plain.inpainting_mask_invert, plain.inpainting_fill) == (False, False, 0)


@pytest.mark.parametrize("change, message", [
    ({"width": 100}, "multiple of 8"), ({"steps": 2.5}, "whole number"), ({"seed": None}, "seed is empty"),
    ({"resize_mode": "Stretch"}, "resize mode"), ({"inpainting_fill": "blur"}, "masked content"),
])
def test_bad_values_give_clear_errors(requests, change, message):
    with pytest.raises(ValueError, match=message):
        mapping.job_from_fields(requests, dict(TXT2IMG, **change), "txt2img")


def test_unknown_field_names_are_refused():
    with pytest.raises(KeyError, match="not request fields: colour"):
        mapping.request_from_fields(dict(TXT2IMG, colour="red"))


def test_brush_layers_become_a_white_mask():
    layer = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (4, 2, 10, 8))
    mask = mapping.mask_from_layers([None, layer], (32, 16))
    arr = np.asarray(mask)
    assert mask.mode == "L" and arr[2:8, 4:10].min() == 255 and arr.sum() == 255 * 36
    assert mapping.mask_from_layers([Image.new("RGBA", (32, 16))], (32, 16)) is None
    # a layer at another size is scaled to the image's
    assert np.asarray(mapping.mask_from_layers([layer], (64, 32)))[4:16, 8:20].min() == 255


def test_uploaded_mask_transparent_is_black():
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    rgba.paste((255, 255, 255, 255), (0, 0, 4, 8))
    arr = np.asarray(mapping.uploaded_mask(rgba))
    assert arr[:, :4].min() == 255 and arr[:, 4:].max() == 0


def test_infotext_fills_every_field_it_names(requests):
    text = infotext.build("a red circle, top left", "blue", {
        "Steps": 31, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 5.5, "Seed": 99,
        "Size": "96x64", "Model hash": "abcdef1234", "Model": "webui-demo-64px", "Denoising strength": 0.4})
    fields = mapping.fields_from_infotext(text)
    assert fields == {"prompt": "a red circle, top left", "negative_prompt": "blue", "steps": 31,
                      "sampler_name": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 5.5, "seed": 99,
                      "width": 96, "height": 64, "denoising_strength": 0.4, "checkpoint": "webui-demo-64px",
                      "clip_skip": 1,   # A1111: a text without "Clip skip" means 1
                      "refiner_checkpoint": "None",   # and one without "Refiner" means no refiner
                      "enable_hr": False,             # and one without "Hires upscale" means no hires fix
                      "tiling": False, "subseed_strength": 0.0}
    assert mapping.fields_from_infotext(text.replace("Seed: 99", "Seed: 99, Clip skip: 2"))["clip_skip"] == 2
    refined = mapping.fields_from_infotext(text.replace("Seed: 99", 'Seed: 99, Refiner: "xl-refiner [0123456789]", '
                                                                    "Refiner switch at: 0.7"))
    assert (refined["refiner_checkpoint"], refined["refiner_switch_at"]) == ("xl-refiner [0123456789]", 0.7)
    varied = mapping.fields_from_infotext(text.replace("Seed: 99", "Seed: 99, Variation seed: 5, Variation seed "
                                                                    "strength: 0.3, Seed resize from: 128x96"))
    assert (varied["subseed"], varied["subseed_strength"], varied["seed_resize_from_w"],
            varied["seed_resize_from_h"]) == (5, 0.3, 128, 96)
    # the legacy combined name is split as A1111 does
    legacy = mapping.fields_from_infotext("cat\nSteps: 20, Sampler: DPM++ 2M Karras, Seed: 1")
    assert (legacy["sampler_name"], legacy["scheduler"]) == ("DPM++ 2M", "Karras")
    # and the fields make a valid request again
    values = {k: v for k, v in fields.items() if k != "checkpoint"}
    request = mapping.job_from_fields(requests, values, "txt2img").request
    assert (request.width, request.height, request.seed, request.refiner_checkpoint) == (96, 64, 99, None)
