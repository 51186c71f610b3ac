"""LoRA on SDXL (extensions/lora): kohya files with ``lora_unet_`` (LDM or diffusers module names),
``lora_te1_`` / ``lora_te2_`` keys and diffusers/PEFT files with ``unet.`` / ``text_encoder.`` /
``text_encoder_2.`` keys merged into the same weights as diffusers' ``StableDiffusionXLPipeline``
(``load_lora_weights`` + ``fuse_lora``); LyCORIS LoHa / LoKr deltas against their formulas written out here;
``<lora:...>`` through the engine and the extension on an SDXL model; files made for another family refused.

The tiny SDXL checkpoint (tests/tiny_families.py): CLIP-L 64 wide (ours: a transformers 5 ``CLIPTextModel``,
no ``text_model.`` level), bigG 128 wide (a ``CLIPTextModelWithProjection``, with the level), UNet context
192 = 64 + 128. The tiny SD 1.x checkpoint (tests/tiny_models.py): context 64.

What diffusers 0.42's kohya converter (``loaders/lora_conversion_utils.py``) takes for SDXL, and so how the
files here are built: LDM UNet names are mapped by ``_maybe_map_sgm_blocks_to_diffusers`` with the UNet's
``layers_per_block`` (a file must not mix LDM and diffusers block names: it drops the LDM ones then);
``label_emb_0_0`` / ``input_blocks_0_0`` / ``out_2`` / ``time_embed_0`` are mapped directly, but the diffusers
spelling ``add_embedding_linear_1`` is mangled (its index is stripped), so only the LDM file adapts it.
Text encoder state dicts are converted from the old ``to_q_lora`` names only when one holds a ``to_out_lora``
key (``convert_state_dict_to_peft`` guesses the format from that), so each adapted attention block comes
whole (q, k, v, out), as kohya writes it.
"""
from __future__ import annotations

import hashlib

import pytest
import safetensors.torch
import torch

from extensions.lora import formats
from extensions.lora.formats import read_lora, trained_for
from tests import tiny_families as tf
from tests.tiny import tiny_checkpoint
from tests.tiny_models import CONTEXT_DIM as SD1_CONTEXT
from webui.engine.checkpoint import load_checkpoint
from webui.engine.diffusers_names import unet_module_names
from webui.engine.request import GenerationRequest
from webui.hooks.registry import ExtensionManager
from webui.options import Options
from webui.paths import PROJECT_ROOT, Paths
from webui.jobs.parameters import extra_params

MULTIPLIER = 0.7
RANK = 4          # Linear layers (kohya's network_dim)
CONV_RANK = 2     # 3x3 convs (kohya's conv_dim), with their own alpha (conv_alpha)

# our (LDM) UNet module paths in the tiny SDXL UNet: levels 64 / 128 / 128 channels, attention at levels 1 and
# 2 (depth 1 and 2), the middle block with two transformer blocks, output blocks 0-1 (level 2), 2-3 (level 1)
UNET_MODULES = [
    "input_blocks.3.1.transformer_blocks.0.attn1.to_q", "input_blocks.3.1.transformer_blocks.0.attn1.to_k",
    "input_blocks.3.1.transformer_blocks.0.attn1.to_v", "input_blocks.3.1.transformer_blocks.0.attn1.to_out.0",
    "input_blocks.3.1.transformer_blocks.0.attn2.to_k",                       # 192 -> 128: the context width
    "input_blocks.5.1.transformer_blocks.1.attn2.to_v",                       # the second transformer block
    "input_blocks.3.1.proj_in",                                               # Linear in SDXL
    "input_blocks.3.1.transformer_blocks.0.ff.net.0.proj", "input_blocks.3.1.transformer_blocks.0.ff.net.2",
    "middle_block.1.transformer_blocks.1.attn2.to_q", "middle_block.0.in_layers.2", "middle_block.2.out_layers.3",
    "output_blocks.1.1.proj_out", "output_blocks.2.0.skip_connection", "output_blocks.4.0.in_layers.2",
    "input_blocks.3.0.skip_connection", "input_blocks.3.0.emb_layers.1", "input_blocks.1.0.in_layers.2",
    "input_blocks.2.0.op", "output_blocks.1.2.conv",                           # down- and upsampler convs
    "input_blocks.0.0", "out.2", "time_embed.0",                               # conv_in, conv_out, time MLP
]
LDM_ONLY = ["label_emb.0.0"]     # SDXL's size-conditioning MLP (diffusers mangles its diffusers spelling)
# whole attention blocks and an MLP layer of each text encoder, by our module paths
TEXT_MODULES = [f"encoder.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")] + [
    "encoder.layers.1.mlp.fc1"]
