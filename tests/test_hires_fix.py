"""Hires fix against A1111's ``sample_hr_pass`` written out over diffusers' networks and k-diffusion's Euler:
first pass, upscale (latent interpolation or decode -> PIL upscaler -> encode), A1111's crop for
``hr_resize_x/y``, fresh noise from the images' seeds at the new size, then an img2img pass with the
hires steps and denoising strength. Also the sizes, the infotext keys, and prompt editing across passes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.test_pipeline import NEGATIVE, PROMPT, _max_diff, files, reference  # noqa: F401
from webui.engine import upscale
from webui.engine.request import GenerationRequest
from webui.engine.prompts.schedule import schedule
from webui.jobs import infotext
from webui.jobs.parameters import ModelInfo, infotexts


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (torch.clamp((image + 1) / 2, 0, 1) * 255).permute(1, 2, 0).numpy().astype(np.uint8)


@torch.no_grad()
def a1111_hires(ref, *, width, height, steps, seed, hr_steps, strength, upscaler, scale=2.0, resize=(0, 0)):  # noqa: F811
    """A1111's txt2img with hires fix, Euler both passes, CFG 7, one image."""
    cond, uncond = ref.encode([PROMPT]), ref.encode([NEGATIVE])
    model = ref.model

    def denoiser(x, sigma):
        out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
        c, u = out.chunk(2)
        return u + (c - u) * 7.0

    euler = ref.sampling.sample_euler
    sigmas = model.get_sigmas(steps)
    x = torch.randn((4, height // 8, width // 8), generator=torch.Generator().manual_seed(seed))[None] * sigmas[0]
    samples = euler(denoiser, x, sigmas, disable=True)
    # calculate_target_resolution
    rx, ry = resize
    if rx == 0 and ry == 0:
        to_x, to_y, tx, ty = int(width * scale), int(height * scale), 0, 0
    elif width / height < rx / ry:
        to_x, to_y = rx, rx * height // width
        tx, ty = (to_x - rx) // 8, (to_y - ry) // 8
    else:
        to_x, to_y = ry * width // height, ry
        tx, ty = (to_x - rx) // 8, (to_y - ry) // 8
    if upscaler.startswith("Latent"):
        samples = F.interpolate(samples, size=(to_y // 8, to_x // 8), mode="bilinear", antialias=False)
    else:
        decoded = ref.pipe.vae.decode(samples / 0.18215).sample
        image = Image.fromarray(_to_uint8(decoded[0]))
        scale_by = max(to_x / image.width, to_y / image.height)
        if scale_by > 1:
            image = image.resize((int(image.width * scale_by), int(image.height * scale_by)), Image.Resampling.LANCZOS)
        if image.size != (to_x, to_y):
            image = image.resize((to_x, to_y), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        samples = ref.pipe.vae.encode(pixels * 2 - 1).latent_dist.mean * 0.18215
    samples = samples[:, :, ty // 2:samples.shape[2] - (ty + 1) // 2, tx // 2:samples.shape[3] - (tx + 1) // 2]
    noise = torch.randn(tuple(samples.shape[1:]), generator=torch.Generator().manual_seed(seed))[None]
    sigmas = model.get_sigmas(hr_steps)
    t_enc = int(min(strength, 0.999) * hr_steps)
    sigmas = sigmas[hr_steps - t_enc - 1:]
    out = euler(denoiser, samples + noise * sigmas[0], sigmas, disable=True)
    return _to_uint8(ref.pipe.vae.decode(out / 0.18215).sample[0])


def _request(**fields):
    return GenerationRequest(**{**dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, width=64, height=64,
                                       seed=31, enable_hr=True, denoising_strength=0.6), **fields})


@pytest.mark.parametrize("upscaler, fields, size", [
    ("Latent", dict(hr_scale=1.5, hr_second_pass_steps=5), (96, 96)),
    ("Lanczos", dict(hr_scale=2.0), (128, 128)),
    ("Latent", dict(width=64, height=96, hr_resize_x=128, hr_resize_y=128), (128, 128)),   # cropped to 1:1
])
def test_hires_fix_matches_a1111(engine, reference, upscaler, fields, size):  # noqa: F811
    result = engine.generate(_request(hr_upscaler=upscaler, **fields))
    assert result.images[0].image.size == size
    request = _request(**fields)
    expected = a1111_hires(reference, width=request.width, height=request.height, steps=4, seed=31,
                           hr_steps=request.hr_second_pass_steps or 4, strength=0.6, upscaler=upscaler,
                           scale=request.hr_scale, resize=(request.hr_resize_x, request.hr_resize_y))
    assert _max_diff(result.images[0].image, expected) <= 2


def test_hires_infotext_and_png_info(engine):
    request = _request(hr_scale=1.5, hr_upscaler="Nearest", hr_second_pass_steps=3, hr_sampler_name="Heun",
                       hr_prompt="a blue square")
    result = engine.generate(request)
    text = infotexts(request, result, ModelInfo("tiny", "0123456789"))[0]
    assert "Size: 64x64" in text             # the first pass's size, as A1111 writes it
    params = infotext.parse(text)
    assert (params["Denoising strength"], params["Hires upscale"], params["Hires steps"], params["Hires upscaler"],
            params["Hires sampler"], params["Hires prompt"]) == ("0.6", "1.5", "3", "Nearest", "Heun", "a blue square")
    from webui.jobs.request.fields import fields_from_infotext
    fields = fields_from_infotext(text)
    assert (fields["enable_hr"], fields["hr_scale"], fields["hr_upscaler"], fields["hr_second_pass_steps"]) == \
        (True, 1.5, "Nearest", 3)
    assert fields_from_infotext(infotexts(_request(enable_hr=False), engine.generate(_request(enable_hr=False)),
                                          ModelInfo("tiny"))[0])["enable_hr"] is False


def test_hires_prompt_changes_only_the_second_pass(engine):
    base = engine.generate(_request(hr_scale=1.5))
    other = engine.generate(_request(hr_scale=1.5, hr_prompt="a green triangle"))
    assert _max_diff(base.images[0].image, other.images[0].image) > 2
    # A1111's prompt editing across passes: whole numbers count on from the first pass, decimals past 1.0 are
    # fractions of the second pass
    assert schedule("a [b:1.5] c", 10, first_pass_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert schedule("a [b:15] c", 10, first_pass_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert schedule("a [b:.5] c", 10, first_pass_steps=10) == [(10, "a b c")]


def test_target_resolution_as_a1111():
    assert upscale.hires_target(512, 512, 1.5).final_size == (768, 768)
    assert upscale.hires_target(512, 768, hr_resize_x=1024).final_size == (1024, 1536)
    assert upscale.hires_target(512, 768, hr_resize_y=1024).final_size == (682, 1024)
    target = upscale.hires_target(512, 768, hr_resize_x=1024, hr_resize_y=1024)
    assert (target.width, target.height, target.truncate_x, target.truncate_y) == (1024, 1536, 0, 64)
    assert target.final_size == (1024, 1024)
    assert upscale.upscaler_names()[:3] == ["None", "Lanczos", "Nearest"] and "Latent (nearest-exact)" in \
        upscale.upscaler_names()


@pytest.mark.parametrize("fields, words", [
    (dict(hr_upscaler="4x-UltraSharp"), "unknown upscaler"),
    (dict(hr_scale=20.0), "hires upscale must be within"),
    (dict(refiner_checkpoint="x"), "refiner"),
])
def test_bad_hires_requests(engine, fields, words):
    with pytest.raises(ValueError, match=words):
        engine.generate(_request(**fields))
