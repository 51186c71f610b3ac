"""LoRA-family files -> weight deltas (extensions/lora/formats.py).

Each format's deltas are checked against the format's definition written out here in another form
(per kernel position, explicit Kronecker blocks), module names against a hand-written table, and a
kohya file end to end against diffusers' own LoRA loader on the same tiny checkpoint.
"""
from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch

from extensions.lora.formats import LoraFile, LoraModule, parse_lora, read_lora
from tests.tiny_models import diffusers_config_dir
from webui.engine.checkpoint import load_checkpoint
from webui.engine.files import CheckpointError

RANK = 4

# diffusers module path (as SD1 kohya files spell it) -> our (LDM) module path, written out by hand
UNET_MODULES = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k": "input_blocks.1.1.transformer_blocks.0.attn1.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v": "input_blocks.1.1.transformer_blocks.0.attn1.to_v",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0":
        "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.proj_in": "input_blocks.1.1.proj_in",                     # 1x1 conv
    "down_blocks.1.resnets.0.conv1": "input_blocks.3.0.in_layers.2",                      # 3x3 conv, 32 -> 64
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v": "middle_block.1.transformer_blocks.0.attn2.to_v",
    "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj":
        "output_blocks.1.1.transformer_blocks.0.ff.net.0.proj",
    "up_blocks.1.resnets.1.conv_shortcut": "output_blocks.3.0.skip_connection",          # 1x1 conv, 64 -> 32
}
# as LoRA files spell it (with the "text_model." level) -> our path in transformers 5's CLIPTextModel
TEXT_MODULES = {
    "text_model.encoder.layers.0.self_attn.q_proj": "encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.1.mlp.fc1": "encoder.layers.1.mlp.fc1",
}


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_checkpoint(tiny_ckpt)


def _weight(model, target: str, path: str) -> torch.Tensor:
    return (model.unet if target == "unet" else model.text_model).get_submodule(path).weight


def _randn(gen, *shape, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).contiguous()


def _by_module(lora: LoraFile) -> dict[tuple[str, str], object]:
    return {(m.target, m.module): m for m in lora.modules}


def _save(path, sd, metadata=None):
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def _kohya_pair(gen, weight, rank=RANK, scale=0.3):
    """(down, up) as kohya writes them: Linear (r, in)/(out, r); conv (r, in, kh, kw)/(out, r, 1, 1)."""
    if weight.ndim == 2:
        return _randn(gen, rank, weight.shape[1], scale=scale), _randn(gen, weight.shape[0], rank, scale=scale)
    return (_randn(gen, rank, *weight.shape[1:], scale=scale), _randn(gen, weight.shape[0], rank, 1, 1, scale=scale))


def _conventional(up, down, weight):
    """ΔW of a down/up pair, per kernel position: ΔW[:, :, h, w] = up · down[:, :, h, w]."""
    if weight.ndim == 2:
        return up @ down
    out = torch.empty(weight.shape)
    for h in range(weight.shape[2]):
        for w in range(weight.shape[3]):
            out[:, :, h, w] = up[:, :, 0, 0] @ down[:, :, h, w]
    return out


# ------------------------------------------------------------------------------------------ kohya

def _kohya_file(model, gen, spelling):
    """A kohya LoRA on every table module, named the diffusers way or the LDM way; returns the state dict
    and {(target, our path): expected ΔW}. Alphas: 2.0 or 6.0, and none (scale 1) on two modules."""
    sd, expected = {}, {}
    no_alpha = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v", "text_model.encoder.layers.1.mlp.fc1"}
    cases = [("unet", d, ours) for d, ours in UNET_MODULES.items()] + [("text", f, o) for f, o in TEXT_MODULES.items()]
    for i, (target, diffusers_name, ours) in enumerate(cases):
        weight = _weight(model, target, ours)
        down, up = _kohya_pair(gen, weight)
        if target == "text":
            name = "lora_te_" + diffusers_name.replace(".", "_")
        else:
            name = "lora_unet_" + (diffusers_name if spelling == "diffusers" else ours).replace(".", "_")
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        scale = 1.0
        if diffusers_name not in no_alpha:
            alpha = 2.0 if i % 2 else 6.0
            sd[f"{name}.alpha"] = torch.tensor(alpha)
            scale = alpha / RANK
        expected[(target, ours)] = _conventional(up, down, weight) * scale
    return sd, expected