TEXT_2_MODULES = [f"text_model.encoder.layers.2.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")] + [
    "text_model.encoder.layers.1.mlp.fc2"]
# modules left without alpha in some files: scale 1 (kohya, A1111). diffusers gives such a module the file's
# most common alpha instead (``get_peft_kwargs``), so the files compared with diffusers have every alpha.
NO_ALPHA = {"input_blocks.3.1.transformer_blocks.0.attn1.to_v", "encoder.layers.1.mlp.fc1"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with tf.one_thread():
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("lora_sdxl")


@pytest.fixture(scope="module")
def xl_path(root):
    return tiny_checkpoint(root / "sdxl.safetensors", "sdxl")


@pytest.fixture(scope="module")
def xl(xl_path):
    """Our SDXL model, only read (the engine tests load their own)."""
    return load_checkpoint(xl_path)


@pytest.fixture(scope="module")
def diffusers_name(xl):
    """Our UNet module path -> diffusers' path."""
    return {ours: theirs for theirs, ours in unet_module_names(xl.unet).items()}


@pytest.fixture(scope="module")
def pipe(root, xl_path):
    return tf.load_diffusers_pipeline(xl_path, tf.family_diffusers_config_dir(root, "sdxl"), "sdxl")


def _network(model, target):
    return model.unet if target == "unet" else model.text_models[{"text": 0, "text_2": 1}[target]]


def _weight(model, target, module):
    return _network(model, target).get_submodule(module).weight


def _randn(gen, *shape, scale=0.3):
    return (torch.randn(shape, generator=gen) * scale).contiguous()


def _save(path, sd, metadata=None):
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def _cases(unet_modules):
    return ([("unet", m) for m in unet_modules] + [("text", m) for m in TEXT_MODULES]
            + [("text_2", m) for m in TEXT_2_MODULES])


def _kohya_name(target, module, spelling, diffusers_name):
    if target == "unet":
        return "lora_unet_" + (module if spelling == "ldm" else diffusers_name[module]).replace(".", "_")
    if target == "text":  # files name CLIP-L's modules with the "text_model." level
        return "lora_te1_text_model_" + module.replace(".", "_")
    return "lora_te2_" + module.replace(".", "_")


def kohya_sdxl(model, diffusers_name, spelling, seed=1, no_alpha=frozenset()):
    """A kohya LoCon file for SDXL as sd-scripts writes one: Linear layers and 1x1 convs at rank 4 with alpha 2,
    3x3 convs at rank 2 with alpha 1, the ``no_alpha`` modules without alpha; UNet modules named the LDM way (as
    kohya's SDXL training names them) or the diffusers way. Returns the state dict and {(target, module): ΔW}
    (alpha/rank applied), ΔW written per kernel position."""
    gen = torch.Generator().manual_seed(seed)
    sd, expected = {}, {}
    for target, module in _cases(UNET_MODULES) + [("unet", m) for m in LDM_ONLY if spelling == "ldm"]:
        weight = _weight(model, target, module)
        name = _kohya_name(target, module, spelling, diffusers_name)
        kernel = tuple(weight.shape[2:])
        rank = CONV_RANK if kernel not in ((), (1, 1)) else RANK
        down = _randn(gen, rank, weight.shape[1], *kernel)
        up = _randn(gen, weight.shape[0], rank, *((1, 1) if kernel else ()))
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        scale = 1.0
        if module not in no_alpha:
            alpha = 1.0 if rank == CONV_RANK else 2.0
            sd[f"{name}.alpha"] = torch.tensor(alpha)
            scale = alpha / rank
        if kernel:
            delta = torch.stack([torch.stack([up[:, :, 0, 0] @ down[:, :, h, w] for w in range(kernel[1])], -1)
                                 for h in range(kernel[0])], -2)
        else:
            delta = up @ down
        expected[(target, module)] = delta * scale
    return sd, expected


def _diffusers_module(pipe, target, path):
    """diffusers' module at ``path`` (diffusers' own path) of the target's network."""
    return {"unet": pipe.unet, "text": pipe.text_encoder, "text_2": pipe.text_encoder_2}[target].get_submodule(path)


def _diffusers_weights(pipe) -> dict[tuple[str, str], torch.Tensor]:
    """Every weight of diffusers' UNet and text encoders by (target, module path), LoRA layers' base weights
    under the wrapped module's path."""
    out = {}
    for target, net in (("unet", pipe.unet), ("text", pipe.text_encoder), ("text_2", pipe.text_encoder_2)):
        for name, module in net.named_modules():
            if ".lora_" in f".{name}" or name.endswith("base_layer"):
                continue
            layer = getattr(module, "base_layer", module)
            weight = getattr(layer, "weight", None)
            if isinstance(weight, torch.Tensor):
                out[(target, name)] = weight.detach().clone()
    return out


def _check_against_diffusers(pipe, model, diffusers_name, lora, lora_path, adapter):
    """Load ``lora_path`` into diffusers, fuse it at MULTIPLIER and compare each fused weight with ours
    (W + MULTIPLIER·ΔW from ``lora``); the weights diffusers changed must be exactly the modules we adapt.
    Returns the largest difference."""
    ours_in_theirs = {(m.target, diffusers_name[m.module] if m.target == "unet" else m.module): m
                      for m in lora.modules}
    before = _diffusers_weights(pipe)
    pipe.load_lora_weights(str(lora_path), adapter_name=adapter)
    try:
        pipe.fuse_lora(lora_scale=MULTIPLIER, adapter_names=[adapter])
        after = _diffusers_weights(pipe)
    finally:
        pipe.unload_lora_weights()
        with torch.no_grad():  # the checkpoint's weights back exactly, for the next file
            for key, weight in _diffusers_weights(pipe).items():
                if not torch.equal(weight, before[key]):
                    _diffusers_module(pipe, *key).weight.copy_(before[key])
    changed = {key for key, value in after.items() if not torch.equal(value, before[key])}
    assert changed == set(ours_in_theirs)          # diffusers applied each module of the file, and no other
    worst = 0.0
    for key, module in ours_in_theirs.items():
        weight = _weight(model, module.target, module.module)
        torch.testing.assert_close(before[key], weight, rtol=0, atol=1e-6)   # the same checkpoint weights
        ours = weight + MULTIPLIER * module.delta(weight)
        torch.testing.assert_close(after[key], ours, rtol=1e-5, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
        worst = max(worst, (after[key] - ours).abs().max().item())
    return worst


# ------------------------------------------------------------------------------------ kohya vs diffusers

@pytest.mark.parametrize("spelling", ["ldm", "diffusers"])
def test_kohya_sdxl_lora_matches_diffusers(root, xl, diffusers_name, pipe, spelling):
    sd, expected = kohya_sdxl(xl, diffusers_name, spelling)
    path = _save(root / f"kohya_{spelling}.safetensors", sd, {"ss_base_model_version": "sdxl_base_v1-0"})
    lora = read_lora(path, xl.unet, xl.text_models)
    assert lora.unknown_keys == [] and lora.mismatched == []
    modules = {(m.target, m.module): m for m in lora.modules}
    assert set(modules) == set(expected)
    for key, module in modules.items():
        assert module.kind == "lora"
        torch.testing.assert_close(module.delta(_weight(xl, *key)), expected[key], rtol=1e-5, atol=1e-6)
    worst = _check_against_diffusers(pipe, xl, diffusers_name, lora, path, f"kohya_{spelling}")
    print(f"SDXL kohya ({spelling} names) vs diffusers: max |Δweight| = {worst:.2e} over {len(modules)} modules")


def test_both_unet_spellings_give_the_same_deltas(xl, diffusers_name):
    """The same tensors under LDM and diffusers UNet names (some modules without alpha: scale 1)."""
    ldm, expected = kohya_sdxl(xl, diffusers_name, "ldm", seed=3, no_alpha=NO_ALPHA)
    diff, _ = kohya_sdxl(xl, diffusers_name, "diffusers", seed=3, no_alpha=NO_ALPHA)
    a, b = (formats.parse_lora(sd, xl.unet, xl.text_models) for sd in (ldm, diff))
    assert a.unknown_keys == b.unknown_keys == [] and a.mismatched == b.mismatched == []
    by_a = {(m.target, m.module): m for m in a.modules}
    by_b = {(m.target, m.module): m for m in b.modules}
    assert set(by_a) == set(expected) and set(by_a) - set(by_b) == {("unet", "label_emb.0.0")}
    for key, module in by_a.items():
        weight = _weight(xl, *key)
        assert module.alpha is None if key[1] in NO_ALPHA else module.alpha in (1.0, 2.0)
        torch.testing.assert_close(module.delta(weight), expected[key], rtol=1e-5, atol=1e-6)
        if key in by_b:
            assert torch.equal(by_b[key].delta(weight), module.delta(weight))


# ------------------------------------------------------------------------------------ PEFT vs diffusers

def test_peft_sdxl_lora_matches_diffusers(root, xl, diffusers_name, pipe):
    """A file written by diffusers' own ``save_lora_weights`` (PEFT names, ``lora_adapter_metadata`` with each
    component's alpha, an ``alpha_pattern`` for the UNet's cross-attention keys)."""
    from diffusers import StableDiffusionXLPipeline

    gen = torch.Generator().manual_seed(2)
    layers = {"unet": {}, "text": {}, "text_2": {}}
    unet_modules = UNET_MODULES[:9] + ["input_blocks.3.0.emb_layers.1"]       # the Linear ones
    for target, module in _cases(unet_modules):
        weight = _weight(xl, target, module)
        name = diffusers_name[module] if target == "unet" else (
            "text_model." + module if target == "text" else module)
        layers[target][f"{name}.lora_A.weight"] = _randn(gen, RANK, weight.shape[1])
        layers[target][f"{name}.lora_B.weight"] = _randn(gen, weight.shape[0], RANK)
    folder = root / "peft"
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text"],
        text_encoder_2_lora_layers=layers["text_2"], weight_name="peft.safetensors",
        unet_lora_adapter_metadata={"r": RANK, "lora_alpha": 2, "alpha_pattern": {"attn2.to_k": 6},
                                    "target_modules": [diffusers_name[m] for m in unet_modules]},
        text_encoder_lora_adapter_metadata={"r": RANK, "lora_alpha": 8, "target_modules": TEXT_MODULES},
        text_encoder_2_lora_adapter_metadata={"r": RANK, "lora_alpha": 1, "target_modules": TEXT_2_MODULES})
    path = folder / "peft.safetensors"
    keys = safetensors.torch.load_file(str(path))
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}

    lora = read_lora(path, xl.unet, xl.text_models)
    assert lora.unknown_keys == [] and lora.mismatched == []
    scales = {(m.target, m.module): m.scale for m in lora.modules}
    assert len(scales) == len(UNET_MODULES[:9]) + 1 + len(TEXT_MODULES) + len(TEXT_2_MODULES)
    assert {m.kind for m in lora.modules} == {"peft"}
    assert scales[("unet", "input_blocks.3.1.transformer_blocks.0.attn2.to_k")] == 6 / RANK
    assert scales[("unet", "input_blocks.3.1.transformer_blocks.0.attn1.to_k")] == 2 / RANK
    assert scales[("text", "encoder.layers.0.self_attn.q_proj")] == 8 / RANK
    assert scales[("text_2", "text_model.encoder.layers.1.mlp.fc2")] == 1 / RANK
    for m in lora.modules:  # ΔW = B·A · alpha/r
        weight = _weight(xl, m.target, m.module)
        raw = m.tensors["lora_B.weight"] @ m.tensors["lora_A.weight"]
        torch.testing.assert_close(m.delta(weight), raw * scales[(m.target, m.module)])
    worst = _check_against_diffusers(pipe, xl, diffusers_name, lora, path, "peft")
    print(f"SDXL PEFT vs diffusers: max |Δweight| = {worst:.2e} over {len(scales)} modules")


