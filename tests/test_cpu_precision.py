"""The CPU's default precision: bf16 where the processor computes it natively, fp32 elsewhere; its pictures
stay within 30 dB PSNR of fp32's (the demo model, four prompts, the ODE samplers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.engine import devices
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest
from webui.paths import DEMO_CHECKPOINT

FLAGS = "processor : 0\nflags : fpu sse2 avx2 avx512f {}\nmodel name : x\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert devices.cpu_has_native_bf16(FLAGS.format("avx512_bf16"))
    assert devices.cpu_has_native_bf16(FLAGS.format("amx_bf16"))
    assert not devices.cpu_has_native_bf16(FLAGS.format(""))
    assert not devices.cpu_has_native_bf16("")
    auto = devices.resolve_precision(torch.device("cpu"))
    assert auto.unet == (torch.bfloat16 if devices.cpu_has_native_bf16() else torch.float32)
    assert devices.resolve_precision(torch.device("cpu"), "full").unet == torch.float32
    assert devices.resolve_precision(torch.device("cpu"), no_half=True).unet == torch.float32


def _psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not shipped")
@pytest.mark.skipif(not devices.cpu_has_native_bf16(),
                    reason="bf16 is the default only where the processor has it natively (AVX512-BF16 / AMX); "
                           "emulated bf16 rounds otherwise (UniPC measured 28 dB on an AMD EPYC without it)")
def test_bf16_pictures_stay_within_30_db_of_fp32():
    prompts = ["a large red circle on a white background, top left", "a small blue square on a yellow background",
               "a green triangle on a black background, bottom right", "a large purple star on a white background"]
    engines = {p: Engine("cpu", p) for p in ("full", "bf16")}
    for engine in engines.values():
        engine.load(DEMO_CHECKPOINT)
    model = engines["bf16"].model
    assert next(model.unet.parameters()).dtype == next(model.vae.parameters()).dtype == torch.bfloat16
    assert next(model.text_model.parameters()).dtype == torch.float32     # runs once a job: kept exact
    # ODE samplers: ancestral ones re-inject noise at every step and amplify the rounding (Euler a on this small
    # model: 23-50 dB, measured; the README says so)
    for sampler in ("Euler", "DPM++ 2M", "UniPC", "DDIM"):
        for i, prompt in enumerate(prompts):
            request = dict(prompt=prompt, steps=20, width=64, height=64, seed=i, sampler_name=sampler)
            full, half = (engines[p].generate(GenerationRequest(**request)).images[0].image for p in ("full", "bf16"))
            assert _psnr(full, half) >= 30, (prompt, sampler, _psnr(full, half))