def test_kohya_lora_names_and_deltas(tmp_path, model):
    results = {}
    for spelling in ("diffusers", "ldm"):
        sd, expected = _kohya_file(model, torch.Generator().manual_seed(1), spelling)
        path = _save(tmp_path / f"{spelling}.safetensors", sd, {"ss_network_dim": str(RANK)})
        lora = read_lora(path, model.unet, model.text_model)
        assert lora.unknown_keys == [] and lora.mismatched == []
        assert lora.metadata["ss_network_dim"] == str(RANK)
        modules = _by_module(lora)
        assert set(modules) == set(expected)  # each key resolved to the hand-written module path
        for key, module in modules.items():
            assert module.kind == "lora"
            delta = module.delta(_weight(model, *key))
            assert delta.dtype == torch.float32 and delta.shape == _weight(model, *key).shape
            torch.testing.assert_close(delta, expected[key], rtol=1e-5, atol=1e-6)
        results[spelling] = {key: m.delta(_weight(model, *key)) for key, m in modules.items()}
    # the same tensors under diffusers and LDM names: same modules, same deltas
    assert results["diffusers"].keys() == results["ldm"].keys()
    for key in results["diffusers"]:
        torch.testing.assert_close(results["diffusers"][key], results["ldm"][key], rtol=0, atol=0)


def test_locon_tucker_mid(model):
    """LyCORIS LoCon with a tucker core: down (r, in, 1, 1), mid (r, r, 3, 3), up (out, r, 1, 1)."""
    gen = torch.Generator().manual_seed(2)
    weight = _weight(model, "unet", "input_blocks.3.0.in_layers.2")
    down, mid, up = _randn(gen, RANK, 32, 1, 1), _randn(gen, RANK, RANK, 3, 3), _randn(gen, 64, RANK, 1, 1)
    name = "lora_unet_down_blocks_1_resnets_0_conv1"
    lora = parse_lora({f"{name}.lora_down.weight": down, f"{name}.lora_mid.weight": mid,
                       f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.0)}, model.unet, model.text_model)
    (module,) = lora.modules
    expected = torch.empty(weight.shape)
    for h in range(3):
        for w in range(3):
            expected[:, :, h, w] = up[:, :, 0, 0] @ mid[:, :, h, w] @ down[:, :, 0, 0]
    torch.testing.assert_close(module.delta(weight), expected * (1.0 / RANK), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- LoHa

def test_loha_deltas(model):
    gen = torch.Generator().manual_seed(3)
    sd, expected = {}, {}
    for name, ours, alpha in [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
         "input_blocks.1.1.transformer_blocks.0.attn2.to_k", 2.0),
        ("lora_unet_down_blocks_1_resnets_0_conv1", "input_blocks.3.0.in_layers.2", None),  # 3x3, no alpha
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "encoder.layers.0.self_attn.q_proj", 8.0),
    ]:
        target = "text" if name.startswith("lora_te_") else "unet"
        weight = _weight(model, target, ours)
        cols = weight[0].numel()  # LyCORIS flattens a conv kernel into the columns
        w1a, w1b = _randn(gen, weight.shape[0], RANK), _randn(gen, RANK, cols)
        w2a, w2b = _randn(gen, weight.shape[0], RANK), _randn(gen, RANK, cols)
        sd |= {f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b, f"{name}.hada_w2_a": w2a, f"{name}.hada_w2_b": w2b}
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(alpha)
        hadamard = torch.einsum("or,rc,os,sc->oc", w1a, w1b, w2a, w2b)  # Σ_r w1a w1b · Σ_s w2a w2b
        expected[(target, ours)] = hadamard.reshape(weight.shape) * (alpha / RANK if alpha else 1.0)
    # a tucker LoHa on the 3x3 conv of the middle block: a (r, out), b (r, in), t (r, r, 3, 3)
    name, ours = "lora_unet_mid_block_resnets_0_conv2", "middle_block.0.out_layers.3"
    t = {}
    for i in ("1", "2"):
        t |= {f"hada_w{i}_a": _randn(gen, RANK, 64), f"hada_w{i}_b": _randn(gen, RANK, 64),
              f"hada_t{i}": _randn(gen, RANK, RANK, 3, 3)}
    sd |= {f"{name}.{p}": v for p, v in t.items()} | {f"{name}.alpha": torch.tensor(2.0)}
    factors = []
    for i in ("1", "2"):
        full = torch.empty(64, 64, 3, 3)
        for h in range(3):
            for w in range(3):
                full[:, :, h, w] = t[f"hada_w{i}_a"].T @ t[f"hada_t{i}"][:, :, h, w] @ t[f"hada_w{i}_b"]
        factors.append(full)
    expected[("unet", ours)] = factors[0] * factors[1] * (2.0 / RANK)

    lora = parse_lora(sd, model.unet, model.text_model)
    assert lora.unknown_keys == [] and lora.mismatched == []
    _check(lora, expected, model, "loha", atol=1e-5)


