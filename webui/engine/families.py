"""Model families: a declarative table and configs inferred from shapes (which family a state dict holds:
``detection.py``).

A family row says what cannot be read from tensor shapes (prediction type, attention-head rule,
latent scale, where each network lives). Everything else -- channels, levels, depths, context size,
CLIP width/depth -- is read from the shapes of the state dict itself, so small custom models load too.
The safetensors metadata key ``webui.arch`` (JSON, e.g. ``{"unet": {"num_heads": 4},
"clip": {"num_attention_heads": 2}}``) overrides the family's choices for such models.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import transformers

from .files import CheckpointError
from .unet import UNetConfig
from .vae import VAEConfig

ARCH_METADATA_KEY = "webui.arch"
NATIVE_SIZE_KEY = "webui.native_size"  # safetensors metadata: the side a custom model was trained at


def metadata_native_size(metadata: Mapping[str, str] | None) -> int | None:
    """``webui.native_size`` from a file's metadata when it holds a sensible value (a multiple of 8 in
    64..4096), else None."""
    value = (metadata or {}).get(NATIVE_SIZE_KEY, "").strip()
    size = int(value) if value.isdigit() else 0
    return size if size % 8 == 0 and 64 <= size <= 4096 else None


def native_size(family: Family, metadata: Mapping[str, str] | None) -> int:
    """The image side a model is meant to be used at: the metadata's (``metadata_native_size``), else the
    family's."""
    return metadata_native_size(metadata) or family.native_size


@dataclass(frozen=True)
class TextSpec:
    """One text encoder of a family, as its checkpoint stores it and as the family uses it.

    ``name``: the key of this encoder's vectors in an SDXL textual-inversion file (``clip_l``, ``clip_g``);
    ``prefixes``: where its tensors live (the first that the file uses); ``layout``: ``"clip"``
    (transformers' CLIPTextModel names, SD 1.x / SDXL's CLIP-L) or ``"open_clip"`` (``model.transformer.
    resblocks.N.attn.in_proj_*`` ..., converted at load, see ``open_clip.py``); ``layer``: what the UNet is
    given -- ``"last"`` (last hidden state after the final norm; clip skip n takes ``hidden_states[-n]`` then
    the final norm: SD 1.x), ``"penultimate_norm"`` (the penultimate layer's output, then the final norm:
    SD 2.x), ``"penultimate"`` (the penultimate layer's output, no final norm: SDXL); ``pad``: the id after
    the first end-of-text (``None``: end-of-text itself, SD 1.x / CLIP-L; 0 for the OpenCLIP models, as
    open_clip's tokenizer and A1111 pad); ``pooled``: the projected pooled output is used (SDXL's vector).
    """
    name: str
    prefixes: tuple[str, ...]
    layout: str = "clip"
    layer: str = "last"
    pad: int | None = None
    pooled: bool = False
    activation: str = "quick_gelu"   # OpenAI CLIP; the OpenCLIP ViT-H / bigG models use exact gelu

    @property
    def label(self) -> str:
        return {"clip_l": "CLIP ViT-L", "clip_h": "OpenCLIP ViT-H", "clip_g": "OpenCLIP ViT-bigG"}.get(
            self.name, self.name)


