"""Engine behaviour on tiny checkpoints: progress, interrupt / skip, precisions and file formats,
model switching memory, external VAEs, failed loads, and A1111's seed / noise semantics."""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import safetensors.torch
import torch

from tests.tiny import tiny_checkpoint
from tests.tiny_models import write_vae_file
from webui.engine import images as im
from webui.engine.control import JobControl
from webui.engine.files import CheckpointError
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest

W = H = 64
STEPS = 4
SEED = 1234


def request(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle", negative_prompt="blurry", steps=STEPS, seed=SEED, width=W, height=H,
                sampler_name="Euler")
    return GenerationRequest(**{**base, **kw})


def arr(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def max_diff(a, b) -> int:
    return int(np.abs(arr(a) - arr(b)).max())


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_ckpt):
    """``fp32``: the checkpoint the shared ``engine`` fixture (conftest.py) has loaded."""
    root = tmp_path_factory.mktemp("engine")
    return {"root": root, "fp32": tiny_ckpt, "other": tiny_checkpoint(root / "other.safetensors", seed=7)}


@pytest.fixture(scope="module")
def scratch():
    """A second fp32 engine for tests that load other files."""
    return Engine("cpu", "full")


class Recorder:
    """Progress callback keeping (iteration, step, total, iterations, latent, denoised); ``action(p)`` runs too."""

    def __init__(self, action=None):
        self.seen, self.action = [], action

    def __call__(self, p):
        self.seen.append(p)
        if self.action is not None:
            self.action(p)

    def steps(self, iteration):
        return [p.step for p in self.seen if p.iteration == iteration]


@pytest.fixture(scope="module")
def baseline(engine):
    """batch 2 x 2 iterations, run to the end with a recording callback."""
    rec = Recorder()
    result = engine.generate(request(batch_size=2, n_iter=2), progress=rec)
    return result, rec


# ------------------------------------------------------------------------------- progress / control

