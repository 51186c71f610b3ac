"""Variation seeds (``subseed``, ``subseed_strength``, ``seed_resize_from_w/h``) and the sampler parameters
(``eta``, ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``) against A1111's formulas and k-diffusion.

The reference side is written here: A1111's ``slerp`` and ``ImageRNG.first`` (modules/rng.py) as
formulas, and k-diffusion's own sampler functions over diffusers' networks, with A1111's trick for the
noise those functions draw: ``torch.randn_like`` answered from each image's own CPU generator
(A1111's ``TorchHijack``), on the reference's private copy of k-diffusion's sampling module.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from tests.references import k_diffusion
from tests.test_pipeline import H, NEGATIVE, PROMPT, W, Reference, _max_diff, files, reference  # noqa: F401
from webui.engine.request import GenerationRequest
from webui.engine.seeds import ImageRNG
from webui.jobs import infotext
from webui.jobs.parameters import ModelInfo, infotexts
from webui.jobs.parameters import extra_params

SHAPE = (4, H // 8, W // 8)


def a1111_slerp(val, low, high):
    """modules/rng.py ``slerp``, written out."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def a1111_first_noise(seed, subseed, strength, shape, resize=None):
    """modules/rng.py ``ImageRNG.first`` for one image (RNG source CPU)."""
    def randn(s, sh):
        return torch.randn(sh, generator=torch.Generator().manual_seed(s))
    generator = torch.Generator().manual_seed(seed)
    noise_shape = shape if not resize else (shape[0], resize[0] // 8, resize[1] // 8)
    subnoise = randn(subseed, noise_shape) if strength else None
    noise = randn(seed, noise_shape) if noise_shape != shape else torch.randn(shape, generator=generator)
    if subnoise is not None:
        noise = a1111_slerp(strength, noise, subnoise)
    if noise_shape != shape:
        x = torch.randn(shape, generator=generator)
        dx, dy = (shape[2] - noise_shape[2]) // 2, (shape[1] - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx, ty, dx, dy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
        x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
        noise = x
    return noise


@pytest.mark.parametrize("strength, resize", [(0.0, None), (0.3, None), (1.0, None), (0.5, (96, 32)),
                                              (0.0, (32, 96)), (0.7, (64, 64))])
def test_first_noise_is_a1111s(strength, resize):
    rng = ImageRNG([11, 12], SHAPE, subseeds=[901, 902], subseed_strength=strength, seed_resize_from=resize)
    got = rng.first()
    for i, (seed, subseed) in enumerate([(11, 901), (12, 902)]):
        expected = a1111_first_noise(seed, subseed, strength, SHAPE, resize)
        torch.testing.assert_close(got[i], expected, rtol=0, atol=1e-6)
    # later draws continue each image's own generator, after its one draw at the real size
    follow = rng.next()[0]
    generator = torch.Generator().manual_seed(11)
    torch.randn(SHAPE, generator=generator)
    assert torch.equal(follow, torch.randn(SHAPE, generator=generator))


def _image(engine, **fields):
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, width=W, height=H, seed=21)
    return engine.generate(GenerationRequest(**{**base, **fields}))


def test_variation_strength_walks_from_the_seed_to_the_subseed(engine):
    plain, other = _image(engine), _image(engine, seed=777)
    none = _image(engine, subseed=777, subseed_strength=0.0)
    full = _image(engine, subseed=777, subseed_strength=1.0)
    half = _image(engine, subseed=777, subseed_strength=0.5)
    assert none.images[0].image.tobytes() == plain.images[0].image.tobytes()
    assert full.images[0].image.tobytes() == other.images[0].image.tobytes()   # slerp at 1 = the subseed's noise
    assert _max_diff(half.images[0].image, plain.images[0].image) > 2
    assert _max_diff(half.images[0].image, other.images[0].image) > 2
    # batches: image i uses seed + i and subseed + i
    batch = _image(engine, subseed=777, subseed_strength=0.5, batch_size=2)
    assert [(g.seed, g.subseed) for g in batch.images] == [(21, 777), (22, 778)]
    assert batch.images[0].image.tobytes() == half.images[0].image.tobytes()


def test_variation_infotext_and_png_info(engine):
    result = _image(engine, subseed=777, subseed_strength=0.25, seed_resize_from_w=96, seed_resize_from_h=48)
    text = infotexts(GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, width=W, height=H,
                                       seed=21, subseed=777, subseed_strength=0.25, seed_resize_from_w=96,
                                       seed_resize_from_h=48), result, ModelInfo("tiny", "0123456789"))[0]
    params = infotext.parse(text)
    assert (params["Variation seed"], params["Variation seed strength"]) == ("777", "0.25")
    assert (params["Seed resize from-1"], params["Seed resize from-2"]) == ("96", "48")
    assert text.index("Variation seed: 777") < text.index("Version")
    plain = infotexts(GenerationRequest(prompt=PROMPT, steps=4, width=W, height=H, seed=21), _image(engine),
                      ModelInfo("tiny", "0123456789"))[0]
    assert "Variation" not in plain and "Seed resize" not in plain


