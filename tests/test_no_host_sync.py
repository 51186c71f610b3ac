"""No host-device synchronisation inside the sampling loop, for every sampler and the engine's denoiser.

A GPU cannot be assumed here, so the test makes one: the latents are a ``DeviceTensor`` (a tensor subclass
that every torch operation keeps), and reading a value of such a tensor on the host -- ``.item()``,
``.cpu()``, ``.tolist()``, ``.numpy()``, ``bool()``, ``float()``, ``int()`` -- raises. The samplers'
per-step scalars are CPU tensors (host-side by design), so only a read of what the "device" computed
fails. The loop runs through the real engine (CFG, prompt schedules, refiner switch, hires fix's second
pass), only the sampling itself: the decode after it may sync.
"""
from __future__ import annotations

import pytest
import torch

from tests.tiny import tiny_checkpoint
from webui.engine.job_hooks import JobHooks
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest
from webui.engine.sampling import registry

_HOST_READS = {torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
               torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__}


class HostSync(RuntimeError):
    pass


class DeviceTensor(torch.Tensor):
    """A tensor that "lives on the device": reading its values on the host raises ``HostSync``."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _HOST_READS or (func is torch.Tensor.to and _to_cpu(args, kwargs)):
            raise HostSync(f"host read of a device tensor: {getattr(func, '__name__', func)}")
        return super().__torch_function__(func, types, args, kwargs or {})


def _to_cpu(args, kwargs) -> bool:
    targets = list(args[1:]) + list((kwargs or {}).values())
    return any((isinstance(t, str) and t.startswith("cpu")) or (isinstance(t, torch.device) and t.type == "cpu")
               for t in targets)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("nosync")
    return {"sd1": tiny_checkpoint(root / "sd1.safetensors"),
            "xl": tiny_checkpoint(root / "xl.safetensors", "sdxl"),
            "refiner": tiny_checkpoint(root / "refiner.safetensors", "sdxl-refiner")}


def _on_device(apply, x, sigmas):
    """A sample wrapper (``JobPatches.sample_wrappers``): the loop's starting latent as a DeviceTensor; the result
    handed back as a plain tensor for the decode, as a real device's would be read after the loop."""
    latents = apply(x.as_subclass(DeviceTensor), sigmas)
    assert isinstance(latents, DeviceTensor)            # the loop really ran on "device" tensors
    return latents.as_subclass(torch.Tensor)


@pytest.fixture
def on_device():
    """Job hooks that run every pass's sampler loop (txt2img, img2img, hires pass, refiner) on "device" tensors."""
    return JobHooks(prepare=[lambda ctx: ctx.patches.sample_wrappers.append(_on_device)])


def test_the_fake_device_catches_host_reads():
    x = torch.ones(2).as_subclass(DeviceTensor)
    for read in (lambda: (x * 2).sum().item(), lambda: bool((x > 0).all()), lambda: x.cpu(), lambda: x.tolist(),
                 lambda: float(x[0]), lambda: x.to("cpu")):
        with pytest.raises(HostSync):
            read()
    assert isinstance(torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3).as_subclass(DeviceTensor),
                                                 torch.ones(1, 1, 1, 1)), DeviceTensor)


@pytest.mark.parametrize("sampler", [s.name for s in registry.SAMPLERS])
def test_every_sampler_runs_without_host_reads(files, on_device, sampler):
    engine = Engine("cpu", "full")
    engine.load(files["sd1"])
    base = dict(prompt="a [red:blue:2] cat AND a dog", negative_prompt="blurry", steps=4, width=64, height=64, seed=3,
                sampler_name=sampler)
    engine.generate(GenerationRequest(**base), hooks=on_device)
    first = engine.generate(GenerationRequest(**base), hooks=on_device).images[0].image
    engine.generate(GenerationRequest(**base, init_image=first, denoising_strength=0.6), hooks=on_device)


def test_sdxl_refiner_hires_and_parameters_run_without_host_reads(files, on_device):
    engine = Engine("cpu", "full")
    engine.load(files["xl"])
    base = dict(prompt="a cat", negative_prompt="", steps=4, width=64, height=64, seed=3)
    result = engine.generate(GenerationRequest(**base, refiner_checkpoint=str(files["refiner"]), refiner_switch_at=0.5),
                             hooks=on_device)
    assert result.refiner_switched
    engine.generate(GenerationRequest(**base, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (bicubic)"),
                    hooks=on_device)
    engine.generate(GenerationRequest(**base, sampler_name="Euler", s_churn=1.0, subseed=9, subseed_strength=0.4,
                                      tiling=True), hooks=on_device)
    engine.generate(GenerationRequest(**base, sampler_name="Euler a", eta=0.5, cfg_scale=1.0), hooks=on_device)
