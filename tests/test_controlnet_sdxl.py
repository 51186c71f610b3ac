"""SDXL ControlNets: both file formats against diffusers' ``ControlNetModel`` (``addition_embed_type="text_time"``),
end to end through our engine against diffusers' SDXL UNet + ControlNetModel in a k-diffusion loop, and the
refusal of a ControlNet made for another family.

The tiny SDXL checkpoint is ``tests/tiny_families.py``'s (context 192 = CLIP-L 64 + bigG 128, size vector
1632 = pooled 96 + 6 x 256, no attention at level 0, transformer depths 1 and 2, middle depth 2, 64 channels
per head); the ControlNets copy its encoder, every weight random and non-zero (``_randomize``).
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from extensions.controlnet import cldm
from tests import tiny_families as tf
from tests import tiny_models
from tests.references import k_diffusion
from tests.tiny import tiny_checkpoint
from tests.test_controlnet_model import _randomize
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest
from webui.engine.unet import UNetConfig
from webui.hooks.registry import ExtensionManager
from webui.options import Options
from webui.paths import PROJECT_ROOT, Paths
from webui.jobs.parameters import extra_params

TOLERANCE = 1e-4
W = H = 64
PROMPT, NEGATIVE = "a red circle on a blue background", "blurry"
CFG, STEPS, SEED, WEIGHT = 7.0, 6, 7, 0.8
XL = tf.SDXL_UNET
RESIDUALS = 7   # tiny SDXL: 6 input blocks (stem; per level 1 res block, a downsampler between) + middle; real: 9 + 1
# SDXL 1.0's full-size encoder (what the released SDXL ControlNets copy)
SDXL_REAL = UNetConfig(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2,
                       attention_levels=(1, 2), transformer_depth=(0, 2, 10), transformer_depth_middle=10,
                       context_dim=2048, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                       adm_in_channels=2816)


def _diffusers_xl_config(config: UNetConfig) -> dict:
    """diffusers' ControlNetModel config for an SDXL-shaped encoder (as controlnet-canny-sdxl-1.0's
    config.json: attention_head_dim holds head counts per level, the mid block takes the last depth)."""
    channels = [config.model_channels * m for m in config.channel_mult]
    attention = [lv in config.attention_levels and d > 0 for lv, d in enumerate(config.transformer_depth)]
    depths = [d if a else 1 for d, a in zip(config.transformer_depth, attention)]
    assert depths[-1] == config.middle_depth
    return {
        "_class_name": "ControlNetModel", "in_channels": config.in_channels, "conditioning_channels": 3,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False,
        "block_out_channels": channels, "layers_per_block": config.num_res_blocks, "downsample_padding": 1,
        "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
        "cross_attention_dim": config.context_dim, "transformer_layers_per_block": depths,
        "attention_head_dim": [c // config.num_head_channels for c in channels], "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": tf.TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": config.adm_in_channels,
        "conditioning_embedding_out_channels": list(cldm.HINT_BLOCK_CHANNELS),
        "controlnet_conditioning_channel_order": "rgb", "global_pool_conditions": False,
        "upcast_attention": False, "resnet_time_scale_shift": "default",
    }


def _diffusers_controlnet(config: UNetConfig, seed: int):
    import diffusers

    model = diffusers.ControlNetModel.from_config(_diffusers_xl_config(config)).eval()
    model.load_state_dict(_randomize(model, seed=seed))
    return model


def _inputs(seed: int = 1):
    """x, hint, t, context, pooled bigG, size numbers (original h, w, crop top, left, target h, w)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    context = torch.randn(2, 77, XL.context_dim, generator=g)
    pooled = torch.randn(2, tf.SDXL_OPEN_CLIP.proj_dim, generator=g)
    numbers = torch.tensor([[1024.0, 768, 0, 16, 1024, 768], [512.0, 512, 8, 0, 512, 512]])
    return x, hint, torch.tensor([999, 261]), context, pooled, numbers


def _ours(net, x, hint, t, context, pooled, numbers):
    with torch.no_grad():
        return net(x, hint, t, context, tf.sdxl_vector(pooled, numbers))