class _PerImageRandn(types.SimpleNamespace):
    """A1111's TorchHijack: ``randn_like`` answered from the images' own generators (after their first draw)."""

    def __init__(self, module, seeds):
        super().__init__()
        self._module = module
        self._generators = [torch.Generator().manual_seed(s) for s in seeds]
        for g in self._generators:
            torch.randn(SHAPE, generator=g)

    def __getattr__(self, name):
        return getattr(self._module, name)

    def randn_like(self, x):
        return torch.stack([torch.randn(SHAPE, generator=g) for g in self._generators])


@torch.no_grad()
def _reference_image(reference, sampler_fn, steps, seed, kwargs, uniform=True):  # noqa: F811
    sampling, _ = k_diffusion()
    ref = reference
    cond, uncond = ref.encode([PROMPT]), ref.encode([NEGATIVE])

    def denoiser(x, sigma):
        out = ref.model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
        c, u = out.chunk(2)
        return u + (c - u) * 7.0

    sigmas = ref.model.get_sigmas(steps) if uniform else ref.sigmas("karras", steps, False)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))[None] * sigmas[0]
    hijack = _PerImageRandn(sampling.torch, [seed])
    sampling.torch = hijack
    try:
        extra = {"noise_sampler": lambda s, sn: hijack.randn_like(x)} if "ancestral" in sampler_fn else {}
        out = getattr(sampling, sampler_fn)(denoiser, x, sigmas, disable=True, **extra, **kwargs)
    finally:
        sampling.torch = hijack._module
    image = ref.pipe.vae.decode(out / 0.18215).sample[0]
    return (torch.clamp((image + 1) / 2, 0, 1) * 255).permute(1, 2, 0).numpy().astype(np.uint8)


@pytest.mark.parametrize("sampler, fn, params, words", [
    ("Euler", "sample_euler", dict(s_churn=1.0, s_noise=0.9), {"Sigma churn": "1.0", "Sigma noise": "0.9"}),
    ("Euler", "sample_euler", dict(s_churn=2.0, s_tmin=0.5, s_tmax=5.0),
     {"Sigma churn": "2.0", "Sigma tmin": "0.5", "Sigma tmax": "5.0"}),
    ("Heun", "sample_heun", dict(s_churn=1.0), {"Sigma churn": "1.0"}),
    ("Euler a", "sample_euler_ancestral", dict(eta=0.5), {"Eta": "0.5"}),
    ("Euler a", "sample_euler_ancestral", dict(eta=1.0, s_noise=0.8), {"Sigma noise": "0.8"}),
])
def test_sampler_parameters_match_k_diffusion(engine, reference, sampler, fn, params, words):  # noqa: F811
    result = _image(engine, sampler_name=sampler, **params)
    expected = _reference_image(reference, fn, 4, 21, params)
    assert _max_diff(result.images[0].image, expected) <= 2
    assert _max_diff(result.images[0].image, _image(engine, sampler_name=sampler).images[0].image) > 2
    assert {k: str(v) for k, v in extra_params(result.facts).items() if k in words} == words
    if "eta" in params and params["eta"] == 1.0:
        assert "Eta" not in extra_params(result.facts)                         # the default is not written


def test_parameters_a_sampler_does_not_take_change_nothing(engine):
    plain = _image(engine, sampler_name="DPM++ 2M")
    churned = _image(engine, sampler_name="DPM++ 2M", s_churn=3.0, eta=0.3)
    assert churned.images[0].image.tobytes() == plain.images[0].image.tobytes()
    churned_params = extra_params(churned.facts)
    assert "Sigma churn" not in churned_params and "Eta" not in churned_params     # as A1111: not its parameters
    ddim = _image(engine, sampler_name="DDIM", eta=0.4)
    assert extra_params(ddim.facts)["Eta DDIM"] == 0.4
    assert _max_diff(ddim.images[0].image, _image(engine, sampler_name="DDIM").images[0].image) > 2
    repeat = _image(engine, sampler_name="DDIM", eta=0.4)                        # per-image noise: reproducible
    assert repeat.images[0].image.tobytes() == ddim.images[0].image.tobytes()


@pytest.mark.parametrize("bad, words", [(dict(subseed_strength=1.5), "variation strength"),
                                        (dict(seed_resize_from_w=100, seed_resize_from_h=64), "seed_resize_from_w"),
                                        (dict(s_churn=-1.0), "s_churn")])
def test_bad_values_are_refused(engine, bad, words):
    with pytest.raises(ValueError, match=words):
        _image(engine, **bad)
