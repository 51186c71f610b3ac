"""Model families: every layout a user may drop into models/checkpoints is loaded as what it is or refused
with a message that names it.

The loadable rows are tiny random files written in each family's exact original single-file layout
(``tests/tiny_models.py``, ``tests/tiny_families.py``) and loaded through the real loading code; the
refused rows are the real key names of those architectures (SD3, Flux, Playground v2.5, a LoRA, a VAE, a
ControlNet, an embedding), with small tensors.
"""
from __future__ import annotations

import pytest
import safetensors.torch
import torch

from tests.tiny import tiny_checkpoint
from webui.engine import detection, families
from webui.engine.checkpoint import load_checkpoint
from webui.engine.files import CheckpointError
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest

# file -> (family name, prediction, zero terminal SNR, text encoder classes, native size)
LOADABLE = {
    "sd1": ("sd1", "eps", False, ["CLIPTextModel"], 512),
    "sd1-inpaint": ("sd1-inpaint", "eps", False, ["CLIPTextModel"], 512),
    "sd2-512": ("sd2", "eps", False, ["CLIPTextModel"], 512),
    "sd2-768-v": ("sd2", "v", False, ["CLIPTextModel"], 768),
    "sd2-inpaint": ("sd2-inpaint", "eps", False, ["CLIPTextModel"], 512),
    "sdxl": ("sdxl", "eps", False, ["CLIPTextModel", "CLIPTextModelWithProjection"], 1024),
    "sdxl-inpaint": ("sdxl-inpaint", "eps", False, ["CLIPTextModel", "CLIPTextModelWithProjection"], 1024),
    "sdxl-vpred": ("sdxl", "v", True, ["CLIPTextModel", "CLIPTextModelWithProjection"], 1024),
    "sdxl-refiner": ("sdxl-refiner", "eps", False, ["CLIPTextModelWithProjection"], 1024),
}


def _write(folder, name):
    path = folder / f"{name}.safetensors"
    if path.exists():
        return path
    if name.startswith("sd1"):
        return tiny_checkpoint(path, inpaint=name.endswith("inpaint"))
    family = {"sd2-512": "sd2", "sd2-768-v": "sd2", "sdxl-vpred": "sdxl"}.get(name, name.removesuffix("-inpaint"))
    return tiny_checkpoint(path, family, inpaint=name.endswith("inpaint"), v_like=name == "sd2-768-v",
                           v_pred=name == "sdxl-vpred")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


@pytest.mark.parametrize("name", list(LOADABLE))
def test_each_family_loads_as_what_it_is(folder, name):
    family, prediction, zero_snr, encoders, native = LOADABLE[name]
    model = load_checkpoint(_write(folder, name))
    assert model.family.name == family
    assert (model.prediction.kind, model.prediction.zero_snr) == (prediction, zero_snr)
    assert [type(m).__name__ for m in model.text_models] == encoders
    assert model.native_size == native
    assert model.family.label in model.describe()
    # the schedule follows the prediction: zero terminal SNR reaches a far larger sigma_max
    assert (model.schedule.sigma_max > 1000) == zero_snr


def test_prediction_override_and_describe(folder):
    path = _write(folder, "sd2-768-v")
    forced = load_checkpoint(path, prediction="eps")
    assert (forced.prediction.kind, forced.prediction.source) == ("eps", "--prediction")
    assert forced.describe() == "SD 2.x, eps-prediction (--prediction)"
    assert load_checkpoint(_write(folder, "sdxl-vpred")).describe() == \
        "SDXL, v-prediction (zero terminal SNR; v_pred key)"
    with pytest.raises(ValueError, match="eps, v"):
        families.prediction_from_keys({}, families.FAMILIES[0], "x0")


def _tensor(*shape):
    return torch.zeros(shape, dtype=torch.float16)