# ------------------------------------------------------------------------------------ LyCORIS

def _kron_blocks(w1, w2):
    """kron written out: block (i, j) of the result is w1[i, j] * w2 (w2 may carry a conv kernel)."""
    rows = [torch.cat([w1[i, j] * w2 for j in range(w1.shape[1])], dim=1) for i in range(w1.shape[0])]
    return torch.cat(rows, dim=0)


def lycoris_sdxl(model, seed=4):
    """LoHa on attention / MLP Linears of the UNet and both text encoders, LoKr on a Linear, a 3x3 conv and
    bigG's MLP; kohya names (LDM UNet names, lora_te1_ / lora_te2_). Returns the state dict and the expected
    ΔW per (target, module), from the formulas written out here."""
    gen = torch.Generator().manual_seed(seed)
    sd, expected = {}, {}

    def loha(target, module, rank, alpha):
        w = _weight(model, target, module)
        name = _kohya_name(target, module, "ldm", None)
        a1, b1 = _randn(gen, w.shape[0], rank), _randn(gen, rank, w.shape[1])
        a2, b2 = _randn(gen, w.shape[0], rank), _randn(gen, rank, w.shape[1])
        sd.update({f"{name}.hada_w1_a": a1, f"{name}.hada_w1_b": b1, f"{name}.hada_w2_a": a2,
                   f"{name}.hada_w2_b": b2, f"{name}.alpha": torch.tensor(alpha)})
        # each low-rank factor as a sum of rank-1 outer products, then the elementwise product
        first = sum(torch.outer(a1[:, r], b1[r]) for r in range(rank))
        second = sum(torch.outer(a2[:, r], b2[r]) for r in range(rank))
        expected[(target, module)] = torch.mul(first, second) * (alpha / rank)

    loha("unet", "input_blocks.5.1.transformer_blocks.1.attn2.to_k", 2, 1.0)       # 128 x 192
    loha("unet", "middle_block.1.transformer_blocks.0.ff.net.2", 4, 2.0)
    loha("text", "encoder.layers.0.self_attn.v_proj", 2, 2.0)
    loha("text_2", "text_model.encoder.layers.2.self_attn.q_proj", 4, 8.0)

    def lokr(target, module, alpha, **factors):
        name = _kohya_name(target, module, "ldm", None)
        sd.update({f"{name}.{k}": v for k, v in factors.items()} | {f"{name}.alpha": torch.tensor(alpha)})

    q = "input_blocks.3.1.transformer_blocks.0.attn1.to_q"        # 128 x 128: kron(4x8, (32x2)(2x16))
    w1, w2a, w2b = _randn(gen, 4, 8), _randn(gen, 32, 2), _randn(gen, 2, 16)
    lokr("unet", q, 1.0, lokr_w1=w1, lokr_w2_a=w2a, lokr_w2_b=w2b)
    expected[("unet", q)] = _kron_blocks(w1, w2a @ w2b) * (1.0 / 2)
    conv = "output_blocks.2.0.in_layers.2"                          # 128 x 256 x 3 x 3: two full factors
    w1c, w2c = _randn(gen, 4, 8), _randn(gen, 32, 32, 3, 3)
    lokr("unet", conv, 5.0, lokr_w1=w1c, lokr_w2=w2c)
    expected[("unet", conv)] = _kron_blocks(w1c, w2c)               # alpha ignored: no low-rank factor
    fc1 = "text_model.encoder.layers.0.mlp.fc1"                     # 512 x 128: kron((8x2)(2x4), 64x32)
    w1a, w1b, w2f = _randn(gen, 8, 2), _randn(gen, 2, 4), _randn(gen, 64, 32)
    lokr("text_2", fc1, 3.0, lokr_w1_a=w1a, lokr_w1_b=w1b, lokr_w2=w2f)
    expected[("text_2", fc1)] = _kron_blocks(w1a @ w1b, w2f) * (3.0 / 2)      # rank of lokr_w1_b
    return sd, expected


