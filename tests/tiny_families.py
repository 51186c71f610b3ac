"""Tiny random SD 2.x / SDXL / SDXL-refiner checkpoints in the original single-file layouts, for fast tests.

``tests.tiny.tiny_checkpoint(path, family)`` (``_write_family_checkpoint`` here) writes a file whose key
names, prefixes and tensor ranks are those of the real released ``.safetensors`` files
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.model.*`` for SD 2.x,
``conditioner.embedders.N.*`` for SDXL), the real CLIP vocabulary (49408) and context length (77), but a few
channels per network and random, non-degenerate weights (``tiny_models._perturbed``).
``family_diffusers_config_dir(root, family)`` writes the local folder (what ``save_pretrained`` writes, minus
the weights) with which diffusers -- the independent reference of the parity tests -- loads such a file
offline::

    StableDiffusionPipeline.from_single_file(path, config=folder, local_files_only=True,
                                             safety_checker=None, requires_safety_checker=False)  # sd2
    StableDiffusionInpaintPipeline.from_single_file(...same...)                                     # sd2 inpaint
    StableDiffusionXLPipeline.from_single_file(path, config=folder, local_files_only=True)          # sdxl
    StableDiffusionXLInpaintPipeline.from_single_file(...)                                          # sdxl inpaint
    StableDiffusionXLImg2ImgPipeline.from_single_file(...)                                          # sdxl-refiner

Layouts (tiny sizes; real sizes in brackets):

* UNet: ``webui.engine.unet.UNetModel`` state dict (its names are LDM's), ``model_channels`` 64 [320/384],
  ``num_res_blocks`` 1 [2], 64 channels per head, linear proj in/out. ``SD2_UNET``, ``SDXL_UNET``,
  ``SDXL_REFINER_UNET``; ``in_channels`` 9 for inpainting.
* VAE: ``tiny_models.VAE`` under ``first_stage_model.``.
* OpenCLIP text tower (SD 2.x ViT-H under ``cond_stage_model.model.``, SDXL bigG under
  ``conditioner.embedders.1.model.``, the refiner's bigG under ``conditioner.embedders.0.model.``):
  ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.{i}.{ln_1, attn.in_proj_weight
  (q;k;v stacked), attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final``,
  ``text_projection`` [D, P] (used as ``x @ P``) and a 0-dim ``logit_scale``. Width 128 [1024/1280], 2 heads,
  3 layers [24/32], exact GELU. SD 2.x's projection is square [D, D] and unused; SDXL's is [128, 96]
  [1280, 1280] -- deliberately not square, so a transposed read fails loudly.
* SDXL's CLIP-L (``conditioner.embedders.0.transformer.text_model.`` + transformers' ``CLIPTextModel`` names,
  with the old ``embeddings.position_ids`` buffer real files carry): hidden 64 [768], 1 head, 3 layers [12],
  quick_gelu. Context = 64 + 128 = 192 [2048]; ``adm_in_channels`` = 96 + 6 * 256 = 1632 [2816]; the
  refiner's = 96 + 5 * 256 = 1376 [2560] (pooled bigG projection + 256 per size/crop/aesthetic number).
* ``v_pred=True`` (SDXL) adds the root markers ``v_pred`` and ``ztsnr`` as ComfyUI and the NoobAI-XL v-pred
  files write them: ``torch.tensor([])``, i.e. float32 with shape ``[0]`` (empty, *not* 0-dim).
* ``v_like=True`` (SD 2.x) sets the UNet's ``out.2.bias`` to about -3, so A1111's one-step test (UNet at
  t=999 on a latent and a context filled with 0.5: v when ``mean(out - x) < -1``) says "v"; the default
  file gives about -0.5 there ("eps"). ``a1111_v_test`` runs that test on our ``UNetModel``.

What diffusers (0.42, ``diffusers/loaders/single_file_utils.py``) does with these files -- worth knowing when
comparing against it:

* ``config=<folder>`` is required: without it diffusers infers the model type from the keys
  (``infer_diffusers_model_type`` looks for ``resblocks.9`` of bigG, a 1024-wide ``attn2.to_k``...), calls
  every tiny file "v1" (or "inpainting") and would fetch SD 1.5's configs from the Hub. With it, the pipeline
  and every component config come from the folder; each text encoder's weights are still picked by key
  *presence*: ``cond_stage_model.model.token_embedding.weight`` (SD 2.x OpenCLIP),
  ``conditioner.embedders.0.transformer...position_embedding.weight`` whose width equals the config's hidden
  size (SDXL CLIP-L), ``conditioner.embedders.1.model.positional_embedding`` of matching width (bigG), and
  ``conditioner.embedders.0.model.text_projection`` (refiner). SDXL's two encoders are told apart only by
  width, so the tiny CLIP-L (64) and bigG (128) must differ in width, as the real ones (768, 1280) do.
* ``convert_open_clip_checkpoint`` splits ``in_proj_weight`` at ``text_projection.shape[0]`` (= D, the width,
  for both [D, D] and [D, P]) into q, k, v, and loads ``text_projection.T`` as ``text_projection.weight``
  (nn.Linear orientation), so the pooled output is ``ln_final(x)[eot] @ text_projection`` as in OpenCLIP.
* SD 2.x uses the *penultimate* OpenCLIP layer followed by ``ln_final``. diffusers does this by configuring a
  ``CLIPTextModel`` with one layer fewer (real: ``num_hidden_layers`` 23 of 24, "gelu"; here 2 of 3) and using
  its ``last_hidden_state`` (which ends with ``final_layer_norm``). The converter skips the last layer's keys
  only for the real file (``SD_2_TEXT_ENCODER_KEYS_TO_IGNORE`` names ``resblocks.23`` literally, plus
  ``cond_stage_model.model.text_projection``); for the tiny file ``resblocks.2.*`` is converted and then
  dropped silently as unexpected keys by ``load_model_dict_into_meta`` -- same result. ``logit_scale`` is
  never read.
* SDXL's pipelines use ``hidden_states[-2]`` of both encoders (no final layer norm) and the projected pooled
  output of ``text_encoder_2``, so SDXL's configs keep all layers (3 here, 12 / 32 real).
* SDXL's ``force_zeros_for_empty_prompt`` (true in the base and inpainting ``model_index.json``, false in the
  refiner's): when ``negative_prompt`` is ``None`` (the default), diffusers uses *zero tensors* for the
  negative prompt embeddings and pooled embeddings instead of encoding "". A1111 encodes "" instead; pass
  ``negative_prompt=""`` explicitly to compare. ``add_watermarker`` defaults to on only when
  ``invisible-watermark`` is installed (it is not here).
* Config folders: SD 2.x uses DDIMScheduler (as stable-diffusion-2-1), SDXL EulerDiscreteScheduler, both with
  SD's scaled-linear betas (0.00085 .. 0.012), ``steps_offset`` 1, "leading" spacing; VAE ``scaling_factor``
  0.18215 (SD 2.x) / 0.13025 (SDXL). The UNet's ``attention_head_dim`` holds head counts per level (diffusers'
  legacy naming), ``transformer_layers_per_block`` per level with the mid block taking the last entry.
* Tokenizers: SD 2.x's ``tokenizer`` and SDXL's ``tokenizer_2`` pad with "!" (id 0, as open_clip does);
  SDXL's ``tokenizer`` (CLIP-L) pads with ``<|endoftext|>`` (49407).
* CLIPTextModel in transformers >= 5.6 has no ``text_model.`` level (``text_encoder.encoder.layers``), while
  ``CLIPTextModelWithProjection`` still has one (``text_encoder_2.text_model.encoder.layers``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from tests.tiny_models import (UNET_PREFIX, VAE, VAE_PREFIX, _perturbed, _write_json, write_tokenizer_files)
from webui.engine.unet import UNetConfig, UNetModel, timestep_embedding
from webui.engine.vae import AutoencoderKL

FAMILIES = ("sd2", "sdxl", "sdxl-refiner")

VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
TIME_EMBED_DIM = 256  # SDXL's per-number size embedding (addition_time_embed_dim)

SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."


@dataclasses.dataclass(frozen=True)
class OpenCLIPTextConfig:
    """An OpenCLIP text tower: width D, ``layers`` resblocks, MLP 4 D, ``text_projection`` [D, proj_dim]."""
    width: int = 128
    layers: int = 3
    heads: int = 2
    proj_dim: int = 128
    vocab_size: int = VOCAB_SIZE
    context_length: int = CONTEXT_LENGTH


SD2_OPEN_CLIP = OpenCLIPTextConfig(proj_dim=128)  # SD 2.x ViT-H (real: 1024 wide, 16 heads, 24 layers)
SDXL_OPEN_CLIP = OpenCLIPTextConfig(proj_dim=96)  # SDXL bigG (real: 1280 wide, 20 heads, 32 layers, P 1280)
REFINER_OPEN_CLIP = SDXL_OPEN_CLIP
# SDXL's CLIP-L, as transformers.CLIPTextConfig fields (real: 768 wide, 12 heads, 12 layers)
SDXL_CLIP_L = dict(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=3, num_attention_heads=1,
                   intermediate_size=256, max_position_embeddings=CONTEXT_LENGTH, hidden_act="quick_gelu",
                   layer_norm_eps=1e-5, projection_dim=64)

SDXL_CONTEXT_DIM = SDXL_CLIP_L["hidden_size"] + SDXL_OPEN_CLIP.width  # 192
SDXL_ADM_IN = SDXL_OPEN_CLIP.proj_dim + 6 * TIME_EMBED_DIM  # 1632: pooled + original size, crop, target size
REFINER_ADM_IN = REFINER_OPEN_CLIP.proj_dim + 5 * TIME_EMBED_DIM  # 1376: pooled + sizes, crop, aesthetic score

_COMMON = dict(out_channels=4, model_channels=64, num_res_blocks=1, num_heads=-1, num_head_channels=64,
               use_linear_in_transformer=True)
SD2_UNET = UNetConfig(in_channels=4, channel_mult=(1, 2), attention_levels=(0, 1), transformer_depth=(1, 1),
                      transformer_depth_middle=1, context_dim=SD2_OPEN_CLIP.width, **_COMMON)
SDXL_UNET = UNetConfig(in_channels=4, channel_mult=(1, 2, 2), attention_levels=(1, 2), transformer_depth=(0, 1, 2),
                       transformer_depth_middle=2, context_dim=SDXL_CONTEXT_DIM, adm_in_channels=SDXL_ADM_IN,
                       **_COMMON)
SDXL_REFINER_UNET = UNetConfig(in_channels=4, channel_mult=(1, 2, 2, 2), attention_levels=(1, 2),
                               transformer_depth=(0, 1, 1, 0), transformer_depth_middle=1,
                               context_dim=REFINER_OPEN_CLIP.width, adm_in_channels=REFINER_ADM_IN, **_COMMON)
_UNETS = {"sd2": SD2_UNET, "sdxl": SDXL_UNET, "sdxl-refiner": SDXL_REFINER_UNET}

V_LIKE_OUT_BIAS = -3.0


def _family(family: str, inpaint: bool) -> tuple[str, bool]:
    """``family`` checked; "sd2-inpaint" / "sdxl-inpaint" are accepted for (family, inpaint=True)."""
    if family in ("sd2-inpaint", "sdxl-inpaint"):
        family, inpaint = family.removesuffix("-inpaint"), True
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} (or sd2-inpaint, sdxl-inpaint), got {family!r}")
    if inpaint and family == "sdxl-refiner":
        raise ValueError("there is no SDXL refiner inpainting model")
    return family, inpaint


def family_unet_config(family: str, *, inpaint: bool = False) -> UNetConfig:
    """The tiny UNet of ``family`` (9 input channels with ``inpaint``)."""
    family, inpaint = _family(family, inpaint)
    config = _UNETS[family]
    return dataclasses.replace(config, in_channels=9) if inpaint else config


def sdxl_clip_l_config() -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(**SDXL_CLIP_L)


# ------------------------------------------------------------------------------ OpenCLIP text tower

class _ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)  # in_proj_weight / in_proj_bias / out_proj, as open_clip
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(),
                                             c_proj=nn.Linear(4 * width, width)))


class _Transformer(nn.Module):
    def __init__(self, config: OpenCLIPTextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(config.width, config.heads)
                                       for _ in range(config.layers))


class OpenCLIPText(nn.Module):
    """Parameters only, named as open_clip's text tower (``logit_scale`` is added by the writer)."""

    def __init__(self, config: OpenCLIPTextConfig) -> None:
        super().__init__()
        d = config.width
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, d))
        self.transformer = _Transformer(config)
        self.ln_final = nn.LayerNorm(d)
        self.text_projection = nn.Parameter(torch.empty(d, config.proj_dim))
        # open_clip's init_parameters
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = d ** -0.5 * (2 * config.layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=d ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * d) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=d ** -0.5)