def test_progress_callback_reports_every_step_with_latent(baseline):
    result, rec = baseline
    assert [(p.iteration, p.step) for p in rec.seen] == [(i, s) for i in range(2) for s in range(1, STEPS + 1)]
    assert all(p.total == STEPS and p.iterations == 2 for p in rec.seen)
    for p in rec.seen:
        assert tuple(p.latent.shape) == (2, 4, H // 8, W // 8)
        assert tuple(p.denoised.shape) == (2, 4, H // 8, W // 8)
        assert torch.isfinite(p.latent).all()
    assert [i.seed for i in result.images] == [SEED, SEED + 1, SEED + 2, SEED + 3]
    assert not result.interrupted


def _decoded(engine, denoised):
    return [im.to_pil(x) for x in engine.decode_latents(denoised)]


def test_interrupt_keeps_the_current_batch_and_stops_the_job(engine, baseline):
    control = JobControl()
    rec = Recorder(lambda p: control.interrupt() if (p.iteration, p.step) == (0, 2) else None)
    result = engine.generate(request(batch_size=2, n_iter=2), progress=rec, control=control)
    assert result.interrupted
    assert [(p.iteration, p.step) for p in rec.seen] == [(0, 1), (0, 2)]       # later batches not run
    assert [i.seed for i in result.images] == [SEED, SEED + 1]                 # the current batch is kept
    # as A1111 (last_latent): the images are the prediction of x0 at the step the interrupt came after
    step2 = rec.seen[-1].denoised.clone()
    for got, want in zip(result.images, _decoded(engine, step2)):
        assert max_diff(got.image, want) == 0
    full, _ = baseline
    assert max_diff(result.images[0].image, full.images[0].image) > 0


def test_skip_ends_only_the_current_batch(engine, baseline):
    control = JobControl()
    rec = Recorder(lambda p: control.skip() if (p.iteration, p.step) == (0, 2) else None)
    result = engine.generate(request(batch_size=2, n_iter=2), progress=rec, control=control)
    full, _ = baseline
    assert not result.interrupted
    assert rec.steps(0) == [1, 2] and rec.steps(1) == list(range(1, STEPS + 1))
    assert [i.seed for i in result.images] == [i.seed for i in full.images]
    step2 = [p for p in rec.seen if (p.iteration, p.step) == (0, 2)][0].denoised
    for got, want in zip(result.images[:2], _decoded(engine, step2)):
        assert max_diff(got.image, want) == 0                                   # skipped batch: partial result
    for got, want in zip(result.images[2:], full.images[2:]):
        assert max_diff(got.image, want.image) == 0                             # next batch unaffected


def test_skip_at_the_last_step_does_not_skip_the_next_batch(engine, baseline):
    control = JobControl()
    rec = Recorder(lambda p: control.skip() if (p.iteration, p.step) == (0, STEPS) else None)
    result = engine.generate(request(batch_size=2, n_iter=2), progress=rec, control=control)
    full, _ = baseline
    assert rec.steps(1) == list(range(1, STEPS + 1))
    for got, want in zip(result.images, full.images):
        assert max_diff(got.image, want.image) == 0


# ------------------------------------------------------------------------------- files and precisions

@pytest.fixture(scope="module")
def reference(engine):
    return engine.generate(request()).images[0].image


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_files_load_into_fp32_engine(files, scratch, reference, dtype):
    path = tiny_checkpoint(files["root"] / f"tiny-{str(dtype)[6:]}.safetensors", dtype=dtype)
    scratch.load(path)
    unet_dtypes = {p.dtype for p in scratch.model.unet.parameters()}
    assert unet_dtypes == {torch.float32}
    image = scratch.generate(request()).images[0].image
    diff = np.abs(arr(image) - arr(reference))
    # only the stored weights were rounded (11 / 8 mantissa bits): measured mean 0.03 / 0.2, max 1 / 2
    assert diff.mean() <= (0.5 if dtype == torch.float16 else 1.0), diff.mean()
    assert diff.max() <= (4 if dtype == torch.float16 else 8), diff.max()


def test_ckpt_pickle_gives_the_same_image_as_safetensors(files, scratch, reference):
    path = tiny_checkpoint(files["root"] / "tiny.ckpt")
    scratch.load(path)
    assert max_diff(scratch.generate(request()).images[0].image, reference) == 0


def test_full_checkpoint_with_ema_uses_the_normal_weights(files, engine, scratch, reference):
    path = tiny_checkpoint(files["root"] / "tiny-full.safetensors", ema=True)
    assert any(k.startswith("model_ema.") for k in safetensors.torch.load_file(str(path)))
    scratch.load(path)
    assert max_diff(scratch.generate(request()).images[0].image, reference) == 0


def test_bf16_engine_on_cpu_runs_and_gives_a_finite_image(files, reference):
    eng = Engine("cpu", "bf16")
    eng.load(files["fp32"])
    assert {p.dtype for p in eng.model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in eng.model.vae.parameters()} == {torch.bfloat16}
    rec = Recorder()
    result = eng.generate(request(), progress=rec)
    assert torch.isfinite(rec.seen[-1].denoised).all()
    assert torch.isfinite(eng.decode_latents(rec.seen[-1].denoised)).all()
    diff = np.abs(arr(result.images[0].image) - arr(reference))
    assert arr(result.images[0].image).std() > 1                                 # not a blank image
    assert diff.mean() <= 4, diff.mean()                                          # measured 1.2 vs fp32


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_switching_checkpoints_does_not_grow_memory(tmp_path):
    a = tiny_checkpoint(tmp_path / "big-a.safetensors", model_channels=160)
    b = tiny_checkpoint(tmp_path / "big-b.safetensors", model_channels=160, seed=1)
    assert a.stat().st_size > 90e6
    eng = Engine("cpu", "full")
    levels = []
    for i in range(5):
        eng.load(a if i % 2 == 0 else b)
        gc.collect()
        levels.append(_rss_mb())
    assert eng.model.path == str(a)
    assert max(levels[1:]) <= levels[0] * 1.10, levels
    eng.unload()


# ------------------------------------------------------------------------------- external VAE

@pytest.mark.parametrize("prefix", [True, False], ids=["first_stage_model-prefix", "bare-keys"])
def test_set_vae_changes_the_decode_and_none_restores_it(files, engine, prefix):
    vae = write_vae_file(files["root"] / f"vae-{prefix}.safetensors", files["other"], prefix=prefix)
    latent = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(0))
    own = engine.decode_latents(latent)
    try:
        engine.set_vae(vae)
        assert engine.vae_path == vae
        external = engine.decode_latents(latent)
        assert (external - own).abs().max() > 0.05
    finally:
        engine.set_vae(None)
    assert engine.vae_path is None
    assert torch.equal(engine.decode_latents(latent), own)


# ------------------------------------------------------------------------------- failed load

def test_failed_load_keeps_the_previous_model(files, reference, tmp_path):
    eng = Engine("cpu", "full")
    eng.load(files["fp32"])
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        eng.load(bad)
    assert eng.model is not None and eng.model.path == str(files["fp32"])
    assert max_diff(eng.generate(request()).images[0].image, reference) == 0


def test_corrupt_file_raises_checkpoint_error(tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        Engine("cpu", "full").load(bad)


# ------------------------------------------------------------------------------- seeds and noise

def _a1111_uniform_sigmas(steps: int) -> np.ndarray:
    """k-diffusion's CompVisDenoiser.get_sigmas(steps) for SD's scaled-linear schedule (A1111 "Uniform")."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas).astype(np.float32).astype(np.float64)
    log_sigmas = np.log(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
    t = np.linspace(999, 0, steps)
    return np.append(np.exp(np.interp(t, np.arange(1000), log_sigmas)), 0.0)


def _draws(seed: int, count: int) -> list[torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(seed)
    return [torch.randn((4, H // 8, W // 8), generator=g) for _ in range(count)]


def test_initial_noise_is_a1111_cpu_randn_of_each_seed(engine):
    rec = Recorder()
    engine.generate(request(steps=2, batch_size=2, seed=SEED + 10), progress=rec)
    sigma_max = _a1111_uniform_sigmas(2)[0]
    x0 = rec.seen[0].latent.cpu()                 # k-diffusion reports x before the first step
    for b, seed in enumerate([SEED + 10, SEED + 11]):
        torch.testing.assert_close(x0[b] / sigma_max, _draws(seed, 1)[0], atol=2e-4, rtol=1e-4)


def test_ancestral_noise_continues_each_images_generator(engine):
    rec = Recorder()
    engine.generate(request(sampler_name="Euler a", steps=3, batch_size=2, seed=SEED + 20), progress=rec)
    s0, s1 = _a1111_uniform_sigmas(3)[:2]
    first, second = rec.seen[0], rec.seen[1]
    x0, den0, x1 = first.latent.double().cpu(), first.denoised.double().cpu(), second.latent.double().cpu()
    sigma_up = min(s1, math.sqrt(s1 ** 2 * (s0 ** 2 - s1 ** 2) / s0 ** 2))
    sigma_down = math.sqrt(s1 ** 2 - sigma_up ** 2)
    # Euler a: x1 = x0 + (x0 - den0) / s0 * (sigma_down - s0) + noise * sigma_up
    noise = (x1 - x0 - (x0 - den0) / s0 * (sigma_down - s0)) / sigma_up
    for b, seed in enumerate([SEED + 20, SEED + 21]):
        initial, step_noise = _draws(seed, 2)
        torch.testing.assert_close(x0[b].float() / s0, initial, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(noise[b].float(), step_noise, atol=2e-3, rtol=1e-3)