def test_lycoris_loha_lokr_on_sdxl(xl):
    """diffusers' SDXL loader takes no LyCORIS files (its kohya converter reads lora_down/lora_up only), so
    the deltas are checked against the formulas: LoHa ΔW[o, i] = (Σ_r a1[o,r] b1[r,i])·(Σ_r a2[o,r] b2[r,i])
    · alpha/r; LoKr ΔW = kron(w1, w2) block by block (alpha/r only with a low-rank factor)."""
    sd, expected = lycoris_sdxl(xl)
    lora = formats.parse_lora(sd, xl.unet, xl.text_models, {"ss_base_model_version": "sdxl_base_v1-0"})
    assert lora.unknown_keys == [] and lora.mismatched == []
    modules = {(m.target, m.module): m for m in lora.modules}
    assert set(modules) == set(expected)
    for key, module in modules.items():
        assert module.kind == ("lokr" if key[1] in ("input_blocks.3.1.transformer_blocks.0.attn1.to_q",
                                                      "output_blocks.2.0.in_layers.2",
                                                      "text_model.encoder.layers.0.mlp.fc1") else "loha")
        torch.testing.assert_close(module.delta(_weight(xl, *key)), expected[key], rtol=1e-5, atol=1e-5)
    assert not lora.trained_for.mismatch(xl.unet.config.context_dim, [m.config.hidden_size for m in xl.text_models])