def _theirs(model, x, hint, t, context, pooled, numbers):
    with torch.no_grad():
        down, mid = model(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": numbers})
    return [*down, mid]


def _max_diff(ours, theirs) -> float:
    assert len(ours) == len(theirs) == RESIDUALS
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with tf.one_thread():      # these tiny networks are memory-bound: faster on one thread on a busy machine
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cn-xl")


# ---------------------------------------------------------------------------------- the network itself

def test_original_format_matches_diffusers(root):
    """Our network with random weights, saved as control_model.* (sd-webui-controlnet's / ComfyUI's layout for
    SDXL: label_emb.0.0/0.2, input_blocks without attention at level 0, depth-2 transformers), read by
    diffusers' own original-layout converter into its ControlNetModel."""
    import diffusers
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

    net = cldm.ControlNet(XL)
    net.load_state_dict(_randomize(net, seed=11))
    sd = {cldm.PREFIX + k: v.contiguous() for k, v in net.state_dict().items()}
    assert sd[cldm.PREFIX + "label_emb.0.0.weight"].shape == (4 * XL.model_channels, tf.SDXL_ADM_IN)
    assert cldm.PREFIX + "input_blocks.1.1.norm.weight" not in sd                       # level 0: no attention
    assert cldm.PREFIX + "input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight" in sd  # level 1: depth 1
    assert cldm.PREFIX + "input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight" in sd  # level 2: depth 2
    assert cldm.PREFIX + "middle_block.1.transformer_blocks.1.attn2.to_k.weight" in sd
    assert cldm.PREFIX + "zero_convs.5.0.weight" in sd and cldm.PREFIX + "zero_convs.6.0.weight" not in sd
    path = root / "control_xl_original.safetensors"
    safetensors.torch.save_file(sd, str(path))

    config = _diffusers_xl_config(XL)
    reference = diffusers.ControlNetModel.from_config(config).eval()
    converted = convert_controlnet_checkpoint(sd, config)
    # diffusers' ControlNet converter leaves the size-vector MLP out; its own table names it
    for theirs, ours in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
        converted[theirs] = sd[cldm.PREFIX + ours]
    reference.load_state_dict(converted, strict=True)

    loaded = cldm.load_controlnet(path)
    assert loaded.config == XL
    inputs = _inputs()
    theirs = _theirs(reference, *inputs)
    assert min(float(r.abs().max()) for r in theirs) > 1e-2       # every residual carries signal
    assert _max_diff(_ours(loaded, *inputs), theirs) < TOLERANCE
    # the size vector matters: other sizes change every residual after the stem (a plain conv, no embedding)
    other = _ours(loaded, *inputs[:5], inputs[5] * 0.5)
    assert min(float((a - b).abs().max()) for a, b in zip(other[1:], theirs[1:])) > 1e-3


def test_diffusers_format_matches_diffusers(root):
    """diffusers' ControlNetModel for SDXL (text_time, transformer_layers_per_block) saved as it saves itself."""
    reference = _diffusers_controlnet(XL, seed=12)
    path = root / "diffusion_pytorch_model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    net = cldm.load_controlnet(path)
    assert net.config == XL
    assert len(net.input_blocks) + 1 == RESIDUALS
    inputs = _inputs(seed=2)
    theirs = _theirs(reference, *inputs)
    assert min(float(r.abs().max()) for r in theirs) > 1e-2
    assert _max_diff(_ours(net, *inputs), theirs) < TOLERANCE


def test_full_size_sdxl_layout_matches_diffusers_names_and_shapes():
    """SDXL 1.0's ControlNet (controlnet-canny-sdxl-1.0's config) on the meta device: every diffusers tensor maps
    to one of ours with its shape, and the config read back from the shapes is SDXL's."""
    import diffusers

    with torch.device("meta"):
        reference = diffusers.ControlNetModel.from_config(_diffusers_xl_config(SDXL_REAL))
        ours = cldm.ControlNet(SDXL_REAL)
    converted = cldm.diffusers_to_original(reference.state_dict())
    mine = ours.state_dict()
    assert set(converted) == set(mine) and all(converted[k].shape == mine[k].shape for k in mine)
    assert mine["label_emb.0.0.weight"].shape == (1280, 2816)
    assert mine["input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"].shape == (1280, 2048)
    assert mine["input_blocks.4.1.proj_in.weight"].shape == (640, 640)          # linear projections
    assert mine["input_blocks.7.1.transformer_blocks.0.attn1.to_q.weight"].shape == (1280, 1280)
    assert "input_blocks.1.1.norm.weight" not in mine and "input_blocks.9.0.in_layers.0.weight" not in mine
    assert mine["zero_convs.8.0.weight"].shape == (1280, 1280, 1, 1) and "zero_convs.9.0.weight" not in mine
    assert mine["input_hint_block.14.weight"].shape == (320, 256, 3, 3)
    for sd in (converted, mine):
        assert cldm.controlnet_config(sd) == SDXL_REAL
    assert ours.input_blocks[7][1].transformer_blocks[0].attn1.heads == 20     # 64 channels per head
    assert len(ours.input_blocks) + 1 == 10


def test_diffusers_mid_and_small_variants_are_refused_by_name():
    """transformer_layers_per_block 0 makes diffusers build attention blocks without transformer layers (the
    '-mid' / '-small' SDXL ControlNets); our encoder has no such block, so they are refused, not half-loaded."""
    import diffusers

    config = _diffusers_xl_config(XL)
    config["transformer_layers_per_block"] = [1, 0, 2]
    with torch.device("meta"):
        sd = diffusers.ControlNetModel.from_config(config).state_dict()
    assert "down_blocks.1.attentions.0.norm.weight" in sd
    with pytest.raises(cldm.CheckpointError, match=r"no transformer layers \(down_blocks.1.attentions"):
        cldm.ControlNet.from_state_dict(sd, name="mid.safetensors")
    with torch.device("meta"):
        original = cldm.ControlNet(XL).state_dict()     # the same, converted to the original layout
    original.update({f"input_blocks.3.1.{k}": torch.empty(128, device="meta") for k in ("norm.weight", "norm.bias")})
    for k in [k for k in original if k.startswith("input_blocks.3.1.transformer_blocks.")]:
        del original[k]
    with pytest.raises(cldm.CheckpointError, match=r"no transformer layers \(input_blocks.3.1,"):
        cldm.ControlNet.from_state_dict(original, name="mid.safetensors")


# ---------------------------------------------------------------------------------- wrong families

def test_family_messages_name_both_families():
    with torch.device("meta"):
        sd15, sd21, xl = (cldm.ControlNet(c) for c in (UNetConfig(), _sd2_config(), SDXL_REAL))
    assert cldm.family_label(sd15.config) == "SD 1.x" and cldm.family_label(xl.config) == "SDXL"
    assert sd15.compatible_with(SDXL_REAL, "SDXL") == \
        "an SD 1.x ControlNet (context 768); the loaded model is SDXL (context 2048)"
    assert xl.compatible_with(UNetConfig(), "SD 1.x") == \
        "an SDXL ControlNet (context 2048); the loaded model is SD 1.x (context 768)"
    assert sd21.compatible_with(UNetConfig()) == \
        "an SD 2.x ControlNet (context 1024); the loaded model is SD 1.x (context 768)"
    refiner = UNetConfig(model_channels=384, channel_mult=(1, 2, 4, 4), context_dim=1280, num_heads=-1,
                         num_head_channels=64, adm_in_channels=2560, transformer_depth=(0, 4, 4, 0))
    assert xl.compatible_with(refiner, "SDXL refiner") == \
        "an SDXL ControlNet (context 2048); the loaded model is SDXL refiner (context 1280)"
    # what fits: the same family, an inpainting UNet (the ControlNet reads its first 4 channels)
    assert xl.compatible_with(SDXL_REAL, "SDXL") is None
    assert xl.compatible_with(UNetConfig(**{**SDXL_REAL.__dict__, "in_channels": 9}), "SDXL inpainting") is None
    assert sd15.compatible_with(UNetConfig(in_channels=9), "SD 1.x inpainting") is None


def _sd2_config() -> UNetConfig:
    return UNetConfig(context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)


# ---------------------------------------------------------------------------------- end to end

def _hint_image() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    img[(xx - 20) ** 2 + (yy - 24) ** 2 < 150] = 255          # a white disc on black: an edge map
    img[40:56, 36:60, 1] = 200
    return img


def _b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def setup(root, make_engine):
    """An SDXL engine, the extension over a models/controlnet folder holding a tiny SDXL ControlNet
    (diffusers format, as the SDXL ControlNets are released) and an SD1-shaped one (original format)."""
    ckpt = tiny_checkpoint(root / "sdxl.safetensors", "sdxl")
    folder = root / "models" / "controlnet"
    folder.mkdir(parents=True)
    controlnet = _diffusers_controlnet(XL, seed=5)
    safetensors.torch.save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()},
                                str(folder / "control_tiny_xl.safetensors"))
    sd1 = cldm.ControlNet(tiny_models.unet_config())
    sd1.load_state_dict(_randomize(sd1, seed=6))
    safetensors.torch.save_file({cldm.PREFIX + k: v.contiguous() for k, v in sd1.state_dict().items()},
                                str(folder / "control_tiny_sd1.safetensors"))
    manager = ExtensionManager(PROJECT_ROOT / "extensions", Paths(root=root), Options(root / "config.json"),
                               lambda m: None)
    manager.load()
    assert manager.extensions["controlnet"].state == "loaded", manager.extensions["controlnet"].errors
    engine = make_engine(ckpt)
    assert engine.model.family.name == "sdxl"
    return {"ckpt": ckpt, "controlnet": controlnet, "manager": manager, "engine": engine,
            "config": tf.family_diffusers_config_dir(root, "sdxl")}