# ------------------------------------------------------------------------------------------- LoKr

def _kron_blocks(w1, w2):
    """kron written out: block (i, j) of the result is w1[i, j] * w2 (w2 may carry a conv kernel)."""
    rows = [torch.cat([w1[i, j] * w2 for j in range(w1.shape[1])], dim=1) for i in range(w1.shape[0])]
    return torch.cat(rows, dim=0)


def test_lokr_deltas(model):
    gen = torch.Generator().manual_seed(4)
    q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # 64 x 64
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # 32 x 64
    fc1 = "lora_te_text_model_encoder_layers_1_mlp_fc1"                          # 256 x 64
    conv = "lora_unet_down_blocks_1_resnets_0_conv2"                             # 64 x 64 x 3 x 3
    conv_t = "lora_unet_up_blocks_0_resnets_0_conv1"                             # 64 x 128 x 3 x 3
    w1_q, w2a_q, w2b_q = _randn(gen, 4, 8), _randn(gen, 16, 2), _randn(gen, 2, 8)
    w1_k, w2_k = _randn(gen, 2, 4), _randn(gen, 16, 16)
    w1a_f, w1b_f, w2_f = _randn(gen, 8, 2), _randn(gen, 2, 4), _randn(gen, 32, 16)
    w1_c, w2_c = _randn(gen, 4, 4), _randn(gen, 16, 16, 3, 3)
    w1_t, w2a_t, w2b_t, t2 = _randn(gen, 4, 8), _randn(gen, 2, 16), _randn(gen, 2, 16), _randn(gen, 2, 2, 3, 3)
    sd = {f"{q}.lokr_w1": w1_q, f"{q}.lokr_w2_a": w2a_q, f"{q}.lokr_w2_b": w2b_q, f"{q}.alpha": torch.tensor(1.0),
          f"{k}.lokr_w1": w1_k, f"{k}.lokr_w2": w2_k, f"{k}.alpha": torch.tensor(7.0),   # two full factors
          f"{fc1}.lokr_w1_a": w1a_f, f"{fc1}.lokr_w1_b": w1b_f, f"{fc1}.lokr_w2": w2_f,
          f"{fc1}.alpha": torch.tensor(3.0),
          f"{conv}.lokr_w1": w1_c, f"{conv}.lokr_w2": w2_c,
          f"{conv_t}.lokr_w1": w1_t, f"{conv_t}.lokr_w2_a": w2a_t, f"{conv_t}.lokr_w2_b": w2b_t,
          f"{conv_t}.lokr_t2": t2, f"{conv_t}.alpha": torch.tensor(4.0)}
    w2_t = torch.einsum("ijhw,io,jn->onhw", t2, w2a_t, w2b_t)
    expected = {
        ("unet", "input_blocks.3.1.transformer_blocks.0.attn1.to_q"): _kron_blocks(w1_q, w2a_q @ w2b_q) * (1.0 / 2),
        ("unet", "input_blocks.1.1.transformer_blocks.0.attn2.to_k"): _kron_blocks(w1_k, w2_k),   # alpha ignored
        ("text", "encoder.layers.1.mlp.fc1"): _kron_blocks(w1a_f @ w1b_f, w2_f) * (3.0 / 2),   # rank of w1_b
        ("unet", "input_blocks.3.0.out_layers.3"): _kron_blocks(w1_c, w2_c),
        ("unet", "output_blocks.0.0.in_layers.2"): _kron_blocks(w1_t, w2_t) * (4.0 / 2),
    }
    lora = parse_lora(sd, model.unet, model.text_model)
    assert lora.unknown_keys == [] and lora.mismatched == []
    _check(lora, expected, model, "lokr", atol=1e-5)