_SD1_TEXT = (TextSpec("clip_l", ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")),)
_SD2_TEXT = (TextSpec("clip_h", ("cond_stage_model.model.",), "open_clip", "penultimate_norm", pad=0,
                      activation="gelu"),)
_SDXL_L = TextSpec("clip_l", ("conditioner.embedders.0.transformer.text_model.",
                              "conditioner.embedders.0.transformer."), layer="penultimate")
_SDXL_TEXT = (_SDXL_L, TextSpec("clip_g", ("conditioner.embedders.1.model.",), "open_clip", "penultimate", pad=0,
                                pooled=True, activation="gelu"))
_REFINER_TEXT = (TextSpec("clip_g", ("conditioner.embedders.0.model.",), "open_clip", "penultimate", pad=0,
                          pooled=True, activation="gelu"),)


@dataclass(frozen=True)
class Family:
    """What a family's tensors cannot say. ``prediction``: "eps", "v", or "detect" (SD 2.x: 512-base is
    eps, 768-v is v, with the same shapes: decided from the weights at load, ``detect_prediction``);
    ``vector``: the UNet's ``y`` input -- None, ``"sdxl"`` (pooled CLIP-G + original size, crop, target
    size) or ``"sdxl_refiner"`` (pooled CLIP-G + original size, crop, aesthetic score)."""
    name: str
    label: str
    prediction: str
    text: tuple[TextSpec, ...]
    latent_scale: float
    unet_in_channels: int
    context_dim: int  # of the released models; custom models may differ (read from shapes)
    num_heads: int = -1  # attention-head rule: a fixed count ...
    num_head_channels: int = -1  # ... or fixed channels per head
    linear_proj: bool = False  # the released models' proj_in/proj_out kind (shapes decide when loading)
    adm_in_channels: int | None = None
    vector: str | None = None
    unet_prefix: str = "model.diffusion_model."
    vae_prefix: str = "first_stage_model."
    native_size: int = 512  # image side the released models were trained at (the default size)

    @property
    def text_encoder(self) -> str:
        """The text encoders, in words ("CLIP ViT-L + OpenCLIP ViT-bigG")."""
        return " + ".join(spec.label for spec in self.text)

    @property
    def is_inpainting(self) -> bool:
        return self.unet_in_channels == 9

    @property
    def is_sdxl(self) -> bool:
        return self.vector is not None


_SD2 = dict(latent_scale=0.18215, context_dim=1024, num_head_channels=64, linear_proj=True, text=_SD2_TEXT)
_XL = dict(latent_scale=0.13025, num_head_channels=64, linear_proj=True, native_size=1024)

FAMILIES: tuple[Family, ...] = (
    Family("sd1", "SD 1.x", "eps", _SD1_TEXT, 0.18215, 4, 768, num_heads=8),
    Family("sd1-inpaint", "SD 1.x inpainting", "eps", _SD1_TEXT, 0.18215, 9, 768, num_heads=8),
    Family("sd2", "SD 2.x", "detect", unet_in_channels=4, native_size=768, **_SD2),
    Family("sd2-inpaint", "SD 2.x inpainting", "eps", unet_in_channels=9, **_SD2),
    Family("sdxl", "SDXL", "eps", _SDXL_TEXT, unet_in_channels=4, context_dim=2048, adm_in_channels=2816,
           vector="sdxl", **_XL),
    Family("sdxl-inpaint", "SDXL inpainting", "eps", _SDXL_TEXT, unet_in_channels=9, context_dim=2048,
           adm_in_channels=2816, vector="sdxl", **_XL),
    Family("sdxl-refiner", "SDXL refiner", "eps", _REFINER_TEXT, unet_in_channels=4, context_dim=1280,
           adm_in_channels=2560, vector="sdxl_refiner", **_XL),
)

# The keys a complete VAE must have (detection's check, and a standalone VAE's in checkpoint.py).
VAE_REQUIRED = ("encoder.conv_in.weight", "encoder.mid.attn_1.q.weight", "encoder.norm_out.weight",
                "encoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight",
                "decoder.conv_in.weight", "decoder.mid.attn_1.proj_out.weight", "decoder.norm_out.weight",
                "decoder.conv_out.weight")


# --------------------------------------------------------------------------------------- key helpers

def block_indices(sd: Mapping[str, object], prefix: str) -> list[int]:
    """Sorted distinct N of keys ``prefix + "N."...``."""
    pattern = re.compile(re.escape(prefix) + r"([0-9]{1,9})\.")   # (int() refuses 4300+ digits)
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def text_prefix(sd: Mapping[str, object], spec: TextSpec) -> str:
    """The prefix this state dict uses for one text encoder (SD 1.x files with or without ``text_model.``)."""
    anchor = "embeddings.token_embedding.weight" if spec.layout == "clip" else "token_embedding.weight"
    for prefix in spec.prefixes:
        if prefix + anchor in sd:
            return prefix
    return spec.prefixes[0]


# ---------------------------------------------------------------------------------------- prediction

PREDICTIONS = ("eps", "v")


@dataclass(frozen=True)
class Prediction:
    """What the UNet predicts and on which noise schedule: ``kind`` "eps" or "v"; ``zero_snr``: the
    schedule rescaled to zero terminal SNR (A1111's / ComfyUI's ``ztsnr`` v-prediction fine-tunes);
    ``source``: how it was decided, for the log and the model's description."""
    kind: str
    zero_snr: bool = False
    source: str = "family"


def prediction_from_keys(sd: Mapping[str, object], family: Family, override: str | None = None) -> Prediction | None:
    """The prediction type when the file or the user says it (``override``: ``--prediction``; the ``v_pred``
    / ``ztsnr`` marker keys of v-prediction SDXL fine-tunes, as ComfyUI reads them), or the family's fixed
    one; None when it must be measured on the weights (SD 2.x, ``detect_prediction``)."""
    zero_snr = "ztsnr" in sd
    if override is not None:
        if override not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)} (got {override!r})")
        return Prediction(override, zero_snr and override == "v", "--prediction")
    if "v_pred" in sd:
        return Prediction("v", zero_snr, "v_pred key")
    if family.prediction == "detect":
        return None
    return Prediction(family.prediction)


