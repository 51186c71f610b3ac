"""ControlNet network: original and diffusers file formats against diffusers' ControlNetModel, refusals.

Tiny networks shaped like the tiny test UNet (``tiny_models.unet_config()``, context 64), every weight
random and non-zero (the zero convs too, or the outputs would say nothing), fp32.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import safetensors.torch
import torch

from extensions.controlnet import cldm
from tests import tiny_models
from tests.tiny import tiny_checkpoint
from webui.engine.files import CheckpointError
from webui.engine.unet import UNetConfig

TOLERANCE = 1e-4
# what shapes say of the tiny config (the middle depth is read, not left to the default)
EXPECTED_CONFIG = dataclasses.replace(tiny_models.unet_config(), transformer_depth_middle=1)


def _randomize(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random non-zero weights scaled by fan-in (so activations stay O(1)), norms near 1, small biases."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=generator)
        if value.ndim > 1:
            out[key] = noise / value[0].numel() ** 0.5
        elif key.endswith("weight"):
            out[key] = 1.0 + 0.1 * noise
        else:
            out[key] = 0.1 * noise
    return out


def _diffusers_config(folder, config) -> str:
    """A local diffusers ControlNetModel config folder for a tiny SD1-style config."""
    os.makedirs(folder, exist_ok=True)
    mult = config.channel_mult
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({
            "_class_name": "ControlNetModel", "in_channels": config.in_channels, "conditioning_channels": 3,
            "flip_sin_to_cos": True, "freq_shift": 0,
            "down_block_types": ["CrossAttnDownBlock2D" if i in config.attention_levels else "DownBlock2D"
                                 for i in range(len(mult))],
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "block_out_channels": [config.model_channels * m for m in mult],
            "layers_per_block": config.num_res_blocks, "downsample_padding": 1, "mid_block_scale_factor": 1,
            "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": config.context_dim,
            "attention_head_dim": config.num_heads,  # diffusers' SD1 name for the head count
            "use_linear_projection": False, "conditioning_embedding_out_channels": list(cldm.HINT_BLOCK_CHANNELS),
            "controlnet_conditioning_channel_order": "rgb", "global_pool_conditions": False,
        }, f)
    return str(folder)


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    context = torch.randn(2, 77, tiny_models.CONTEXT_DIM, generator=g)
    return x, hint, torch.tensor([999, 261]), context


def _diffusers_outputs(model, x, hint, t, context) -> list[torch.Tensor]:
    with torch.no_grad():
        down, mid = model(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
    return [*down, mid]


def _max_diff(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    assert len(ours) == len(theirs) == 5  # tiny layout: 4 input blocks + middle (SD 1.5: 12 + 1)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs))


@pytest.fixture(scope="module")
def original_file(tmp_path_factory):
    """Our ControlNet with random weights, saved as ``control_model.*`` safetensors."""
    torch.manual_seed(0)
    net = cldm.ControlNet(tiny_models.unet_config())
    net.load_state_dict(_randomize(net, seed=0))
    path = tmp_path_factory.mktemp("cn") / "control_tiny.safetensors"
    safetensors.torch.save_file({cldm.PREFIX + k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path, net


def test_original_format_matches_diffusers(original_file, tmp_path):
    import diffusers

    path, _ = original_file
    reference = diffusers.ControlNetModel.from_single_file(
        str(path), config=_diffusers_config(tmp_path / "config", tiny_models.unet_config()),
        local_files_only=True, torch_dtype=torch.float32).eval()
    net = cldm.load_controlnet(path)
    assert net.config == EXPECTED_CONFIG
    assert all(float(p.abs().min()) > 0 or p.ndim == 1 for p in net.zero_convs.parameters())
    inputs = _inputs()
    with torch.no_grad():
        ours = net(*inputs)
    theirs = _diffusers_outputs(reference, *inputs)
    assert min(float(r.abs().max()) for r in theirs) > 1e-2  # every residual carries signal
    assert _max_diff(ours, theirs) < TOLERANCE


def test_diffusers_format_matches_diffusers(tmp_path):
    import diffusers

    config = tiny_models.unet_config()
    folder = _diffusers_config(tmp_path / "config", config)
    torch.manual_seed(0)
    reference = diffusers.ControlNetModel.from_config(diffusers.ControlNetModel.load_config(folder)).eval()
    reference.load_state_dict(_randomize(reference, seed=3))
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))

    net = cldm.load_controlnet(path)
    assert net.config == EXPECTED_CONFIG
    inputs = _inputs(seed=2)
    with torch.no_grad():
        ours = net(*inputs)
    assert _max_diff(ours, _diffusers_outputs(reference, *inputs)) < TOLERANCE


def test_other_original_variants_load_the_same(original_file, tmp_path):
    """Unprefixed keys, a full ControlLDM file (UNet keys beside control_model.*), fp16 storage, a .pth."""
    path, net = original_file
    sd = net.state_dict()
    unprefixed = tmp_path / "unprefixed.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(unprefixed))
    full = tmp_path / "full.safetensors"
    full_sd = {cldm.PREFIX + k: v.contiguous() for k, v in sd.items()}
    full_sd.update(tiny_models.random_unet_state_dict(tiny_models.unet_config()))
    safetensors.torch.save_file(full_sd, str(full))
    pth = tmp_path / "control.pth"
    torch.save({"state_dict": {cldm.PREFIX + k: v for k, v in sd.items()}}, str(pth))

    inputs = _inputs()
    with torch.no_grad():
        expected = net(*inputs)
        for variant in (unprefixed, full, pth):
            assert _max_diff(cldm.load_controlnet(variant)(*inputs), expected) == 0.0
        half = cldm.load_controlnet(path, dtype=torch.float16)
        assert half.dtype == torch.float16
        assert _max_diff([r.float() for r in half(*inputs)], expected) < 0.05 * max(
            float(r.abs().max()) for r in expected)


def test_arch_metadata_overrides_heads(original_file, tmp_path):
    path, net = original_file
    sd = {cldm.PREFIX + k: v.contiguous() for k, v in net.state_dict().items()}
    custom = tmp_path / "heads4.safetensors"
    safetensors.torch.save_file(sd, str(custom), metadata={"webui.arch": json.dumps({"unet": {"num_heads": 4}})})
    assert cldm.load_controlnet(custom).config.num_heads == 4
    assert cldm.load_controlnet(path).config.num_heads == 8


def test_sd15_layout_matches_diffusers_names_and_shapes():
    """Full-size SD 1.5 layout on the meta device: every diffusers tensor maps to one of ours, same shape."""
    import diffusers

    with torch.device("meta"):
        reference = diffusers.ControlNetModel(cross_attention_dim=768)  # otherwise SD 1.5's defaults
        ours = cldm.ControlNet(UNetConfig())
    converted = cldm.diffusers_to_original(reference.state_dict())
    mine = ours.state_dict()
    assert len(mine) == 340 and set(converted) == set(mine)
    assert all(converted[k].shape == mine[k].shape for k in mine)
    config = cldm.controlnet_config(converted)
    assert (config.model_channels, config.channel_mult, config.num_res_blocks, config.context_dim,
            config.num_heads) == (320, (1, 2, 4, 4), 2, 768, 8)
    assert len(cldm.encoder_channels(config)) + 1 == 13  # 12 input blocks + the middle block
    assert cldm.hint_block_spec(converted) == (3, (16, 32, 96, 256))


def test_fresh_network_starts_with_zero_residuals():
    net = cldm.ControlNet(tiny_models.unet_config())
    with torch.no_grad():
        residuals = net(*_inputs())
    assert len(residuals) == len(cldm.encoder_channels(net.config)) + 1
    assert all(float(r.abs().max()) == 0.0 for r in residuals)
    assert net.compatible_with(tiny_models.unet_config()) is None
    assert "context_dim" in net.compatible_with(UNetConfig(context_dim=768))


def test_files_that_are_not_controlnets_are_refused(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        cldm.load_controlnet(checkpoint)
    message = str(error.value)
    assert str(checkpoint) in message and "not a ControlNet" in message
    assert "model.diffusion_model.*" in message and "first_stage_model.*" in message  # what was found
    assert "controlnet_cond_embedding" in message  # what was expected

    lora = tmp_path / "lora.safetensors"
    safetensors.torch.save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 32)},
                                str(lora))
    with pytest.raises(CheckpointError, match="lora_unet_down_blocks_0_attentions_0_proj_in"):
        cldm.load_controlnet(lora)


def test_difference_controlnet_is_refused(original_file, tmp_path):
    """sd-webui-controlnet's old "difference" files hold weights relative to a base model: not loadable alone."""
    _, net = original_file
    sd = {cldm.PREFIX + k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / "diff_control.safetensors"
    safetensors.torch.save_file({**sd, "difference": torch.tensor([1.0])}, str(path))
    with pytest.raises(CheckpointError, match="'difference' ControlNet"):
        cldm.load_controlnet(path)


def test_truncated_controlnet_is_refused(original_file, tmp_path):
    _, net = original_file
    sd = {cldm.PREFIX + k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("middle_block_out")}
    path = tmp_path / "partial.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="missing 2 key.*middle_block_out.0"):
        cldm.load_controlnet(path)


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return os.makedirs, (self.target,)


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3), "x": _Payload(str(marker))},
               str(path))
    with pytest.raises(CheckpointError, match="refused") as error:
        cldm.load_controlnet(path)
    assert "makedirs" in str(error.value) and str(path) in str(error.value)
    assert not marker.exists()
