"""Every field of A1111's txt2img / img2img request is either acted on or refused with a 422 naming it:
none is accepted and silently ignored.

The test walks the request schemas. Each field has an entry here: a non-default probe value and either
``used`` (how the request the server builds from it, or the server's job options, show the value) or
``refused`` (the 422's words). A field added to the schema without an entry fails the walk.
"""
from __future__ import annotations

import base64
import io

import pytest
from fastapi import HTTPException
from PIL import Image

from tests.tiny import tiny_checkpoint
from webui.api import schemas
from webui.api.routes import Api
from webui.jobs.backend import Backend
from webui.options import Options
from webui.paths import Paths


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


INFOTEXT = "a blue cat\nNegative prompt: dogs\nSteps: 7, Sampler: Euler a, CFG scale: 4.5, Seed: 99, Size: 96x64"

# field -> (probe value, ("used", check(request, job)) | ("refused", words))
USED, REFUSED = "used", "refused"
FIELDS = {
    "prompt": ("a red fox", (USED, lambda r, t: r.prompt == "a red fox")),
    "negative_prompt": ("blurry", (USED, lambda r, t: r.negative_prompt == "blurry")),
    "styles": (["x"], (USED, None)),                 # checked by the server's style tests (unknown -> 422)
    "seed": (5, (USED, lambda r, t: r.seed == 5)),
    "subseed": (77, (USED, lambda r, t: r.subseed == 77)),
    "subseed_strength": (0.3, (USED, lambda r, t: r.subseed_strength == 0.3)),
    "seed_resize_from_h": (128, (USED, lambda r, t: r.seed_resize_from_h == 128)),
    "seed_resize_from_w": (128, (USED, lambda r, t: r.seed_resize_from_w == 128)),
    "sampler_name": ("Heun", (USED, lambda r, t: r.sampler_name == "Heun")),
    "sampler_index": ("DPM2", (USED, lambda r, t: r.sampler_name == "DPM2")),
    "scheduler": ("karras", (USED, lambda r, t: r.scheduler == "karras")),
    "batch_size": (2, (USED, lambda r, t: r.batch_size == 2)),
    "n_iter": (3, (USED, lambda r, t: r.n_iter == 3)),
    "steps": (9, (USED, lambda r, t: r.steps == 9)),
    "cfg_scale": (3.5, (USED, lambda r, t: r.cfg_scale == 3.5)),
    "width": (128, (USED, lambda r, t: r.width == 128)),
    "height": (96, (USED, lambda r, t: r.height == 96)),
    "restore_faces": (True, (REFUSED, "restore_faces")),
    "tiling": (True, (USED, lambda r, t: r.tiling)),
    "do_not_save_samples": (True, (USED, None)),     # the job's save flag: tests/test_api.py::test_api_server_fields
    "do_not_save_grid": (True, (USED, None)),
    "eta": (0.5, (USED, lambda r, t: r.eta == 0.5)),
    "denoising_strength": (0.4, (USED, None)),       # txt2img: hires fix's (tests/test_hires_fix.py); img2img below
    "s_min_uncond": (0.5, (REFUSED, "s_min_uncond")),
    "s_churn": (1.5, (USED, lambda r, t: r.s_churn == 1.5)),
    "s_tmax": (3.0, (USED, lambda r, t: r.s_tmax == 3.0)),
    "s_tmin": (0.2, (USED, lambda r, t: r.s_tmin == 0.2)),
    "s_noise": (0.9, (USED, lambda r, t: r.s_noise == 0.9)),
    "override_settings": ({"CLIP_stop_at_last_layers": 2}, (USED, lambda r, t: r.clip_skip == 2)),
    "override_settings_restore_afterwards": (False, (USED, None)),   # tests/test_api.py::test_api_server_fields
    "refiner_checkpoint": ("tiny", (USED, lambda r, t: r.refiner_checkpoint == "tiny.safetensors")),
    "refiner_switch_at": (0.6, (USED, lambda r, t: r.refiner_switch_at == 0.6)),
    "original_size": ([96, 64], (USED, lambda r, t: r.original_size == (96, 64))),
    "crops_coords_top_left": ([8, 0], (USED, lambda r, t: r.crops_coords_top_left == (8, 0))),
    "target_size": ([64, 96], (USED, lambda r, t: r.target_size == (64, 96))),
    "disable_extra_networks": (True, (USED, lambda r, t: r.disable_extra_networks)),
    "comments": ({"a": 1}, (REFUSED, "comments")),
    "enable_hr": (True, (USED, lambda r, t: r.enable_hr)),
    "firstphase_width": (256, (REFUSED, "firstphase_width")),
    "firstphase_height": (256, (REFUSED, "firstphase_height")),
    # hires fix's fields act only with enable_hr, as in A1111 (the walk probes them with it)
    "hr_scale": (1.5, (USED, lambda r, t: r.hr_scale == 1.5)),
    "hr_upscaler": ("Lanczos", (USED, lambda r, t: r.hr_upscaler == "Lanczos")),
    "hr_second_pass_steps": (5, (USED, lambda r, t: r.hr_second_pass_steps == 5)),
    "hr_resize_x": (128, (USED, lambda r, t: r.hr_resize_x == 128)),
    "hr_resize_y": (128, (USED, lambda r, t: r.hr_resize_y == 128)),
    "hr_checkpoint_name": ("tiny", (USED, lambda r, t: r.hr_checkpoint_name == "tiny.safetensors")),
    "hr_sampler_name": ("Heun", (USED, lambda r, t: r.hr_sampler_name == "Heun")),
    "hr_scheduler": ("karras", (USED, lambda r, t: r.hr_scheduler == "karras")),
    "hr_prompt": ("x", (USED, lambda r, t: r.hr_prompt == "x")),
    "hr_negative_prompt": ("y", (USED, lambda r, t: r.hr_negative_prompt == "y")),
    "force_task_id": ("task-1", (USED, None)),       # the task's id: tests/test_api.py
    "script_name": ("Prompt matrix", (USED, lambda r, t: t.script.name == "Prompt matrix")),
    "script_args": ([1, 2], (USED, None)),           # only with script_name
    "send_images": (False, (USED, None)),            # the response: tests/test_api.py
    "save_images": (True, (USED, None)),
    "alwayson_scripts": ({}, (USED, None)),          # extensions' arguments: tests/test_extensions.py
    # the infotext fills the fields the request did not set (prompt and steps are set by the probe's base)
    "infotext": (INFOTEXT, (USED, lambda r, t: (r.prompt, r.steps, r.negative_prompt, r.cfg_scale, r.seed,
                                                r.sampler_name) == ("p", 4, "dogs", 4.5, 99, "Euler a"))),
}
IMG2IMG_FIELDS = {
    "init_images": ([_png(), _png()], (REFUSED, "one image per request")),
    "resize_mode": (2, (USED, lambda r, t: r.resize_mode == 2)),
    "image_cfg_scale": (2.0, (USED, None)),          # instruct-pix2pix models only, which are refused by name
    "mask": (_png(), (USED, lambda r, t: r.mask is not None)),
    "mask_blur_x": (9, (REFUSED, "mask_blur_x and mask_blur_y differ")),
    "mask_blur_y": (9, (REFUSED, "mask_blur_x and mask_blur_y differ")),
    "mask_blur": (7, (USED, lambda r, t: r.mask_blur == 7)),
    "mask_round": (False, (REFUSED, "mask_round")),
    "inpainting_fill": (2, (USED, lambda r, t: r.inpainting_fill == 2)),
    "inpaint_full_res": (False, (USED, lambda r, t: r.inpaint_full_res is False)),
    "inpaint_full_res_padding": (16, (USED, lambda r, t: r.inpaint_full_res_padding == 16)),
    "inpainting_mask_invert": (1, (USED, lambda r, t: r.inpainting_mask_invert)),
    "initial_noise_multiplier": (0.8, (USED, lambda r, t: r.initial_noise_multiplier == 0.8)),
    "latent_mask": (_png(), (USED, lambda r, t: r.latent_mask is not None)),
    "include_init_images": (True, (USED, None)),     # the parameters echo: test_api_server_fields
    "denoising_strength": (0.4, (USED, lambda r, t: r.denoising_strength == 0.4)),
    "enable_hr": (True, (REFUSED, "hires fix is a txt2img feature")),
    # hires fix's fields: nothing without enable_hr, which img2img refuses
    **{name: (FIELDS[name][0], (USED, None)) for name in FIELDS if name.startswith("hr_")},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    (root / "models" / "checkpoints").mkdir(parents=True)
    tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")
    backend = Backend(Paths(root=root), Options(), device="cpu", persist=False)
    return Api(backend)


def _request(api, schema, field, value):
    base = {"prompt": "p", "steps": 4, "width": 64, "height": 64}
    if schema is schemas.Img2ImgRequest:
        base["init_images"] = [_png()]
    elif field.startswith("hr_"):
        base["enable_hr"] = True
    body = schema(**{**base, field: value})
    return api.generation.job(body, "img2img" if schema is schemas.Img2ImgRequest else "txt2img")


@pytest.mark.parametrize("schema", [schemas.Txt2ImgRequest, schemas.Img2ImgRequest])
def test_every_field_is_used_or_refused(api, schema):
    table = {**FIELDS, **(IMG2IMG_FIELDS if schema is schemas.Img2ImgRequest else {})}
    fields = set(schema.model_fields)
    assert fields == set(table), f"fields without an entry: {sorted(fields - set(table))}; " \
                                 f"entries without a field: {sorted(set(table) - fields)}"
    for field in sorted(fields):
        value, (kind, check) = table[field]
        if kind == REFUSED:
            with pytest.raises(HTTPException) as info:
                _request(api, schema, field, value)
            assert info.value.status_code == 422 and check in info.value.detail, (field, info.value.detail)
        elif check is not None:
            job = _request(api, schema, field, value)
            assert check(job.request, job), field


def test_defaults_are_accepted(api):
    """A1111 clients send every field with its default: none of those is refused."""
    for schema in (schemas.Txt2ImgRequest, schemas.Img2ImgRequest):
        body = schema(prompt="p", width=64, height=64, **({"init_images": [_png()]}
                                                         if schema is schemas.Img2ImgRequest else {}))
        request = api.generation.job(body, "img2img" if schema is schemas.Img2ImgRequest else "txt2img").request
        assert request.prompt == "p"