# real key names (a few of each file's), small tensors
REFUSED = {
    "sd3": ({"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": _tensor(8, 4),
             "model.diffusion_model.x_embedder.proj.weight": _tensor(4, 16, 2, 2),
             "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": _tensor(8, 4),
             "first_stage_model.decoder.conv_in.weight": _tensor(4, 16, 3, 3)}, "SD3 / SD 3.5"),
    "flux": ({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": _tensor(12, 4),
              "model.diffusion_model.single_blocks.0.linear1.weight": _tensor(8, 4)}, "Flux"),
    "flux-unet-only": ({"double_blocks.0.img_attn.qkv.weight": _tensor(12, 4),
                        "single_blocks.0.linear1.weight": _tensor(8, 4)}, "Flux"),
    "lora": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": _tensor(4, 8),
              "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": _tensor(8, 4)}, "LoRA"),
    "vae": ({"encoder.conv_in.weight": _tensor(8, 3, 3, 3), "decoder.conv_out.weight": _tensor(3, 8, 3, 3),
             "quant_conv.weight": _tensor(8, 8, 1, 1)}, "standalone VAE"),
    "controlnet": ({"control_model.input_hint_block.0.weight": _tensor(16, 3, 3, 3),
                    "control_model.zero_convs.0.0.weight": _tensor(8, 8, 1, 1),
                    "control_model.time_embed.0.weight": _tensor(8, 8)}, "ControlNet"),
    "embedding": ({"clip_l": _tensor(2, 768), "clip_g": _tensor(2, 1280)}, "textual-inversion embedding"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_other_files_are_refused_with_what_they_are(folder, name):
    sd, words = REFUSED[name]
    path = folder / f"{name}.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and words in message
    if name.startswith(("sd3", "flux")):
        assert "not supported" in message and "unknown" not in message and "SDXL" in message  # what is supported


def test_playground_and_other_sdxl_shaped_schedules_are_named(folder):
    sd = safetensors.torch.load_file(str(_write(folder, "sdxl")))
    sd["edm_mean"] = torch.zeros(1, 4, 1, 1)
    with pytest.raises(CheckpointError, match="Playground v2.5.*not supported"):
        detection.detect_family(sd, name="playground")


def test_depth_and_instruct_models_are_named(folder):
    sd = safetensors.torch.load_file(str(_write(folder, "sd2-512")))
    weight = sd["model.diffusion_model.input_blocks.0.0.weight"]
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(weight.shape[0], 5, *weight.shape[2:])
    with pytest.raises(CheckpointError, match="depth-conditioned.*not supported"):
        detection.detect_family(sd)


def test_truncated_sdxl_names_the_missing_encoder(folder):
    sd = safetensors.torch.load_file(str(_write(folder, "sdxl")))
    partial = {k: v for k, v in sd.items() if ".resblocks.1." not in k}
    with pytest.raises(CheckpointError, match=r"incomplete or truncated SDXL.*conditioner\.embedders\.1\.model\."
                                              r"transformer\.resblocks"):
        detection.detect_family(partial)


def test_engine_keeps_the_previous_model_when_a_file_is_refused(folder):
    engine = Engine("cpu", "full")
    engine.load(_write(folder, "sdxl"))
    path = folder / "flux.safetensors"
    safetensors.torch.save_file(REFUSED["flux"][0], str(path))
    with pytest.raises(CheckpointError, match="Flux"):
        engine.load(path)
    assert engine.model.family.name == "sdxl"
    result = engine.generate(GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=3))
    assert result.images[0].image.size == (64, 64)


def test_cfg_one_skips_the_unconditional_pass(folder):
    """Few-step models (Turbo, Lightning, LCM, Hyper-SD) run at CFG 1: one UNet row per image and step."""
    engine = Engine("cpu", "full")
    engine.load(_write(folder, "sdxl"))
    rows = []
    handle = engine.model.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        engine.generate(GenerationRequest(prompt="a cat", negative_prompt="blurry", steps=4, cfg_scale=1.0,
                                          width=64, height=64, seed=1, scheduler="sgm_uniform"))
        assert rows == [1, 1, 1, 1]
        rows.clear()
        engine.generate(GenerationRequest(prompt="a cat", steps=1, cfg_scale=3.0, width=64, height=64, seed=1))
        assert rows == [2]
    finally:
        handle.remove()


P_G = "conditioner.embedders.1.model."
MANGLED = {   # what a broken or hostile SDXL file may hold -> words of the CheckpointError it gets
    "uneven q/k/v": ({P_G + "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(10, 128)}, "shape mismatch"),
    "1-D projection": ({P_G + "text_projection": torch.zeros(128)}, "layout not understood"),
    "1-D token embedding": ({P_G + "token_embedding.weight": torch.zeros(128)}, "layout not understood"),
    "missing MLP": ({P_G + "transformer.resblocks.0.mlp.c_fc.weight": None}, "c_fc.weight' is missing"),
    "label_emb width": ({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(256, 7)},
                        "label_emb takes 7 inputs, but this SDXL file's vector has 1632"),
    "integer weights": ({P_G + "ln_final.weight": torch.zeros(128, dtype=torch.int32)}, "wrong kind"),
}


@pytest.mark.parametrize("name", list(MANGLED))
def test_mangled_sdxl_files_get_a_checkpoint_error(folder, name):
    changes, words = MANGLED[name]
    sd = safetensors.torch.load_file(str(_write(folder, "sdxl")))
    for key, value in changes.items():
        if value is None:
            sd.pop(key)
        else:
            sd[key] = value
    path = folder / "mangled.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(path)
