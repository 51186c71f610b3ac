"""SDXL in the engine beyond parity: an external VAE, the half-precision VAE overflow fallback, the
SDXL table of "Align Your Steps", and refiners that cannot work."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.tiny import tiny_checkpoint
from tests.tiny_models import write_vae_file
from webui.engine.files import CheckpointError
from webui.engine.request import GenerationRequest
from webui.engine.sampling import registry, schedules

REQUEST = dict(prompt="a red cat", negative_prompt="blurry", steps=3, width=64, height=64, seed=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-engine")
    return {"root": root, "sdxl": tiny_checkpoint(root / "xl.safetensors", "sdxl"),
            "other": tiny_checkpoint(root / "xl-other.safetensors", "sdxl", seed=7),
            "sd1": tiny_checkpoint(root / "sd1.safetensors")}


@pytest.fixture(scope="module")
def engine(files, make_engine):
    return make_engine(files["sdxl"])


def test_external_vae_replaces_the_sdxl_vae(engine, files):
    before = engine.generate(GenerationRequest(**REQUEST)).images[0].image
    vae = write_vae_file(files["root"] / "xl-vae.safetensors", files["other"], prefix=False)
    engine.set_vae(vae)
    try:
        after = engine.generate(GenerationRequest(**REQUEST)).images[0].image
        assert after.tobytes() != before.tobytes()
    finally:
        engine.set_vae(None)
    assert engine.generate(GenerationRequest(**REQUEST)).images[0].image.tobytes() == before.tobytes()


@torch.no_grad()
def test_half_vae_that_overflows_is_redone_in_fp32(engine):
    model = engine.model
    original = model.vae
    try:
        vae = copy.deepcopy(original)
        vae.post_quant_conv.weight.mul_(1e4)        # weights fit fp16, activations do not: a NaN decode
        z = torch.full((1, 4, 8, 8), 50.0)
        vae.half()
        assert torch.isnan(vae.decode(z.half())).any()
        reference = copy.deepcopy(vae).float().decode(z).clamp(-1, 1)     # the same fp16 weights, in fp32
        model.vae = vae
        out = engine.decode_latents(z * model.family.latent_scale)
        assert torch.isfinite(out).all()
        assert next(model.vae.parameters()).dtype == torch.float32   # stays fp32 from now on
        torch.testing.assert_close(out.clamp(-1, 1), reference, rtol=0, atol=1e-4)
    finally:
        model.vae = original


def test_align_your_steps_uses_the_sdxl_table(engine):
    seen = []
    handle = engine.model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1][0].item()))
    try:
        engine.generate(GenerationRequest(**{**REQUEST, "steps": 10, "cfg_scale": 1.0,
                                             "scheduler": "align_your_steps"}))
    finally:
        handle.remove()
    sigmas = schedules.align_your_steps(engine.schedule, 10, sdxl=True)[:-1]
    expected = engine.schedule.sigma_to_t(sigmas).tolist()
    assert seen == pytest.approx(expected, abs=1e-4)
    assert schedules.align_your_steps(engine.schedule, 10)[1] != sigmas[1]     # not SD 1.5's table
    assert registry.effective_scheduler(registry.resolve("Euler")[0], "align_your_steps") == "align_your_steps"


def test_refiner_from_another_latent_space_is_refused(engine, files):
    with pytest.raises(CheckpointError, match="SD 1.x model cannot refine SDXL"):
        engine.generate(GenerationRequest(**REQUEST, refiner_checkpoint=str(files["sd1"])))
    assert engine.generate(GenerationRequest(**REQUEST)).images      # and the engine goes on
