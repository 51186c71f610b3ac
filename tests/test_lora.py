"""The LoRA extension through the hook: tags, multipliers, several LoRAs, each format, warnings,
infotext, bit-exact restore after 100 cycles, no re-merge for the same set, the list API.

Expected images come from merging ΔW into the weights by hand (``W + m·ΔW``, the formula the files
define, checked against each format's definition in tests/test_lora_formats.py and against diffusers
there); here the question is whether the extension applies exactly that, for the job only.
"""
from __future__ import annotations

import hashlib

import pytest
import safetensors.torch
import torch

from extensions.lora import formats, weight_patches
from webui.engine.patches import JobPatches, ModelPatcher
from webui.engine.request import GenerationRequest
from webui.hooks.registry import ExtensionManager
from webui.options import Options
from webui.paths import PROJECT_ROOT, Paths, file_identity
from webui.jobs.parameters import extra_params

ATTN = "input_blocks.1.1.transformer_blocks.0.attn2"


def _rand(gen, *shape, scale=0.3):
    return torch.randn(*shape, generator=gen) * scale


def kohya(gen, model) -> dict:
    """kohya keys, diffusers-named UNet modules (as SD1 LoRAs are), a 3x3 LoCon conv and text modules."""
    sd = {}
    for key, (target, path) in {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": ("unet", f"{ATTN}.to_k"),
                                "lora_unet_down_blocks_0_attentions_0_proj_in": ("unet", "input_blocks.1.1.proj_in"),
                                "lora_unet_down_blocks_0_resnets_0_conv1": ("unet", "input_blocks.1.0.in_layers.2"),
                                "lora_te_text_model_encoder_layers_0_self_attn_q_proj":
                                    ("text", "encoder.layers.0.self_attn.q_proj")}.items():
        w = (model.unet if target == "unet" else model.text_model).get_submodule(path).weight
        down_shape = (4, w.shape[1], *w.shape[2:])
        up_shape = (w.shape[0], 4, *([1] * (w.ndim - 2)))
        sd[f"{key}.lora_down.weight"] = _rand(gen, *down_shape)
        sd[f"{key}.lora_up.weight"] = _rand(gen, *up_shape)
        sd[f"{key}.alpha"] = torch.tensor(2.0)
    return sd


def loha(gen, model) -> dict:
    w = model.unet.get_submodule(f"{ATTN}.to_q").weight
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q"           # LDM-named
    return {f"{key}.hada_w1_a": _rand(gen, w.shape[0], 2), f"{key}.hada_w1_b": _rand(gen, 2, w.shape[1]),
            f"{key}.hada_w2_a": _rand(gen, w.shape[0], 2), f"{key}.hada_w2_b": _rand(gen, 2, w.shape[1]),
            f"{key}.alpha": torch.tensor(1.0)}


def lokr(gen, model) -> dict:
    w = model.unet.get_submodule(f"{ATTN}.to_v").weight                           # (out, in) = (32, 64)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    return {f"{key}.lokr_w1": _rand(gen, 4, 8), f"{key}.lokr_w2_a": _rand(gen, w.shape[0] // 4, 2),
            f"{key}.lokr_w2_b": _rand(gen, 2, w.shape[1] // 8), f"{key}.alpha": torch.tensor(1.0)}


def peft(gen, model) -> dict:
    w = model.unet.get_submodule(f"{ATTN}.to_out.0").weight
    base = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"
    return {f"{base}.lora_A.weight": _rand(gen, 4, w.shape[1]), f"{base}.lora_B.weight": _rand(gen, w.shape[0], 4)}


@pytest.fixture(scope="module")
def env(tmp_path_factory, make_engine, tiny_ckpt):
    root = tmp_path_factory.mktemp("lora")
    engine = make_engine(tiny_ckpt)
    folder = root / "models" / "lora"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for name, build in (("style", kohya), ("loha", loha), ("lokr", lokr), ("peft", peft)):
        sd = build(gen, engine.model)
        if name == "style":
            sd["lora_unet_no_such_module.lora_down.weight"] = torch.zeros(4, 4)
        safetensors.torch.save_file(sd, str(folder / f"{name}.safetensors"), metadata={"ss_network_dim": "4"})
    manager = ExtensionManager(PROJECT_ROOT / "extensions", Paths(root=root), Options(root / "config.json"),
                               lambda m: None)
    manager.load()
    assert manager.extensions["lora"].state == "loaded", manager.extensions["lora"].errors
    return {"engine": engine, "manager": manager, "folder": folder}


def job(prompt: str, steps: int = 4) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, negative_prompt="blurry", width=64, height=64, steps=steps, seed=3)


def generate(env, prompt: str, steps: int = 4):
    return env["engine"].generate(job(prompt, steps), hooks=env["manager"].job_hooks())