@torch.no_grad()
def detect_prediction(unet: torch.nn.Module) -> Prediction:
    """A1111's test for SD 2.x (``is_using_v_parameterization_for_sd2``): one UNet call at t=999 on a flat
    latent of 0.5 with a flat context of 0.5. An eps model predicts about the input there (the noise), a v
    model about minus the image, far below it: mean(output - input) < -1 means v."""
    parameter = next(unet.parameters())
    config = unet.config
    x = torch.full((1, config.in_channels, 8, 8), 0.5, device=parameter.device, dtype=parameter.dtype)
    context = torch.full((1, 2, config.context_dim), 0.5, device=parameter.device, dtype=parameter.dtype)
    out = unet(x, torch.tensor([999.0], device=parameter.device), context)
    v = bool((out.float() - x.float()).mean() < -1)
    return Prediction("v" if v else "eps", source="one-step test")


# ------------------------------------------------------------------------------------------ overrides

def arch_overrides(metadata: Mapping[str, str] | None, *, name: str = "file") -> dict[str, dict]:
    """Parse the ``webui.arch`` metadata entry: ``{"unet": {...}, "vae": {...}, "clip": {...}}``."""
    raw = (metadata or {}).get(ARCH_METADATA_KEY)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{name}: metadata {ARCH_METADATA_KEY} is not valid JSON ({e})") from None
    if not (isinstance(value, dict) and all(k in ("unet", "vae", "clip") and isinstance(v, dict)
                                            for k, v in value.items())):
        raise CheckpointError(f"{name}: metadata {ARCH_METADATA_KEY} is {raw!r}, expected a JSON object with "
                              "optional 'unet', 'vae', 'clip' objects")
    return value


def _apply(config, overrides: Mapping[str, object] | None, what: str):
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise CheckpointError(f"{ARCH_METADATA_KEY}: unknown {what} setting(s) {unknown}; known: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        return dataclasses.replace(config, **values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ARCH_METADATA_KEY}: invalid {what} settings {dict(overrides)} ({e})") from None


def _layout_error(what: str, error: KeyError) -> CheckpointError:
    return CheckpointError(f"{what} layout not understood: key {error.args[0]!r} is missing")


# ------------------------------------------------------------------------------- configs from shapes

def unet_config(sd: Mapping[str, torch.Tensor], family: Family,
                overrides: Mapping[str, object] | None = None) -> UNetConfig:
    """UNetConfig read from the shapes under ``family.unet_prefix``; heads from the family (or overrides)."""
    try:
        return _apply(_unet_config(sd, family), _head_overrides(overrides), "unet")
    except KeyError as e:
        raise _layout_error("UNet", e) from None


def _head_overrides(overrides: Mapping[str, object] | None) -> Mapping[str, object] | None:
    if overrides and ("num_heads" in overrides) != ("num_head_channels" in overrides):
        # setting one head rule switches the other off
        return {"num_heads": -1, "num_head_channels": -1, **overrides}
    return overrides