# ------------------------------------------------------------------------------------ diffusers / PEFT

def test_peft_and_diffusers_deltas(model):
    gen = torch.Generator().manual_seed(5)
    to_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    to_k2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    proj_in = "down_blocks.0.attentions.0.proj_in"
    ours = {name: UNET_MODULES[name] for name in (to_q, to_k2, proj_in)}

    def pair(target, path, conv=False):
        weight = _weight(model, target, path)
        a = _randn(gen, RANK, weight.shape[1], *((1, 1) if conv else ()))
        b = _randn(gen, weight.shape[0], RANK, *((1, 1) if conv else ()))
        return a, b, (b.flatten(1) @ a.flatten(1)).reshape(weight.shape)

    # 1. PEFT keys with .alpha keys; text encoder keys with and without the "text_model." level
    sd, expected = {}, {}
    for i, (name, conv) in enumerate([(to_q, False), (proj_in, True)]):
        a, b, raw = pair("unet", ours[name], conv)
        sd |= {f"unet.{name}.lora_A.weight": a, f"unet.{name}.lora_B.weight": b,
               f"unet.{name}.alpha": torch.tensor(1.0 + i)}
        expected[("unet", ours[name])] = raw * ((1.0 + i) / RANK)
    a, b, raw = pair("text", "encoder.layers.0.self_attn.q_proj")
    sd |= {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": a,
           "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": b}
    expected[("text", "encoder.layers.0.self_attn.q_proj")] = raw  # no alpha: scale 1
    a, b, raw = pair("text", "encoder.layers.1.mlp.fc1")
    sd |= {"text_encoder.encoder.layers.1.mlp.fc1.lora_A.weight": a,
           "text_encoder.encoder.layers.1.mlp.fc1.lora_B.weight": b}
    expected[("text", "encoder.layers.1.mlp.fc1")] = raw
    lora = parse_lora(sd, model.unet, model.text_model)
    assert lora.unknown_keys == [] and lora.mismatched == []
    _check(lora, expected, model, "peft")

    # 2. alpha from diffusers' lora_adapter_metadata (lora_alpha with an alpha_pattern override)
    sd, expected = {}, {}
    for name in (to_q, to_k2):
        a, b, raw = pair("unet", ours[name])
        sd |= {f"unet.{name}.lora_A.weight": a, f"unet.{name}.lora_B.weight": b}
        expected[("unet", ours[name])] = raw * ((6.0 if name == to_k2 else 2.0) / RANK)
    metadata = {"lora_adapter_metadata": '{"unet.r": 4, "unet.lora_alpha": 2, "unet.alpha_pattern": '
                                         '{"attn2.to_k": 6}, "unet.use_rslora": false}'}
    _check(parse_lora(sd, model.unet, model.text_model, metadata), expected, model, "peft")

    # 3. older diffusers names: attention processors, LoRACompatibleConv, text lora_linear_layer
    sd, expected = {}, {}
    a, b, raw = pair("unet", ours[to_q])
    sd |= {to_q.replace(".to_q", ".processor.to_q_lora.down.weight"): a,
           to_q.replace(".to_q", ".processor.to_q_lora.up.weight"): b}
    expected[("unet", ours[to_q])] = raw
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    a, b, raw = pair("unet", UNET_MODULES[name])
    sd |= {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": a,
           "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": b}
    expected[("unet", UNET_MODULES[name])] = raw
    a, b, raw = pair("unet", ours[proj_in], conv=True)
    sd |= {f"unet.{proj_in}.lora.down.weight": a, f"unet.{proj_in}.lora.up.weight": b}
    expected[("unet", ours[proj_in])] = raw
    a, b, raw = pair("text", "encoder.layers.1.mlp.fc1")
    sd |= {"text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.down.weight": a,
           "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.up.weight": b}
    expected[("text", "encoder.layers.1.mlp.fc1")] = raw
    a, b, raw = pair("text", "encoder.layers.0.self_attn.q_proj")
    sd |= {"text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight": a,
           "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.up.weight": b}
    expected[("text", "encoder.layers.0.self_attn.q_proj")] = raw
    lora = parse_lora(sd, model.unet, model.text_model)
    assert lora.unknown_keys == [] and lora.mismatched == []
    _check(lora, expected, model, "peft")