def by_hand(env, prompt: str, merges: list[tuple[str, float, float]]):
    """The image with ΔW merged into the weights directly, then the weights put back."""
    engine = env["engine"]
    model = engine.model
    engine.restore_weights()
    saved = {k: v.clone() for k, v in model.unet.state_dict().items()}
    saved_text = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    try:
        with torch.no_grad():
            for name, te, unet in merges:
                lora = formats.read_lora(env["folder"] / f"{name}.safetensors", model.unet, model.text_model)
                for m in lora.modules:
                    net = model.unet if m.target == "unet" else model.text_model
                    param = net.get_submodule(m.module).weight
                    param.copy_(param.float() + (te if m.target == "text" else unet) * m.delta(param.float()))
        return engine.generate(job(prompt)).images[0].image
    finally:
        model.unet.load_state_dict(saved)
        model.text_model.load_state_dict(saved_text)


@pytest.mark.parametrize("name", ["style", "loha", "lokr", "peft"])
def test_each_format_changes_the_image_exactly_as_its_delta_says(env, name):
    result = generate(env, f"a red cat <lora:{name}:0.7>")
    plain = generate(env, "a red cat")
    expected = by_hand(env, "a red cat", [(name, 0.7, 0.7)])
    assert result.images[0].image.tobytes() == expected.tobytes()
    assert result.images[0].image.tobytes() != plain.images[0].image.tobytes()


def test_separate_text_and_unet_weights_and_several_loras(env):
    result = generate(env, "a red cat <lora:style:0:1.2> <lora:peft:0.5>")
    expected = by_hand(env, "a red cat", [("style", 0.0, 1.2), ("peft", 0.5, 0.5)])
    assert result.images[0].image.tobytes() == expected.tobytes()
    named = generate(env, "a red cat <lora:style:te=0:unet=1.2> <lora:peft:0.5>")
    assert named.images[0].image.tobytes() == expected.tobytes()


def test_warnings_and_infotext(env):
    result = generate(env, "a red cat <lora:style:1> <lora:missing:1> <lora:peft:x>")
    text = " | ".join(result.warnings)
    assert "no LoRA named 'missing'" in text and "LoRA style:" in text and "lora_unet_no_such_module" in text
    assert "must be numbers" in text
    digest = hashlib.sha256((env["folder"] / "style.safetensors").read_bytes()).hexdigest()[:12]
    assert extra_params(result.facts)["Lora hashes"] == f"style: {digest}"
    assert result.images[0].prompt == "a red cat <lora:style:1> <lora:missing:1> <lora:peft:x>"


def test_after_100_apply_restore_cycles_the_weights_are_bit_identical(env):
    engine = env["engine"]
    model = engine.model
    engine.restore_weights()
    unet = {k: v.clone() for k, v in model.unet.state_dict().items()}
    text = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    patcher = ModelPatcher()
    files = {name: formats.read_lora(env["folder"] / f"{name}.safetensors", model.unet, model.text_model)
             for name in ("style", "loha", "lokr", "peft")}
    for cycle in range(100):
        patches = []
        for name, lora in files.items():
            strength = 0.1 + (cycle % 7) / 3
            patches += weight_patches(lora, file_identity(env["folder"] / f"{name}.safetensors"), strength, -strength)
        with patcher.applied(model, JobPatches(weights=patches)):
            pass
        assert not torch.equal(model.unet.get_submodule(f"{ATTN}.to_k").weight, unet[f"{ATTN}.to_k.weight"])
    patcher.restore(model)
    assert all(torch.equal(v, unet[k]) for k, v in model.unet.state_dict().items())
    assert all(torch.equal(v, text[k]) for k, v in model.text_model.state_dict().items())
    # and through jobs: a LoRA job, then a plain one, leaves the weights as they were
    generate(env, "a red cat <lora:style:1>")
    generate(env, "a red cat")
    assert all(torch.equal(v, unet[k]) for k, v in model.unet.state_dict().items())


def test_the_same_set_on_consecutive_jobs_is_not_merged_again(env, monkeypatch):
    calls = []
    original = formats.LoraModule.delta

    def counting(self, weight):
        calls.append(self.module)
        return original(self, weight)
    monkeypatch.setattr(formats.LoraModule, "delta", counting)
    generate(env, "a cat <lora:style:0.5>", steps=1)
    first = len(calls)
    generate(env, "a dog <lora:style:0.5>", steps=1)
    assert first > 0 and len(calls) == first                 # kept merged
    generate(env, "a dog <lora:style:0.6>", steps=1)
    assert len(calls) == 2 * first                           # another strength: merged again


def test_lora_list_in_a1111_shape(env):
    listing = env["manager"].lister("lora")()
    by_name = {item["name"]: item for item in listing}
    assert set(by_name) >= {"style", "loha", "lokr", "peft"}
    assert by_name["style"]["metadata"]["ss_network_dim"] == "4" and by_name["style"]["path"].endswith("style.safetensors")
