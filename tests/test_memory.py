"""Memory modes (--medvram / --lowvram / auto), fp8 weight storage, torch.compile and kept checkpoints
(A1111's sd_checkpoints_limit), on tiny checkpoints and the CPU.

On a CPU the offload and compute devices are the same, so these tests check what the modes do that does not
depend on a second device: the hooks bring each network (medvram) or each block (lowvram: as a copy, even on
the CPU) before it runs, put everything back after (also when a call raises), and draw the same pictures.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.tiny import tiny_checkpoint
from webui.engine import memory
from webui.engine.layers import FP8, Conv2d, Linear
from webui.engine.patches import WeightPatch
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest
from webui.engine.job_hooks import JobHooks
from webui.paths import DEMO_CHECKPOINT

GiB = 2**30


def request(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle", negative_prompt="blurry", steps=3, seed=11, width=64, height=64,
                sampler_name="Euler", batch_size=2)
    return GenerationRequest(**{**base, **kw})


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(i.image.convert("RGB"), np.int16) for i in result.images]


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    return {"a": tiny_checkpoint(root / "a.safetensors"),
            "b": tiny_checkpoint(root / "b.safetensors", seed=4),
            "c": tiny_checkpoint(root / "c.safetensors", seed=5)}


@pytest.fixture(scope="module")
def baseline(files):
    engine = Engine("cpu", "full", memory="normal")
    engine.load(files["a"])
    init = pixels(engine.generate(request()))[0].astype(np.uint8)
    from PIL import Image
    img2img = request(init_image=Image.fromarray(init), denoising_strength=0.6)
    return {"txt2img": engine.generate(request()), "img2img": engine.generate(img2img), "img2img_request": img2img}


def test_auto_mode_chooses_from_free_vram_as_documented():
    sizes = {"text": 250 * 2**20, "unet": 1640 * 2**20, "vae": 160 * 2**20}   # SD 1.5 in fp16
    working = memory.working_memory(512)
    assert working == int(1.5 * GiB) and memory.working_memory(1024) == 4 * GiB
    assert memory.choose_memory_mode(8 * GiB, sizes, working) == "normal"
    assert memory.choose_memory_mode(3.3 * GiB, sizes, working) == "medvram"   # all: 3.5 GiB, UNet alone: 3.1
    assert memory.choose_memory_mode(2 * GiB, sizes, working) == "lowvram"
    with pytest.raises(ValueError, match="memory mode"):
        Engine("cpu", memory="tiny")


def test_on_a_cpu_auto_is_normal(files):
    engine = Engine("cpu", "full")
    engine.load(files["a"])
    assert engine.memory_mode == "normal" and not engine.offloader.attached


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_the_modes_draw_the_same_pictures(files, baseline, mode):
    engine = Engine("cpu", "full", memory=mode)
    engine.load(files["a"])
    assert engine.memory_mode == mode and engine.offloader.attached
    assert same(engine.generate(request()), baseline["txt2img"])
    assert same(engine.generate(baseline["img2img_request"]), baseline["img2img"])


def test_medvram_brings_each_network_before_it_runs(files):
    engine = Engine("cpu", "full", memory="medvram")
    model = engine.load(files["a"])
    seen = []
    probes = {"text": model.text_model, "unet": model.unet, "vae": model.vae.decoder}
    for name, module in probes.items():       # registered after the offloader's hooks: run after them
        module.register_forward_pre_hook(lambda *_a, name=name: seen.append((name, engine.offloader.resident)))
    engine.generate(request(steps=2))
    assert seen and all(name == resident for name, resident in seen), seen
    order = [name for i, (name, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != name]
    assert order == ["text", "unet", "vae"], order          # one turn each: no back and forth


def test_lowvram_runs_each_block_on_copies_and_puts_the_originals_back(files, baseline):
    engine = Engine("cpu", "full", memory="lowvram")
    model = engine.load(files["a"])
    before = {name: p.data_ptr() for name, p in model.unet.named_parameters()}
    block = model.unet.input_blocks[1]
    weight = next(block.parameters())
    inside = []
    block.register_forward_pre_hook(lambda *_a: inside.append(weight.data_ptr()))
    engine.generate(request(steps=2))
    assert inside and all(ptr != before[next(n for n, p in model.unet.named_parameters() if p is weight)]
                          for ptr in inside)
    assert {name: p.data_ptr() for name, p in model.unet.named_parameters()} == before

    calls = {"n": 0}

    def fail(*_a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
    handle = model.unet.middle_block.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        engine.generate(request())
    handle.remove()
    assert {name: p.data_ptr() for name, p in model.unet.named_parameters()} == before
    assert same(engine.generate(request()), baseline["txt2img"])


def test_lowvram_blocks_cover_the_networks_in_small_pieces(files):
    engine = Engine("cpu", "full", memory="normal")
    model = engine.load(files["a"])
    for network in (model.unet, model.vae, model.text_model):
        total = memory.weight_bytes([network])
        limit = total // 16
        pieces = list(memory.blocks(network, limit))
        ids = [id(t) for b in pieces for t in [*b.parameters(), *b.buffers()]]
        assert len(ids) == len(set(ids))                         # no tensor in two blocks
        assert sum(memory.weight_bytes([b]) for b in pieces) >= 0.95 * total
        assert all(memory.weight_bytes([b]) <= limit or not any(True for _ in b.children()) for b in pieces)


def test_fp8_stores_the_unets_weights_in_float8_and_computes_in_the_models_dtype(files, baseline):
    engine = Engine("cpu", "bf16", fp8=True)
    model = engine.load(files["a"])
    layers = [m for m in model.unet.modules() if isinstance(m, (Linear, Conv2d))]
    assert layers and all(m.weight.dtype == FP8 for m in layers)
    assert all(m.bias is None or m.bias.dtype == torch.bfloat16 for m in layers)
    assert model.unet.dtype == torch.bfloat16
    plain = Engine("cpu", "bf16")
    plain_model = plain.load(files["a"])
    assert memory.weight_bytes([model.unet]) < 0.6 * memory.weight_bytes([plain_model.unet])
    result = engine.generate(request())
    diff = max(int(np.abs(a - b).max()) for a, b in zip(pixels(result), pixels(plain.generate(request()))))
    assert 0 < diff < 128                     # rounded weights: close to bf16's picture, not the same


def test_fp8_keeps_weight_patches_exact_to_restore(files):
    engine = Engine("cpu", "bf16", fp8=True)
    model = engine.load(files["a"])
    module = "input_blocks.1.1.proj_in"
    original = model.unet.get_submodule(module).weight.detach().clone()
    patch = WeightPatch("unet", module, lambda w: torch.ones_like(w) * 0.5, 1.0)
    hooks = JobHooks(prepare=[lambda ctx: ctx.patches.weights.append(patch)])
    patched = engine.generate(request(), hooks=hooks)
    assert torch.equal(model.unet.get_submodule(module).weight.detach().view(torch.uint8), original.view(torch.uint8))
    assert not same(patched, engine.generate(request()))


@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not shipped")
def test_fp8_pictures_stay_close_to_bf16_on_the_demo_model():
    engines = {fp8: Engine("cpu", "bf16", fp8=fp8) for fp8 in (False, True)}
    for engine in engines.values():
        engine.load(DEMO_CHECKPOINT)
    for i, prompt in enumerate(["a large red circle on a white background, top left",
                                "a small blue square on a yellow background"]):
        r = GenerationRequest(prompt=prompt, steps=20, width=64, height=64, seed=i, sampler_name="DPM++ 2M")
        a, b = (np.asarray(engines[k].generate(r).images[0].image, np.float64) for k in (False, True))
        psnr = 10 * np.log10(255 ** 2 / max(((a - b) ** 2).mean(), 1e-9))
        assert psnr >= 35, (prompt, psnr)          # measured 46-50 dB


def test_kept_checkpoints_switch_back_without_reading_the_file(files, baseline):
    engine = Engine("cpu", "full")
    engine.checkpoints_limit = 2
    first = engine.load(files["a"])
    patch = WeightPatch("unet", "out.2", lambda w: torch.ones_like(w), 1.0, key="kept")   # stays merged
    engine.generate(request(), hooks=JobHooks(prepare=[lambda ctx: ctx.patches.weights.append(patch)]))
    engine.load(files["b"])
    assert engine.kept_checkpoints == [str(files["a"])]
    b_pictures = engine.generate(request())

    path = files["a"]
    data, stat = path.read_bytes(), path.stat()
    path.write_bytes(bytes(len(data)))      # reading it now fails; its identity (size, mtime) is as before
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    try:
        assert engine.load(files["a"]) is first
        assert same(engine.generate(request()), baseline["txt2img"])       # the patch was taken off before keeping
        engine.load(files["b"])
        assert same(engine.generate(request()), b_pictures)
    finally:
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    engine.load(files["c"])                       # limit 2: c resident, b kept, a (least recent) freed
    assert [p.endswith("b.safetensors") for p in engine.kept_checkpoints] == [True]
    engine.unload()
    assert engine.kept_checkpoints == []


def test_limit_one_frees_the_previous_model(files):
    engine = Engine("cpu", "full")
    engine.load(files["a"])
    engine.load(files["b"])
    assert engine.kept_checkpoints == []


def test_compile_draws_the_same_pictures(files, baseline):
    pytest.importorskip("torch._inductor")
    from torch._dynamo.utils import counters
    engine = Engine("cpu", "full", compile=True)
    model = engine.load(files["a"])
    assert getattr(model.unet, "_compiled_call_impl", None) is not None
    graphs = counters["stats"]["unique_graphs"]
    result = engine.generate(request())
    assert counters["stats"]["unique_graphs"] > graphs          # dynamo really compiled the UNet's forward
    diff = max(int(np.abs(a - b).max()) for a, b in zip(pixels(result), pixels(baseline["txt2img"])))
    assert diff <= 2, diff