def open_clip_state_dict(config: OpenCLIPTextConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random open_clip text-tower tensors (no prefix), including the 0-dim ``logit_scale``."""
    module = OpenCLIPText(config)
    sd = _perturbed(module, generator)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return sd


def open_clip_hidden_states(sd: dict[str, torch.Tensor], prefix: str, input_ids: torch.Tensor,
                            *, heads: int) -> list[torch.Tensor]:
    """Reference forward of an open_clip text tower straight from the file's tensors: the residual stream
    after the embeddings and after each resblock (causal attention, exact GELU), without ``ln_final``."""
    p = prefix
    x = sd[p + "token_embedding.weight"][input_ids].float() + sd[p + "positional_embedding"][:input_ids.shape[1]]
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    out = [x]
    i = 0
    while f"{p}transformer.resblocks.{i}.ln_1.weight" in sd:
        b = f"{p}transformer.resblocks.{i}."
        d = x.shape[-1]
        h = F.layer_norm(x, (d,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"])
        q, k, v = F.linear(h, sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, d // heads)).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
        x = x + F.linear(a, sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"])
        h = F.layer_norm(x, (d,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"])
        h = F.gelu(F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
        out.append(x)
        i += 1
    return out


def open_clip_ln_final(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + "ln_final.weight"], sd[prefix + "ln_final.bias"])


def open_clip_pooled(sd: dict[str, torch.Tensor], prefix: str, input_ids: torch.Tensor, *, heads: int) -> torch.Tensor:
    """open_clip's ``encode_text``: ``ln_final(last layer)`` at the end-of-text token (argmax id) ``@ P``."""
    x = open_clip_ln_final(sd, prefix, open_clip_hidden_states(sd, prefix, input_ids, heads=heads)[-1])
    return x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)] @ sd[prefix + "text_projection"]