# ------------------------------------------------------------------------------ through the engine

def sd1_lora(seed=5):
    """A kohya SD 1.x LoRA for the tiny SD 1.x model (cross-attention keys 64 wide, ``lora_te_`` keys), plus an
    attn1 module that also fits SDXL's down_blocks.1 (128 wide) -- as real SD 1.x files' 640-wide attn1 layers
    fit SDXL's -- so that on SDXL something would be merged if the file were not refused."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (out_dim, in_dim) in {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (32, SD1_CONTEXT),
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v": (64, SD1_CONTEXT),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (SD1_CONTEXT, SD1_CONTEXT),
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": (128, 128)}.items():
        sd |= {f"{name}.lora_down.weight": _randn(gen, RANK, in_dim),
               f"{name}.lora_up.weight": _randn(gen, out_dim, RANK), f"{name}.alpha": torch.tensor(2.0)}
    return sd


def te_mlp_only(seed=6):
    """Text keys only, named the single-encoder way and on an MLP layer (nothing says which family)."""
    gen = torch.Generator().manual_seed(seed)
    name = "lora_te_text_model_encoder_layers_1_mlp_fc1"          # 64 -> 256 in SD 1.x's tiny CLIP-L
    return {f"{name}.lora_down.weight": _randn(gen, RANK, 64, scale=1.0),
            f"{name}.lora_up.weight": _randn(gen, 256, RANK, scale=1.0)}


@pytest.fixture(scope="module")
def env(root, xl_path, diffusers_name, make_engine):
    engine = make_engine(xl_path)
    model = engine.model
    sd1_engine = make_engine(tiny_checkpoint(root / "sd1.safetensors"))
    folder = root / "models" / "lora"
    folder.mkdir(parents=True)
    xl_meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": str(RANK)}
    _save(folder / "xl.safetensors", kohya_sdxl(model, diffusers_name, "ldm", seed=7, no_alpha=NO_ALPHA)[0], xl_meta)
    _save(folder / "xl_lycoris.safetensors", lycoris_sdxl(model, seed=8)[0], xl_meta)
    _save(folder / "sd1.safetensors", sd1_lora(), {"ss_base_model_version": "sd_v1"})
    te_only = {k: v for k, v in kohya_sdxl(model, diffusers_name, "ldm", seed=9)[0].items() if "lora_te" in k}
    _save(folder / "xl_te_only.safetensors", te_only, {"ss_base_model_version": "sdxl_base_v1-0"})
    _save(folder / "mlp_sdxl_meta.safetensors", te_mlp_only(), {"ss_base_model_version": "sdxl_base_v1-0"})
    _save(folder / "mlp_plain.safetensors", te_mlp_only())
    manager = ExtensionManager(PROJECT_ROOT / "extensions", Paths(root=root), Options(root / "config.json"),
                               lambda m: None)
    manager.load()
    assert manager.extensions["lora"].state == "loaded", manager.extensions["lora"].errors
    return {"engine": engine, "sd1": sd1_engine, "manager": manager, "folder": folder}


def job(prompt, steps=3):
    return GenerationRequest(prompt=prompt, negative_prompt="blurry", width=64, height=64, steps=steps, seed=3)


def generate(env, prompt, engine="engine"):
    return env[engine].generate(job(prompt), hooks=env["manager"].job_hooks())


def _state(model):
    return {f"{target}.{k}": v.clone() for target, net in [("unet", model.unet)] + [
        (f"text{i}", t) for i, t in enumerate(model.text_models)] for k, v in net.state_dict().items()}


def _same_state(model, saved):
    now = _state(model)
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)


def by_hand(env, prompt, merges, engine="engine"):
    """The image with W + m·ΔW merged into the weights directly (te multiplier for both text encoders), then
    the weights put back."""
    engine = env[engine]
    model = engine.model
    engine.restore_weights()
    saved = _state(model)
    nets = {"unet": model.unet} | {f"text{i}": t for i, t in enumerate(model.text_models)}
    try:
        with torch.no_grad():
            for name, te, unet in merges:
                lora = read_lora(env["folder"] / f"{name}.safetensors", model.unet, model.text_models)
                assert lora.modules and not lora.unknown_keys and not lora.mismatched
                for m in lora.modules:
                    param = _weight(model, m.target, m.module)
                    param.copy_(param.float() + (unet if m.target == "unet" else te) * m.delta(param.float()))
        return engine.generate(job(prompt)).images[0].image
    finally:
        for key, net in nets.items():
            net.load_state_dict({k.removeprefix(key + "."): v for k, v in saved.items() if k.startswith(key + ".")})


@pytest.mark.parametrize("name", ["xl", "xl_lycoris"])
def test_sdxl_lora_through_the_extension(env, name):
    model = env["engine"].model
    env["engine"].restore_weights()
    original = _state(model)
    plain = generate(env, "a red cat").images[0].image
    result = generate(env, f"a red cat <lora:{name}:{MULTIPLIER}>")
    assert result.warnings == []
    image = result.images[0].image
    assert image.tobytes() == by_hand(env, "a red cat", [(name, MULTIPLIER, MULTIPLIER)]).tobytes()
    assert image.tobytes() != plain.tobytes()
    digest = hashlib.sha256((env["folder"] / f"{name}.safetensors").read_bytes()).hexdigest()[:12]
    assert extra_params(result.facts)["Lora hashes"] == f"{name}: {digest}"
    # the next job without the LoRA: weights bit-identical to the checkpoint's, the same plain image
    again = generate(env, "a red cat")
    assert "Lora hashes" not in extra_params(again.facts)
    assert again.images[0].image.tobytes() == plain.tobytes()
    assert _same_state(model, original)


def test_te_multiplier_applies_to_both_text_encoders(env):
    """``<lora:name:te:unet>``: SDXL's second text encoder (bigG) takes the text-encoder multiplier too."""
    only_unet = generate(env, "a red cat <lora:xl:0:1>").images[0].image
    assert only_unet.tobytes() == by_hand(env, "a red cat", [("xl", 0.0, 1.0)]).tobytes()
    only_text = generate(env, "a red cat <lora:xl:te=0.8:unet=0>").images[0].image
    assert only_text.tobytes() == by_hand(env, "a red cat", [("xl", 0.8, 0.0)]).tobytes()
    plain = generate(env, "a red cat").images[0].image
    assert len({only_unet.tobytes(), only_text.tobytes(), plain.tobytes()}) == 3


