"""The LCM sampler (for LCM / LCM-LoRA models) against A1111's: its ``LCMCompVisDenoiser`` (k-diffusion's
``DiscreteEpsDDPMDenoiser`` on LCM's 50 original timesteps, with the consistency-model boundary
scalings) and its ``sample_lcm`` loop, written out here over diffusers' networks on the same tiny file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.references import LDMShim, k_diffusion
from tests.test_pipeline import H, NEGATIVE, PROMPT, W, _init_image, _max_diff
from tests.tiny_models import diffusers_config_dir
from webui.engine.request import GenerationRequest
from webui.engine.sampling import registry


def a1111_lcm_denoiser(shim):
    """A1111's modules/sd_samplers_lcm.LCMCompVisDenoiser, on k-diffusion's classes."""
    _, external = k_diffusion()

    class LCMCompVisDenoiser(external.DiscreteEpsDDPMDenoiser):
        def __init__(self, model):
            timesteps, original = 1000, 50
            self.skip_steps = timesteps // original
            valid = torch.zeros(original, dtype=torch.float32)
            for x in range(original):
                valid[original - 1 - x] = model.alphas_cumprod[timesteps - 1 - x * self.skip_steps]
            super().__init__(model, valid, quantize=None)

        def get_sigmas(self, n=None):
            start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
            t = torch.linspace(start, end, n)
            return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

        def sigma_to_t(self, sigma, quantize=None):
            dists = sigma.log() - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

        def t_to_sigma(self, timestep):
            t = torch.clamp(((timestep - (self.skip_steps - 1)) / self.skip_steps).float(), min=0,
                            max=(len(self.sigmas) - 1))
            return super().t_to_sigma(t)

        def get_eps(self, *args, **kwargs):
            return self.inner_model.apply_model(*args, **kwargs)

        def get_scaled_out(self, sigma, output, input):
            scaled = (self.sigma_to_t(sigma) * 10.0).view(-1, 1, 1, 1)
            c_skip = 0.25 / (scaled ** 2 + 0.25)
            c_out = scaled / (scaled ** 2 + 0.25) ** 0.5
            return c_out * output + c_skip * input

        def forward(self, input, sigma, **kwargs):
            c_out, c_in = [x.view(-1, 1, 1, 1) for x in self.get_scalings(sigma)]
            eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
            return self.get_scaled_out(sigma, input + eps * c_out, input)

    return LCMCompVisDenoiser(shim)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_engine, tiny_ckpt):
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("lcm")
    path = tiny_ckpt
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(diffusers_config_dir(root)),
                                                    local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
    engine = make_engine(path)
    return engine, pipe, a1111_lcm_denoiser(LDMShim(pipe))


@torch.no_grad()
def reference(pipe, model, steps, seed, cfg, init_image=None, strength=0.5):
    """A1111's LCM job: CFG over the LCM denoiser, its ``sample_lcm`` loop, per-image CPU noise."""
    def encode(text):
        ids = pipe.tokenizer([text], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    cond, uncond = encode(PROMPT), encode(NEGATIVE)
    generator = torch.Generator("cpu").manual_seed(seed)
    draw = lambda: torch.randn((1, 4, H // 8, W // 8), generator=generator)  # noqa: E731
    sigmas = model.get_sigmas(steps)
    noise = draw()
    if init_image is None:
        x = noise * sigmas[0]
    else:
        img = torch.from_numpy(np.asarray(init_image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        latent = pipe.vae.encode(img * 2 - 1).latent_dist.mean * 0.18215
        t_enc = int(min(strength, 0.999) * steps)
        sigmas = sigmas[steps - t_enc - 1:]
        x = latent + noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        out = model(torch.cat([x, x]), torch.cat([sigmas[i:i + 1]] * 2), cond=torch.cat([cond, uncond]))
        c, u = out.chunk(2)
        x = u + (c - u) * cfg
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * draw()
    image = pipe.vae.decode(x / 0.18215).sample[0]
    return (torch.clamp((image + 1) / 2, 0, 1) * 255).permute(1, 2, 0).numpy().astype(np.uint8)


@pytest.mark.parametrize("steps, cfg", [(4, 1.5), (6, 1.0)])
def test_lcm_txt2img_matches_a1111(setup, steps, cfg):
    engine, pipe, model = setup
    result = engine.generate(GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="LCM",
                                               steps=steps, cfg_scale=cfg, seed=42, width=W, height=H))
    assert (result.sampler_name, result.scheduler) == ("LCM", "Uniform")
    assert _max_diff(result.images[0].image, reference(pipe, model, steps, 42, cfg)) <= 2


def test_lcm_img2img_matches_a1111(setup):
    engine, pipe, model = setup
    init = _init_image()
    result = engine.generate(GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="LCM",
                                               steps=8, cfg_scale=1.5, seed=7, width=W, height=H,
                                               init_image=init, denoising_strength=0.5))
    assert _max_diff(result.images[0].image, reference(pipe, model, 8, 7, 1.5, init, 0.5)) <= 2


def test_lcm_sigmas_live_on_the_original_timesteps(setup):
    engine, _, model = setup
    spec, key = registry.resolve("LCM")
    ours = registry.build_sigmas(spec, key, engine.resident.sampling_schedule(spec), 5)
    torch.testing.assert_close(ours, model.get_sigmas(5), rtol=1e-5, atol=0)   # float rounding of the t grid
    karras = registry.build_sigmas(spec, "karras", engine.resident.sampling_schedule(spec), 5)
    assert float(karras[-2]) == pytest.approx(float(model.sigma_min), rel=1e-5)
    assert float(karras[0]) == pytest.approx(float(model.sigma_max), rel=1e-5)
    assert registry.resolve("k_lcm")[0].name == "LCM"
