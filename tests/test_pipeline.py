"""End-to-end parity: our engine vs an independent reference pipeline on the same tiny file.

The reference is diffusers' networks (``from_single_file``, offline) driven by k-diffusion's own
sampler functions and ``CompVisDenoiser``, with A1111's seed, CFG, schedule and img2img rules written
out in this file. Images must agree within 2/255 per pixel.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.references import LDMShim, k_diffusion
from tests.tiny import tiny_checkpoint
from tests.tiny_models import diffusers_config_dir
from webui.engine.request import GenerationRequest
from webui.jobs.parameters import extra_params

W = H = 64
PROMPT, NEGATIVE = "a red circle on a blue background", "blurry"

# sampler display name -> (k-diffusion function, automatic schedule, discard penultimate sigma, noise)
K_SAMPLERS = {
    "Euler": ("sample_euler", "uniform", False, None),
    "Euler a": ("sample_euler_ancestral", "uniform", False, "ancestral"),
    "Heun": ("sample_heun", "uniform", False, None),
    "DPM2": ("sample_dpm_2", "karras", True, None),      # A1111 1.9+: Automatic = Karras for DPM2
    "DPM2 a": ("sample_dpm_2_ancestral", "karras", True, "ancestral"),
    "LMS": ("sample_lms", "uniform", False, None),
    "DPM++ 2M": ("sample_dpmpp_2m", "karras", False, None),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "karras", False, "ancestral"),
    "DPM++ SDE": ("sample_dpmpp_sde", "karras", False, "brownian"),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "exponential", False, "brownian"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_ckpt):
    """``ckpt``: the checkpoint the shared ``engine`` fixture (conftest.py) has loaded."""
    root = tmp_path_factory.mktemp("pipeline")
    return {"ckpt": tiny_ckpt,
            "inpaint": tiny_checkpoint(root / "tiny-inpainting.safetensors", inpaint=True),
            "config": diffusers_config_dir(root / "config")}


@pytest.fixture(scope="module")
def reference(files):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_single_file(str(files["ckpt"]), config=str(files["config"]),
                                                    local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
    return Reference(pipe)


class Reference:
    """diffusers networks + k-diffusion loop + A1111 semantics, written independently of webui/."""

    def __init__(self, pipe):
        sampling, external = k_diffusion()
        self.pipe, self.sampling = pipe, sampling
        self.model = external.CompVisDenoiser(LDMShim(pipe), quantize=False)

    def encode(self, text):
        ids = self.pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids
        return self.pipe.text_encoder(ids)[0]

    def sigmas(self, kind, steps, discard):
        n = steps + 1 if discard else steps
        if kind == "uniform":
            s = self.model.get_sigmas(n)
        elif kind == "karras":
            s = self.sampling.get_sigmas_karras(n, self.model.sigma_min.item(), self.model.sigma_max.item())
        else:
            s = self.sampling.get_sigmas_exponential(n, self.model.sigma_min.item(), self.model.sigma_max.item())
        return torch.cat([s[:-2], s[-1:]]) if discard else s

    @torch.no_grad()
    def generate(self, sampler, steps, seed, cfg=7.0, batch=1, init_image=None, strength=0.75):
        fn_name, kind, discard, noise_kind = K_SAMPLERS[sampler]
        seeds = [seed + i for i in range(batch)]
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        draw = lambda: torch.stack([torch.randn((4, H // 8, W // 8), generator=g) for g in gens])  # noqa: E731
        cond = self.encode([PROMPT] * batch)
        uncond = self.encode([NEGATIVE] * batch)
        model = self.model

        def denoiser(x, sigma):
            out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
            c, u = out.chunk(2)
            return u + (c - u) * cfg

        sigmas = self.sigmas(kind, steps, discard)
        noise = draw()
        if init_image is None:
            x = noise * sigmas[0]
        else:
            img = torch.from_numpy(np.asarray(init_image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            latent = self.pipe.vae.encode(img * 2 - 1).latent_dist.mean * 0.18215
            t_enc = int(min(strength, 0.999) * steps)
            sigmas = sigmas[steps - t_enc - 1:]
            x = latent.expand(batch, -1, -1, -1) + noise * sigmas[0]
        kwargs = {}
        if noise_kind == "ancestral":
            kwargs["noise_sampler"] = lambda s, sn: draw()
        elif noise_kind == "brownian":
            pos = sigmas[sigmas > 0]
            kwargs["noise_sampler"] = self.sampling.BrownianTreeNoiseSampler(x, pos.min(), pos.max(), seed=seeds)
        out = getattr(self.sampling, fn_name)(denoiser, x, sigmas, disable=True, **kwargs)
        images = self.pipe.vae.decode(out / 0.18215).sample
        return [(torch.clamp((i + 1) / 2, 0, 1) * 255).permute(1, 2, 0).numpy().astype(np.uint8) for i in images]


def _max_diff(ours, ref) -> int:
    return int(np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(ref, dtype=np.int16)).max())


def _init_image() -> Image.Image:
    yy, xx = np.mgrid[0:H, 0:W]
    arr = np.stack([xx * 4 % 256, yy * 4 % 256, ((xx + yy) * 2) % 256], -1).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize("sampler", list(K_SAMPLERS))
def test_txt2img_matches_reference(engine, reference, sampler):
    steps, seed = 6, 1234
    result = engine.generate(GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name=sampler,
                                               steps=steps, seed=seed, width=W, height=H, batch_size=2))
    expected = reference.generate(sampler, steps, seed, batch=2)
    assert [img.seed for img in result.images] == [seed, seed + 1]
    for ours, ref in zip(result.images, expected):
        assert _max_diff(ours.image, ref) <= 2, sampler


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Euler a"])
def test_img2img_matches_reference(engine, reference, sampler):
    steps, seed, strength = 8, 77, 0.6
    init = _init_image()
    result = engine.generate(GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name=sampler,
                                               steps=steps, seed=seed, width=W, height=H, init_image=init,
                                               denoising_strength=strength))
    expected = reference.generate(sampler, steps, seed, init_image=init, strength=strength)
    assert _max_diff(result.images[0].image, expected[0]) <= 2
    assert extra_params(result.facts)["Denoising strength"] == strength


def test_same_seed_same_image_and_batches_follow_seed_plus_i(engine):
    base = dict(prompt=PROMPT, steps=3, width=W, height=H)
    one = engine.generate(GenerationRequest(seed=10, batch_size=1, n_iter=3, **base))
    batched = engine.generate(GenerationRequest(seed=10, batch_size=3, **base))
    single = engine.generate(GenerationRequest(seed=12, **base))
    assert [i.seed for i in one.images] == [10, 11, 12] == [i.seed for i in batched.images]
    for a, b in zip(one.images, batched.images):
        assert _max_diff(a.image, b.image) <= 1       # batch composition does not change an image
    assert _max_diff(one.images[2].image, single.images[0].image) <= 1
    assert _max_diff(one.images[0].image, one.images[1].image) > 2


def test_random_seed_is_reported_and_reproduces(engine):
    base = dict(prompt=PROMPT, steps=2, width=W, height=H)
    first = engine.generate(GenerationRequest(seed=-1, **base))
    assert first.seed >= 0 and first.images[0].seed == first.seed
    again = engine.generate(GenerationRequest(seed=first.seed, **base))
    assert _max_diff(first.images[0].image, again.images[0].image) == 0


def test_legacy_sampler_names_mean_sampler_plus_schedule(engine):
    base = dict(prompt=PROMPT, steps=4, seed=5, width=W, height=H)
    legacy = engine.generate(GenerationRequest(sampler_name="DPM++ 2M Karras", **base))
    explicit = engine.generate(GenerationRequest(sampler_name="DPM++ 2M", scheduler="karras", **base))
    uniform = engine.generate(GenerationRequest(sampler_name="DPM++ 2M", scheduler="uniform", **base))
    assert (legacy.sampler_name, legacy.scheduler) == ("DPM++ 2M", "Karras")
    assert _max_diff(legacy.images[0].image, explicit.images[0].image) == 0
    assert _max_diff(legacy.images[0].image, uniform.images[0].image) > 0


@pytest.mark.parametrize("bad, message", [
    (dict(width=100), "multiple of 8"),
    (dict(steps=0), "steps"),
    (dict(sampler_name="Nope"), "Euler"),
    (dict(scheduler="nope"), "Karras"),
])
def test_bad_requests_get_clear_errors(engine, bad, message):
    with pytest.raises(ValueError, match=message):
        engine.generate(GenerationRequest(**{**dict(prompt="x", width=W, height=H, steps=2), **bad}))