# ------------------------------------------------------------------------------ wrong family

@pytest.fixture()
def tiny_widths(monkeypatch):
    """Name the tiny models' cross-attention widths as the released families' (768 / 2048 stand-ins)."""
    monkeypatch.setitem(formats._CONTEXT_FAMILIES, SD1_CONTEXT, "SD 1.x")
    monkeypatch.setitem(formats._CONTEXT_FAMILIES, tf.SDXL_CONTEXT_DIM, "SDXL")


def _refused(env, engine, name):
    """Generate with ``<lora:name>`` on ``engine``: the image and weights must be those of no LoRA at all."""
    model = env[engine].model
    env[engine].restore_weights()
    original = _state(model)
    plain = generate(env, "a red cat", engine).images[0].image
    result = generate(env, f"a red cat <lora:{name}:1>", engine)
    assert result.images[0].image.tobytes() == plain.tobytes()
    assert _same_state(model, original)
    assert "Lora hashes" not in extra_params(result.facts)
    return result.warnings


def test_sd1_lora_on_sdxl_is_refused(env, tiny_widths):
    model = env["engine"].model
    lora = read_lora(env["folder"] / "sd1.safetensors", model.unet, model.text_models)
    assert [(m.target, m.module) for m in lora.modules] == [
        ("unet", "input_blocks.3.1.transformer_blocks.0.attn1.to_q")]  # would be merged, were it not refused
    assert _refused(env, "engine", "sd1") == ["LoRA sd1: made for SD 1.x, this model is SDXL: not applied"]