def _generate(engine, manager, model: str | None, steps: int = STEPS):
    args = {}
    if model is not None:
        unit = {"enabled": True, "image": _b64(_hint_image()), "module": "none", "model": model,
                "weight": WEIGHT, "resize_mode": "Just Resize"}
        args = manager.api_script_args({"controlnet": {"args": [unit]}})
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", steps=steps,
                                seed=SEED, width=W, height=H, cfg_scale=CFG)
    return engine.generate(request, hooks=manager.job_hooks(args))


class XLControlShim(torch.nn.Module):
    """k-diffusion's CompVisDenoiser around diffusers' SDXL UNet with diffusers' ControlNetModel residuals,
    as StableDiffusionXLControlNetPipeline calls them (text_embeds + time_ids to both)."""

    def __init__(self, pipe, controlnet, hint, scale):
        super().__init__()
        self.unet, self.controlnet, self.hint, self.scale = pipe.unet, controlnet, hint, scale
        self.register_buffer("alphas_cumprod", pipe.scheduler.alphas_cumprod.float())

    def apply_model(self, x, t, cond, pooled, time_ids):
        added = {"text_embeds": pooled, "time_ids": time_ids}
        down, mid = self.controlnet(x, t, encoder_hidden_states=cond, added_cond_kwargs=added,
                                    controlnet_cond=self.hint.expand(x.shape[0], -1, -1, -1),
                                    conditioning_scale=self.scale, return_dict=False)
        return self.unet(x, t, encoder_hidden_states=cond, added_cond_kwargs=added,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid).sample