def _unet_config(sd: Mapping[str, torch.Tensor], family: Family) -> UNetConfig:
    p = family.unet_prefix
    model_channels, in_channels = _shape(sd, p + "input_blocks.0.0.weight")[:2]
    n_blocks = len(block_indices(sd, p + "input_blocks."))
    downsamples = [n for n in block_indices(sd, p + "input_blocks.") if p + f"input_blocks.{n}.0.op.weight" in sd]
    levels = len(downsamples) + 1
    num_res_blocks, rest = divmod(n_blocks - 1 - len(downsamples), levels)
    if rest or num_res_blocks < 1:
        raise CheckpointError(f"UNet has {n_blocks} input blocks with {len(downsamples)} downsamplers: "
                              "not an LDM UNet layout")
    channel_mult, depths = [], []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        channel_mult.append(_shape(sd, p + f"input_blocks.{first}.0.in_layers.2.weight")[0] // model_channels)
        depths.append(len(block_indices(sd, p + f"input_blocks.{first}.1.transformer_blocks.")))
    middle_depth = len(block_indices(sd, p + "middle_block.1.transformer_blocks."))
    to_k = next((k for k in sd if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in sd if k.startswith(p) and k.endswith("proj_in.weight")), None)
    adm = p + "label_emb.0.0.weight"
    return UNetConfig(
        in_channels=in_channels,
        out_channels=_shape(sd, p + "out.2.weight")[0],
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=num_res_blocks,
        attention_levels=tuple(i for i, d in enumerate(depths) if d > 0),
        transformer_depth=tuple(depths),
        transformer_depth_middle=middle_depth,
        context_dim=_shape(sd, to_k)[1] if to_k else family.context_dim,
        num_heads=family.num_heads,
        num_head_channels=family.num_head_channels,
        use_linear_in_transformer=len(_shape(sd, proj_in)) == 2 if proj_in else family.linear_proj,
        adm_in_channels=_shape(sd, adm)[1] if adm in sd else None,
    )


def vae_config(sd: Mapping[str, torch.Tensor], prefix: str = "first_stage_model.",
               overrides: Mapping[str, object] | None = None) -> VAEConfig:
    """VAEConfig read from the shapes under ``prefix`` ("first_stage_model." or "" for a standalone VAE)."""
    try:
        return _apply(_vae_config(sd, prefix), overrides, "vae")
    except KeyError as e:
        raise _layout_error("VAE", e) from None


def _vae_config(sd: Mapping[str, torch.Tensor], p: str) -> VAEConfig:
    ch, in_channels = _shape(sd, p + "encoder.conv_in.weight")[:2]
    return VAEConfig(
        in_channels=in_channels,
        out_channels=_shape(sd, p + "decoder.conv_out.weight")[0],
        ch=ch,
        ch_mult=tuple(_shape(sd, p + f"encoder.down.{i}.block.0.conv1.weight")[0] // ch
                      for i in block_indices(sd, p + "encoder.down.")),
        num_res_blocks=len(block_indices(sd, p + "encoder.down.0.block.")),
        z_channels=_shape(sd, p + "decoder.conv_in.weight")[1],
        embed_dim=_shape(sd, p + "post_quant_conv.weight")[1],
    )


def clip_config(sd: Mapping[str, torch.Tensor], prefix: str,
                overrides: Mapping[str, object] | None = None) -> transformers.CLIPTextConfig:
    """CLIPTextConfig for an OpenAI-CLIP-layout text encoder under ``prefix`` (heads = hidden // 64)."""
    try:
        vocab, hidden = _shape(sd, prefix + "embeddings.token_embedding.weight")
        values = dict(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=len(block_indices(sd, prefix + "encoder.layers.")),
            intermediate_size=_shape(sd, prefix + "encoder.layers.0.mlp.fc1.weight")[0],
            max_position_embeddings=_shape(sd, prefix + "embeddings.position_embedding.weight")[0],
            num_attention_heads=max(1, hidden // 64),
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=hidden,
        )
    except KeyError as e:
        raise _layout_error("text encoder", e) from None
    except (IndexError, ValueError):
        raise CheckpointError(f"text encoder layout not understood: {prefix}embeddings.token_embedding.weight has "
                              f"shape {_shape(sd, prefix + 'embeddings.token_embedding.weight')}") from None
    if overrides:
        values.update(overrides)
    return transformers.CLIPTextConfig(**values)