def test_sdxl_lora_on_sd1_is_refused(env, tiny_widths):
    assert _refused(env, "sd1", "xl") == ["LoRA xl: made for SDXL, this model is SD 1.x: not applied"]
    assert _refused(env, "sd1", "xl_lycoris") == ["LoRA xl_lycoris: made for SDXL, this model is SD 1.x: not applied"]


def test_tiny_widths_are_named_by_width(env):
    """Without the stand-in names, a width no released family has is given as a number."""
    assert _refused(env, "engine", "sd1") == [
        f"LoRA sd1: made for a model with cross-attention width {SD1_CONTEXT}, this model is SDXL: not applied"]


def test_text_only_sdxl_loras_on_sd1_are_refused(env):
    # lora_te1_ / lora_te2_ keys: two text encoders
    warnings = _refused(env, "sd1", "xl_te_only")
    assert len(warnings) == 1 and warnings[0].startswith("LoRA xl_te_only: made for ")
    assert "sdxl" in warnings[0].lower() and warnings[0].endswith(", this model is SD 1.x: not applied")
    # keys an SD 1.x file could have: only kohya's ss_base_model_version says SDXL
    warnings = _refused(env, "sd1", "mlp_sdxl_meta")
    assert warnings == ["LoRA mlp_sdxl_meta: made for SDXL, this model is SD 1.x: not applied"]   # kohya's sdxl_base_v1-0
    # the same tensors without that metadata are applied
    plain = generate(env, "a red cat", "sd1").images[0].image
    applied = generate(env, "a red cat <lora:mlp_plain:1>", "sd1")
    assert applied.warnings == [] and "Lora hashes" in extra_params(applied.facts)
    assert applied.images[0].image.tobytes() != plain.tobytes()
    assert applied.images[0].image.tobytes() == by_hand(env, "a red cat", [("mlp_plain", 1.0, 1.0)], "sd1").tobytes()