def _check(lora, expected, model, kind, atol=1e-6):
    """Every module of ``lora`` is of ``kind`` and its ΔW equals the expected one."""
    modules = _by_module(lora)
    assert set(modules) == set(expected)
    for key, module in modules.items():
        assert module.kind == kind
        torch.testing.assert_close(module.delta(_weight(model, *key)), expected[key], rtol=1e-5, atol=atol)


# ------------------------------------------------------------------------------ unknown and mismatched

def test_unknown_and_mismatched_keys_are_reported(model):
    gen = torch.Generator().manual_seed(6)
    good = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    sd = {f"{good}.lora_down.weight": _randn(gen, RANK, 32), f"{good}.lora_up.weight": _randn(gen, 32, RANK),
          f"{good}.alpha": torch.tensor(4.0)}
    unknown = {
        # modules this model does not have (a third level; SDXL's second text encoder; a made-up PEFT path)
        "lora_unet_down_blocks_2_attentions_0_proj_in.lora_down.weight": _randn(gen, RANK, 32, 1, 1),
        "lora_unet_down_blocks_2_attentions_0_proj_in.lora_up.weight": _randn(gen, 32, RANK, 1, 1),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": _randn(gen, RANK, 64),
        "unet.down_blocks.0.attentions.0.nothing.lora_A.weight": _randn(gen, RANK, 32),
        "some_other_tensor": _randn(gen, 3),
        # a known module, but a parameter no supported format uses (DoRA magnitude)
        f"{good}.dora_scale": _randn(gen, 32, 1),
        # a known module with parameters of no supported format
        "lora_unet_down_blocks_0_attentions_0_proj_out.oft_blocks": _randn(gen, 4, 8, 8),
        # the same module again under its LDM name
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight": _randn(gen, RANK, 32),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight": _randn(gen, 32, RANK),
    }
    # a real module, but tensors shaped for another model (SD2's 1024-wide cross attention)
    bad = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    mismatched = {f"{bad}.lora_down.weight": _randn(gen, RANK, 1024), f"{bad}.lora_up.weight": _randn(gen, 32, RANK)}
    lora = parse_lora(sd | unknown | mismatched, model.unet, model.text_model)
    assert sorted(lora.unknown_keys) == sorted(unknown)
    assert [(m.target, m.module) for m in lora.modules] == [("unet", UNET_MODULES[
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"])]
    assert len(lora.mismatched) == 1 and bad in lora.mismatched[0] and "1024" in lora.mismatched[0]
    with pytest.raises(ValueError, match="attn2.to_k"):
        LoraModule("unet", "input_blocks.1.1.transformer_blocks.0.attn2.to_k", "lora",
                   {"lora_down.weight": mismatched[f"{bad}.lora_down.weight"],
                    "lora_up.weight": mismatched[f"{bad}.lora_up.weight"]}, None).delta(
            _weight(model, "unet", "input_blocks.1.1.transformer_blocks.0.attn2.to_k"))


# ------------------------------------------------------------------------------------ safe reading

class _RunsCode:
    """Pickles as a call to os.makedirs: loading the file unsafely would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_read_lora_refuses_pickled_code(tmp_path, model):
    marker = tmp_path / "was_run"
    path = tmp_path / "evil.pt"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    torch.save({f"{name}.lora_down.weight": torch.zeros(RANK, 32, 1, 1), "payload": _RunsCode(marker)}, str(path))
    with pytest.raises(CheckpointError) as info:
        read_lora(path, model.unet, model.text_model)
    assert str(path) in str(info.value) and "makedirs" in str(info.value)
    assert not marker.exists()
    # the same tensors without the payload read fine from a pickle
    torch.save({f"{name}.lora_down.weight": torch.ones(RANK, 32, 1, 1),
                f"{name}.lora_up.weight": torch.ones(32, RANK, 1, 1)}, str(tmp_path / "plain.pt"))
    lora = read_lora(tmp_path / "plain.pt", model.unet, model.text_model)
    assert [(m.module, m.kind) for m in lora.modules] == [("input_blocks.1.1.proj_in", "lora")]
    assert lora.metadata == {}


# --------------------------------------------------------------------------- parity against diffusers

def _parity_file(model, gen):
    """A kohya file as kohya's LoCon training writes one: diffusers-named UNet keys with one alpha for the
    Linear layers (network_alpha 2) and another for the convs (conv_alpha 1), at rank 4; text-encoder keys
    for a whole attention block (q, k, v, out) and an MLP layer, alpha 2."""
    sd = {}
    text = {"text_model.encoder.layers.0.self_attn." + p: "encoder.layers.0.self_attn." + p
            for p in ("q_proj", "k_proj", "v_proj", "out_proj")} | TEXT_MODULES
    cases = [("unet", d, ours) for d, ours in UNET_MODULES.items()] + [("text", f, o) for f, o in text.items()]
    for target, file_name, ours in cases:
        weight = _weight(model, target, ours)
        down, up = _kohya_pair(gen, weight, scale=0.5)
        name = ("lora_unet_" if target == "unet" else "lora_te_") + file_name.replace(".", "_")
        sd |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
               f"{name}.alpha": torch.tensor(1.0 if weight.ndim == 4 else 2.0)}
    return sd, cases


def test_kohya_lora_matches_diffusers(tmp_path, tiny_ckpt):
    """A kohya LoCon file (3x3 and 1x1 conv, attention and MLP Linear layers, text encoder; alpha/rank 1/2
    and 1/4) merged at multiplier 0.7 into our model vs diffusers' load_lora_weights + fuse_lora."""
    from diffusers import StableDiffusionPipeline

    from tests.test_pipeline import NEGATIVE, PROMPT, H, W, Reference, _max_diff
    from webui.engine.residency import Engine
    from webui.engine.request import GenerationRequest

    multiplier, steps, seed = 0.7, 5, 4321
    engine = Engine("cpu", "full")
    engine.load(tiny_ckpt)
    sd, cases = _parity_file(engine.model, torch.Generator().manual_seed(7))
    lora_path = _save(tmp_path / "kohya.safetensors", sd)

    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", steps=steps,
                                seed=seed, width=W, height=H)
    plain = engine.generate(request).images[0].image
    lora = read_lora(lora_path, engine.model.unet, engine.model.text_model)
    assert lora.unknown_keys == [] and len(lora.modules) == len(cases)
    with torch.no_grad():
        for module in lora.modules:
            net = engine.model.unet if module.target == "unet" else engine.model.text_model
            weight = net.get_submodule(module.module).weight
            weight += multiplier * module.delta(weight).to(weight.dtype)
    ours = engine.generate(request).images[0].image

    config = diffusers_config_dir(tmp_path / "config")
    pipe = StableDiffusionPipeline.from_single_file(str(tiny_ckpt), config=str(config),
                                                    local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
    pipe.load_lora_weights(str(lora_path))
    pipe.fuse_lora(lora_scale=multiplier)
    expected = Reference(pipe).generate("Euler", steps, seed)[0]

    for target, file_name, ours_name in cases:  # the merged weights themselves, module by module
        theirs = (pipe.unet.get_submodule(file_name) if target == "unet"
                  else pipe.text_encoder.get_submodule(file_name.removeprefix("text_model."))).weight
        torch.testing.assert_close(theirs, _weight(engine.model, target, ours_name), rtol=1e-5, atol=1e-5,
                                   msg=lambda m, name=file_name: f"{name}: {m}")
    error, effect = _max_diff(ours, expected), _max_diff(ours, plain)
    print(f"LoRA parity: max |ours - diffusers| = {error}/255, LoRA effect = {effect}/255")
    assert error <= 2
    assert effect > 2 * 2
