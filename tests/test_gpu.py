"""On a CUDA device only (skipped elsewhere; ``bench/gpu.sh`` runs it): fp16 pictures match the CPU's fp32
ones, the sampling loop never synchronises with the host (torch's own sync debug mode), and the memory modes,
fp8 storage and torch.compile work and lower what they promise.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_memory import pixels
from tests.test_memory import request as memory_request
from tests.tiny import tiny_checkpoint
from webui.engine.job_hooks import JobHooks
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest
from webui.engine.sampling import registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def request(**kw) -> GenerationRequest:
    """``tests/test_memory.py``'s request (a red circle, 64x64, Euler, batch of 2) with 4 steps and seed 3."""
    return memory_request(**{"steps": 4, "seed": 3, **kw})


def max_diff(a, b) -> int:
    return max(int(np.abs(x - y).max()) for x, y in zip(pixels(a), pixels(b)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("gpu") / "tiny.safetensors", model_channels=64)


@pytest.fixture(scope="module")
def cpu_result(ckpt):
    engine = Engine("cpu", "full")
    engine.load(ckpt)
    return engine.generate(request())


def test_fp16_on_cuda_matches_the_cpu(ckpt, cpu_result):
    engine = Engine("cuda", "auto")
    engine.load(ckpt)
    assert engine.model.unet.dtype == torch.float16
    assert max_diff(engine.generate(request()), cpu_result) <= 4


@pytest.mark.parametrize("sampler", [s.name for s in registry.SAMPLERS])
def test_the_sampling_loop_never_syncs(ckpt, sampler):
    def strict(apply, x, sigmas):           # a sample wrapper: the loop runs in torch's sync debug mode
        torch.cuda.set_sync_debug_mode("error")
        try:
            return apply(x, sigmas)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    engine = Engine("cuda", "half")
    engine.load(ckpt)
    engine.generate(request(sampler_name=sampler, steps=3),
                    hooks=JobHooks(prepare=[lambda ctx: ctx.patches.sample_wrappers.append(strict)]))


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_memory_modes_hold_less_and_draw_the_same(ckpt, mode):
    results, peaks = {}, {}
    for m in ("normal", mode):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        engine = Engine("cuda", "half", memory=m)
        engine.load(ckpt)
        results[m] = engine.generate(request())
        peaks[m] = torch.cuda.max_memory_allocated()
        del engine
    assert max_diff(results["normal"], results[mode]) <= 1
    assert peaks[mode] < peaks["normal"]


def test_fp8_and_compile(ckpt, cpu_result):
    fp8 = Engine("cuda", "half", fp8=True)
    fp8.load(ckpt)
    assert max_diff(fp8.generate(request()), cpu_result) <= 64
    compiled = Engine("cuda", "half", compile=True)
    compiled.load(ckpt)
    assert max_diff(compiled.generate(request()), cpu_result) <= 4