def test_trained_for_with_released_widths():
    """The family is read from the released models' widths (shapes only)."""
    def down(width):
        return torch.empty(RANK, width)

    sd1 = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": down(768),
           "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down(768)}
    xl = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_v.lora_down.weight": down(2048),
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down(768),
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down(1280)}
    peft_xl = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": down(2048),
               "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight": down(1280)}
    sd1_model, xl_model = (768, [768]), (2048, [768, 1280])
    assert trained_for(sd1).label() == "SD 1.x" and trained_for(xl).label() == "SDXL"
    assert trained_for(peft_xl).label() == "SDXL"
    assert trained_for(sd1).mismatch(*xl_model) and not trained_for(sd1).mismatch(*sd1_model)
    assert trained_for(xl).mismatch(*sd1_model) and not trained_for(xl).mismatch(*xl_model)
    assert trained_for(peft_xl).mismatch(*sd1_model) and not trained_for(peft_xl).mismatch(*xl_model)
    te2_only = {k: v for k, v in xl.items() if k.startswith("lora_te2_")}
    assert trained_for(te2_only).label() == "SDXL" and trained_for(te2_only).mismatch(*sd1_model)
    meta = trained_for({}, {"ss_base_model_version": "sdxl_base_v1-0"})
    assert meta.mismatch(*sd1_model) and not meta.mismatch(*xl_model)
    assert trained_for({}, {"ss_base_model_version": "sd_v1"}).mismatch(*xl_model)