@torch.no_grad()
def _reference_image(setup) -> np.ndarray:
    """diffusers' networks, k-diffusion's Euler over A1111's discrete schedule, A1111's rules: CPU noise from
    the seed, CFG on (prompt, negative) rows, SDXL conditioning = [CLIP-L hidden_states[-2], bigG
    hidden_states[-2]] side by side, bigG's projected pooled output, time ids (h, w, 0, 0, h, w)."""
    pipe = tf.load_diffusers_pipeline(setup["ckpt"], setup["config"], "sdxl")
    sampling, external = k_diffusion()

    def encode(text):
        ids_l = pipe.tokenizer([text], padding="max_length", max_length=77, truncation=True,
                               return_tensors="pt").input_ids
        ids_g = pipe.tokenizer_2([text], padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
        clip_l = pipe.text_encoder(ids_l, output_hidden_states=True)
        bigg = pipe.text_encoder_2(ids_g, output_hidden_states=True)
        return torch.cat([clip_l.hidden_states[-2], bigg.hidden_states[-2]], dim=-1), bigg.text_embeds

    (cond, pooled), (uncond, uncond_pooled) = encode(PROMPT), encode(NEGATIVE)
    time_ids = torch.tensor([[H, W, 0, 0, H, W]], dtype=torch.float32)
    hint = torch.from_numpy(_hint_image()).permute(2, 0, 1)[None].float() / 255.0
    model = external.CompVisDenoiser(XLControlShim(pipe, setup["controlnet"], hint, WEIGHT), quantize=False)

    def denoiser(x, sigma):
        out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]),
                    pooled=torch.cat([pooled, uncond_pooled]), time_ids=time_ids.expand(2, -1))
        c, u = out.chunk(2)
        return u + (c - u) * CFG

    sigmas = model.get_sigmas(STEPS)
    noise = torch.randn((4, H // 8, W // 8), generator=torch.Generator("cpu").manual_seed(SEED))[None]
    latent = sampling.sample_euler(denoiser, noise * sigmas[0], sigmas, disable=True)
    image = pipe.vae.decode(latent / 0.13025).sample[0]
    return (torch.clamp((image + 1) / 2, 0, 1) * 255).permute(1, 2, 0).numpy().astype(np.uint8)


def _pixel_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def test_sdxl_controlnet_end_to_end_matches_diffusers(setup):
    expected = _reference_image(setup)
    result = _generate(setup["engine"], setup["manager"], "control_tiny_xl")
    assert not result.warnings, result.warnings
    assert _pixel_diff(result.images[0].image, expected) <= 2
    plain = _generate(setup["engine"], setup["manager"], None)
    assert _pixel_diff(plain.images[0].image, expected) > 4      # the ControlNet did change the picture
    assert np.asarray(expected).std() > 5                         # and the picture is not flat
    assert extra_params(result.facts)["ControlNet 0"].startswith("Module: none, Model: control_tiny_xl [")


def test_sd1_controlnet_on_sdxl_model_is_refused_by_name(setup):
    result = _generate(setup["engine"], setup["manager"], "control_tiny_sd1", steps=1)
    assert len(result.warnings) == 1, result.warnings
    message = result.warnings[0]
    assert message.startswith("ControlNet unit 0: control_tiny_sd1 is a custom ControlNet (context 64); "
                              "the loaded model is SDXL (context 192); they differ in "), message
    assert "context_dim 64 vs 192" in message and "adm_in_channels None vs 1632" in message
    assert message.endswith(": not applied") and "ControlNet 0" not in extra_params(result.facts)


def test_sdxl_controlnet_on_sd1_model_is_refused_by_name(setup, root):
    engine = Engine("cpu", "full")
    engine.load(tiny_checkpoint(root / "sd1.safetensors"))
    result = _generate(engine, setup["manager"], "control_tiny_xl", steps=1)
    assert len(result.warnings) == 1, result.warnings
    message = result.warnings[0]
    assert message.startswith("ControlNet unit 0: control_tiny_xl is a custom SDXL-style ControlNet (context 192); "
                              "the loaded model is SD 1.x (context 64); they differ in "), message
    assert "adm_in_channels 1632 vs None" in message


def test_soft_control_modes_scale_like_sd_webui_controlnet_for_sdxl():
    """sd-webui-controlnet keeps the first 10 of its 13 soft weights for SDXL: 0.825 ** (12 - i)."""
    from webui.engine.cond import Cond
    from webui.engine.patches import CallInfo
    from extensions.controlnet import units

    class Net(torch.nn.Module):
        input_blocks = list(range(9))
        config = XL

        def hint_features(self, hint):
            return hint

        def forward(self, x, hint, t, context, y=None, features=None):
            assert y is not None and y.shape == (2, tf.SDXL_ADM_IN)
            return [torch.ones_like(x) for _ in range(10)]

    cond = Cond(torch.zeros(2, 77, XL.context_dim), torch.zeros(2, tf.SDXL_ADM_IN))
    provider = units.control_residuals(Net(), torch.zeros(1, 3, 16, 16), units.Unit(enabled=True, control_mode=1))
    extras = provider(torch.zeros(2, 4, 2, 2), None, cond, CallInfo(0, 0, 10, [False, True]))
    scales = [float(r.max()) for r in [*extras.input_residuals, extras.middle_residual]]
    assert scales == pytest.approx([0.825 ** (12 - i) for i in range(10)])