# ------------------------------------------------------------------------------ checkpoints

def _unet_and_vae(config: UNetConfig, generator: torch.Generator, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(config)
        vae = AutoencoderKL(VAE)
    sd = {UNET_PREFIX + k: v for k, v in _perturbed(unet, generator).items()}
    sd.update({VAE_PREFIX + k: v for k, v in _perturbed(vae, generator).items()})
    return sd


def _open_clip(config: OpenCLIPTextConfig, prefix: str, generator: torch.Generator, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {prefix + k: v for k, v in open_clip_state_dict(config, generator).items()}


@contextlib.contextmanager
def one_thread():
    """torch on one CPU thread for the block: these tiny, memory-bound tensor jobs are several times faster
    that way when other processes keep the cores busy (and no slower when they do not)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def family_state_dict(family: str, *, inpaint: bool = False, v_like: bool = False, v_pred: bool = False,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """A float32 state dict of ``family`` in its original single-file layout (see the module docstring)."""
    with one_thread():
        return _family_state_dict(family, inpaint=inpaint, v_like=v_like, v_pred=v_pred, seed=seed)


def _family_state_dict(family: str, *, inpaint: bool, v_like: bool, v_pred: bool, seed: int):
    family, inpaint = _family(family, inpaint)
    if v_like and family != "sd2":
        raise ValueError("v_like is the SD 2.x 768-v stand-in; SDXL v-prediction files use v_pred")
    if v_pred and family == "sd2":
        raise ValueError("v_pred markers are an SDXL convention; use v_like for SD 2.x")
    generator = torch.Generator().manual_seed(seed)
    sd = _unet_and_vae(family_unet_config(family, inpaint=inpaint), generator, seed)
    if family == "sd2":
        sd.update(_open_clip(SD2_OPEN_CLIP, SD2_TEXT_PREFIX, generator, seed + 1))
        if v_like:
            bias = sd[UNET_PREFIX + "out.2.bias"]
            sd[UNET_PREFIX + "out.2.bias"] = V_LIKE_OUT_BIAS + 0.05 * torch.randn(bias.shape, generator=generator)
    elif family == "sdxl":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            clip_l = transformers.CLIPTextModel(sdxl_clip_l_config())
        sd.update({SDXL_CLIP_L_PREFIX + k: v for k, v in _perturbed(clip_l, generator).items()})
        sd[SDXL_CLIP_L_PREFIX + "embeddings.position_ids"] = torch.arange(CONTEXT_LENGTH)[None]
        sd.update(_open_clip(SDXL_OPEN_CLIP, SDXL_OPEN_CLIP_PREFIX, generator, seed + 2))
    else:
        sd.update(_open_clip(REFINER_OPEN_CLIP, REFINER_OPEN_CLIP_PREFIX, generator, seed + 1))
    if v_pred:  # as ComfyUI's checkpoint savers and NoobAI-XL v-pred write them
        sd["v_pred"] = torch.tensor([])
        sd["ztsnr"] = torch.tensor([])
    return sd


def _write_family_checkpoint(path, family: str, *, inpaint: bool = False, v_like: bool = False,
                             v_pred: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32,
                             metadata: dict[str, str] | None = None) -> Path:
    """Write a tiny ``family`` checkpoint ("sd2", "sdxl", "sdxl-refiner"; "sd2-inpaint" and "sdxl-inpaint"
    are the same as ``inpaint=True``) as .safetensors.

    ``inpaint``: 9-channel UNet input (sd2, sdxl). ``v_like`` (sd2): A1111's one-step test says v-prediction.
    ``v_pred`` (sdxl): root ``v_pred`` / ``ztsnr`` markers. Floating tensors are stored as ``dtype``
    (the markers stay float32, the CLIP-L ``position_ids`` int64)."""
    import safetensors.torch

    path = Path(path)
    sd = family_state_dict(family, inpaint=inpaint, v_like=v_like, v_pred=v_pred, seed=seed)
    sd = {k: (v.to(dtype) if v.is_floating_point() and k not in ("v_pred", "ztsnr") else v).contiguous()
          for k, v in sd.items()}
    safetensors.torch.save_file(sd, str(path), metadata=metadata)
    return path


def a1111_v_test(unet_sd: dict[str, torch.Tensor], config: UNetConfig = SD2_UNET) -> float:
    """A1111's SD 2.x v-prediction probe on our ``UNetModel``: ``mean(unet(x, 999, c) - x)`` with x, c filled
    with 0.5 (latent 1x4x8x8, context 1x2xC); A1111 calls the model v-prediction when this is below -1.
    ``unet_sd``: a whole checkpoint (prefixed keys) or bare UNet keys."""
    if any(k.startswith(UNET_PREFIX) for k in unet_sd):
        unet_sd = {k.removeprefix(UNET_PREFIX): v for k, v in unet_sd.items() if k.startswith(UNET_PREFIX)}
    unet = UNetModel(config)
    unet.load_state_dict(unet_sd)
    unet.float().eval()
    x = torch.full((1, 4, 8, 8), 0.5)
    context = torch.full((1, 2, config.context_dim), 0.5)
    with torch.no_grad():
        return (unet(x, torch.tensor([999]), context) - x).mean().item()


def sdxl_vector(pooled: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
    """SGM's ``y``: the pooled bigG embedding, then a 256-wide sinusoidal embedding of each size / crop /
    aesthetic number (``numbers`` B x 6 for the base, B x 5 for the refiner), as diffusers' ``add_time_proj``."""
    b = numbers.shape[0]
    emb = timestep_embedding(numbers.flatten(), TIME_EMBED_DIM).reshape(b, -1)
    return torch.cat([pooled, emb.to(pooled.dtype)], dim=-1)


# ------------------------------------------------------------------------------ diffusers config folders

def _write_tokenizer(folder: Path, *, pad: str) -> Path:
    write_tokenizer_files(folder)
    if pad != "<|endoftext|>":
        import json
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            data = json.loads((folder / name).read_text())
            data["pad_token"] = pad
            (folder / name).write_text(json.dumps(data))
    return folder


def _vae_config(scaling_factor: float) -> dict:
    return {"in_channels": VAE.in_channels, "out_channels": VAE.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * len(VAE.ch_mult),
            "up_block_types": ["UpDecoderBlock2D"] * len(VAE.ch_mult),
            "block_out_channels": [VAE.ch * m for m in VAE.ch_mult], "layers_per_block": VAE.num_res_blocks,
            "latent_channels": VAE.z_channels, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 64,
            "scaling_factor": scaling_factor}


def _transformer_layers_per_block(config: UNetConfig, attention: list[bool]) -> list[int]:
    """diffusers' per-level depths: levels without attention ignore theirs (real SDXL: [1, 2, 10]); the mid
    block takes the last entry, so the deepest level, where it has attention, must have the middle's depth."""
    depths = [d if a else 1 for d, a in zip(config.transformer_depth, attention)]
    if attention[-1] and depths[-1] != config.middle_depth:
        raise ValueError("diffusers cannot express a middle depth other than the deepest level's")
    return depths[:-1] + [config.middle_depth]


def _unet_config(config: UNetConfig, **extra) -> dict:
    levels = range(len(config.channel_mult))
    attention = [level in config.attention_levels and config.transformer_depth[level] > 0 for level in levels]
    channels = [config.model_channels * m for m in config.channel_mult]
    return {
        "sample_size": 8, "in_channels": config.in_channels, "out_channels": config.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": channels, "layers_per_block": config.num_res_blocks,
        "transformer_layers_per_block": _transformer_layers_per_block(config, attention),
        "cross_attention_dim": config.context_dim,
        "attention_head_dim": [config.heads(c)[0] for c in channels],  # diffusers' (legacy) name for head counts
        "use_linear_projection": config.use_linear_in_transformer,
        "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
        "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "upcast_attention": False, "only_cross_attention": False, "dual_cross_attention": False,
        "class_embed_type": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
        **extra,
    }


def _scheduler_config(cls: str, prediction_type: str, overrides: dict | None) -> dict:
    import diffusers

    config = {"_class_name": cls, "_diffusers_version": diffusers.__version__, "beta_start": 0.00085,
              "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
              "trained_betas": None, "prediction_type": prediction_type, "steps_offset": 1,
              "timestep_spacing": "leading", "clip_sample": False, "set_alpha_to_one": False,
              "skip_prk_steps": True, "sample_max_value": 1.0}
    if cls == "EulerDiscreteScheduler":
        config.update(interpolation_type="linear", use_karras_sigmas=False)
    return {**config, **(overrides or {})}


def family_diffusers_config_dir(tmp_path, family: str, *, inpaint: bool = False, v_like: bool = False,
                                scheduler: dict | None = None) -> Path:
    """A local diffusers pipeline folder (configs + tokenizers, no weights) for ``family``'s tiny file, under
    ``tmp_path``; load with ``<Pipeline>.from_single_file(path, config=str(folder), local_files_only=True)``.

    ``v_like``: the scheduler's ``prediction_type`` is "v_prediction" (use it for SD 2.x ``v_like`` and
    SDXL ``v_pred`` files), else "epsilon". ``scheduler``: extra scheduler config fields (e.g.
    ``{"rescale_betas_zero_snr": True}`` for a ``ztsnr`` file)."""
    import diffusers

    family, inpaint = _family(family, inpaint)
    version = diffusers.__version__
    name = f"{family}{'_inpaint' if inpaint else ''}{'_v' if v_like else ''}"
    if scheduler:
        name += "_" + "_".join(f"{k}-{v}" for k, v in sorted(scheduler.items()))
    root = Path(tmp_path) / f"diffusers_config_{name}"
    if (root / "model_index.json").exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    unet = family_unet_config(family, inpaint=inpaint)
    prediction_type = "v_prediction" if v_like else "epsilon"

    def model(sub: str, cls: str, config: dict) -> None:
        _write_json(root / sub / "config.json", {"_class_name": cls, "_diffusers_version": version, **config})

    def open_clip_text(sub: str, config: OpenCLIPTextConfig, *, layers: int, projection: bool) -> None:
        text = transformers.CLIPTextConfig(
            vocab_size=config.vocab_size, hidden_size=config.width, num_hidden_layers=layers,
            num_attention_heads=config.heads, intermediate_size=4 * config.width,
            max_position_embeddings=config.context_length, hidden_act="gelu", layer_norm_eps=1e-5,
            projection_dim=config.proj_dim)
        text.architectures = ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"]
        text.save_pretrained(root / sub)

    index = {"_diffusers_version": version, "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["diffusers", "UNet2DConditionModel"]}
    if family == "sd2":
        pipeline = "StableDiffusionInpaintPipeline" if inpaint else "StableDiffusionPipeline"
        model("unet", "UNet2DConditionModel", _unet_config(unet, upcast_attention=v_like))
        model("vae", "AutoencoderKL", _vae_config(0.18215))
        # SD 2.x conditions on the penultimate layer + ln_final: one layer fewer, last_hidden_state
        open_clip_text("text_encoder", SD2_OPEN_CLIP, layers=SD2_OPEN_CLIP.layers - 1, projection=False)
        _write_tokenizer(root / "tokenizer", pad="!")
        sched = "DDIMScheduler"  # as stabilityai/stable-diffusion-2-1
        index.update(text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"],
                     safety_checker=[None, None], feature_extractor=[None, None], image_encoder=[None, None],
                     requires_safety_checker=False)
    else:
        refiner = family == "sdxl-refiner"
        pipeline = ("StableDiffusionXLImg2ImgPipeline" if refiner
                    else "StableDiffusionXLInpaintPipeline" if inpaint else "StableDiffusionXLPipeline")
        model("unet", "UNet2DConditionModel", _unet_config(
            unet, addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
            addition_embed_type_num_heads=64, projection_class_embeddings_input_dim=unet.adm_in_channels))
        vae = _vae_config(0.13025)
        vae["force_upcast"] = True
        model("vae", "AutoencoderKL", vae)
        bigg = REFINER_OPEN_CLIP if refiner else SDXL_OPEN_CLIP
        open_clip_text("text_encoder_2", bigg, layers=bigg.layers, projection=True)
        _write_tokenizer(root / "tokenizer_2", pad="!")
        if refiner:
            index.update(text_encoder=[None, None], tokenizer=[None, None])
        else:
            clip_l = sdxl_clip_l_config()
            clip_l.architectures = ["CLIPTextModel"]
            clip_l.save_pretrained(root / "text_encoder")
            _write_tokenizer(root / "tokenizer", pad="<|endoftext|>")
            index.update(text_encoder=["transformers", "CLIPTextModel"],
                         tokenizer=["transformers", "CLIPTokenizer"])
        sched = "EulerDiscreteScheduler"
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], image_encoder=[None, None],
                     feature_extractor=[None, None],
                     force_zeros_for_empty_prompt=not refiner)  # as the released model_index.json files
        if refiner or inpaint:
            index["requires_aesthetics_score"] = refiner
    _write_json(root / "scheduler" / "scheduler_config.json", _scheduler_config(sched, prediction_type, scheduler))
    index.update(_class_name=pipeline, scheduler=["diffusers", sched])
    _write_json(root / "model_index.json", index)
    return root


PIPELINES = {("sd2", False): "StableDiffusionPipeline", ("sd2", True): "StableDiffusionInpaintPipeline",
             ("sdxl", False): "StableDiffusionXLPipeline", ("sdxl", True): "StableDiffusionXLInpaintPipeline",
             ("sdxl-refiner", False): "StableDiffusionXLImg2ImgPipeline"}


def load_diffusers_pipeline(path, config_dir, family: str, *, inpaint: bool = False, **kwargs):
    """``<the family's pipeline>.from_single_file(path, config=config_dir, local_files_only=True, ...)``."""
    import diffusers

    family, inpaint = _family(family, inpaint)
    cls = getattr(diffusers, PIPELINES[(family, inpaint)])
    if family == "sd2":
        kwargs = {"safety_checker": None, "requires_safety_checker": False, **kwargs}
    return cls.from_single_file(str(path), config=str(config_dir), local_files_only=True, **kwargs)
