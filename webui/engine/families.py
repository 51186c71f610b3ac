"""Model families: a declarative table, detection from a state dict, configs inferred from shapes.

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
class Family:
    name: str
    label: str
    prediction: str  # "eps" or "v"
    text_encoder: str  # "clip-l", "open-clip-h", "clip-l+open-clip-bigg"
    latent_scale: float
    unet_in_channels: int
    context_dim: int  # of the released models; custom models may differ (read from shapes)
    num_heads: int = -1  # attention-head rule: a fixed count ...
    num_head_channels: int = -1  # ... or fixed channels per head
    linear_proj: bool = False  # the released models' proj_in/proj_out kind (shapes decide when loading)
    adm_in_channels: int | None = None
    unet_prefix: str = "model.diffusion_model."
    vae_prefix: str = "first_stage_model."
    text_prefixes: tuple[str, ...] = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")
    supported: bool = True
    native_size: int = 512  # image side the released models were trained at (the default size)


_SD2_TEXT = ("cond_stage_model.model.",)
_SDXL_TEXT = ("conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model.")

FAMILIES: tuple[Family, ...] = (
    Family("sd1", "SD 1.x", "eps", "clip-l", 0.18215, 4, 768, num_heads=8),
    Family("sd1-inpaint", "SD 1.x inpainting", "eps", "clip-l", 0.18215, 9, 768, num_heads=8),
    # Recognised so that users get a clear message; not loadable yet.
    # SD 2.x: 512-base is eps, 768-v is v; shapes cannot tell them apart (A1111 runs a test step).
    Family("sd2", "SD 2.x", "v", "open-clip-h", 0.18215, 4, 1024, num_head_channels=64, linear_proj=True,
           text_prefixes=_SD2_TEXT, supported=False, native_size=768),
    Family("sd2-inpaint", "SD 2.x inpainting", "eps", "open-clip-h", 0.18215, 9, 1024, num_head_channels=64,
           linear_proj=True, text_prefixes=_SD2_TEXT, supported=False),
    Family("sdxl", "SDXL", "eps", "clip-l+open-clip-bigg", 0.13025, 4, 2048, num_head_channels=64,
           linear_proj=True, adm_in_channels=2816, text_prefixes=_SDXL_TEXT, supported=False,
           native_size=1024),
    Family("sdxl-inpaint", "SDXL inpainting", "eps", "clip-l+open-clip-bigg", 0.13025, 9, 2048,
           num_head_channels=64, linear_proj=True, adm_in_channels=2816, text_prefixes=_SDXL_TEXT, supported=False,
           native_size=1024),
)

# Keys whose presence makes a part recognisable, then the keys a complete part must have.
_TEXT_MARKERS = {  # text-encoder kind -> key prefixes that must all be present
    "clip-l": ("cond_stage_model.transformer.",),
    "open-clip-h": ("cond_stage_model.model.",),
    "clip-l+open-clip-bigg": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
_UNET_REQUIRED = ("time_embed.0.weight", "time_embed.2.weight", "input_blocks.0.0.weight",
                  "middle_block.0.in_layers.0.weight", "middle_block.0.out_layers.3.weight",
                  "out.0.weight", "out.2.weight")
_VAE_REQUIRED = ("encoder.conv_in.weight", "encoder.mid.attn_1.q.weight", "encoder.norm_out.weight",
                 "encoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight",
                 "decoder.conv_in.weight", "decoder.mid.attn_1.proj_out.weight", "decoder.norm_out.weight",
                 "decoder.conv_out.weight")
_CLIP_REQUIRED = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
                  "encoder.layers.0.self_attn.q_proj.weight", "final_layer_norm.weight", "final_layer_norm.bias")


def block_indices(sd: Mapping[str, object], prefix: str) -> list[int]:
    """Sorted distinct N of keys ``prefix + "N."...``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def _count(sd: Mapping[str, object], prefix: str) -> int:
    return sum(1 for k in sd if k.startswith(prefix))


# ----------------------------------------------------------------------------------------- detection

def _text_kind(sd: Mapping[str, object]) -> str | None:
    for kind, prefixes in sorted(_TEXT_MARKERS.items(), key=lambda kv: -len(kv[1])):
        if all(any(k.startswith(p) for k in sd) for p in prefixes):
            return kind
    return None


def text_prefix(sd: Mapping[str, object], family: Family) -> str:
    """The text-encoder prefix this state dict uses (SD1 files with or without ``text_model.``)."""
    for prefix in family.text_prefixes:
        if prefix + "embeddings.token_embedding.weight" in sd:
            return prefix
    return family.text_prefixes[0]


def _describe_found(sd: Mapping[str, torch.Tensor]) -> str:
    unet_prefix, vae_prefix = "model.diffusion_model.", "first_stage_model."
    parts = []
    n = _count(sd, unet_prefix)
    if n:
        first = unet_prefix + "input_blocks.0.0.weight"
        channels = f", {_shape(sd, first)[1]} input channels" if first in sd else ""
        adm = ", label_emb (SDXL-style)" if unet_prefix + "label_emb.0.0.weight" in sd else ""
        parts.append(f"UNet ({unet_prefix}*, {n} keys{channels}{adm})")
    else:
        parts.append(f"no UNet ({unet_prefix}* keys)")
    n = _count(sd, vae_prefix)
    parts.append(f"VAE ({vae_prefix}*, {n} keys)" if n else f"no VAE ({vae_prefix}* keys)")
    kind = _text_kind(sd)
    parts.append(f"text encoder {kind}" if kind else "no known text encoder")
    others = sorted({k.split(".", 1)[0] + ".*" if "." in k else k for k in sd
                     if not k.startswith((unet_prefix, vae_prefix, "cond_stage_model.", "conditioner."))})
    if others:
        parts.append("other keys " + ", ".join(others[:6]) + (" ..." if len(others) > 6 else ""))
    return "; ".join(parts)


def _describe_expected(family: Family) -> str:
    text = " + ".join(family.text_prefixes[:1] if family.text_encoder != "clip-l+open-clip-bigg"
                      else family.text_prefixes)
    return (f"{family.label}: UNet {family.unet_prefix}* with {family.unet_in_channels} input channels"
            f"{', label_emb' if family.adm_in_channels else ''}, VAE {family.vae_prefix}*, "
            f"{family.text_encoder} text encoder {text}*")


def _hint(sd: Mapping[str, object]) -> str:
    keys = list(sd)
    if any(k.startswith(("lora_unet_", "lora_te", "lora_")) or ".lora_" in k for k in keys):
        return " (this looks like a LoRA, not a checkpoint)"
    if any(k.startswith(("down_blocks.", "unet.", "mid_block.", "text_model.")) for k in keys):
        return " (this looks like a diffusers-format file; single-file original-layout checkpoints are expected)"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys) and not any(k.startswith("model.") for k in keys):
        return " (this looks like a standalone VAE; put it in the VAE folder)"
    if any(k.startswith("control_model.") for k in keys):
        return " (this looks like a ControlNet)"
    return ""


def _missing(sd: Mapping[str, object], family: Family, parts: tuple[str, ...]) -> list[str]:
    """Keys a complete file of this family must have but this one lacks (anchors + block counts)."""
    missing = []
    if "unet" in parts:
        p = family.unet_prefix
        missing += [p + k for k in _UNET_REQUIRED if p + k not in sd]
        ins, outs = block_indices(sd, p + "input_blocks."), block_indices(sd, p + "output_blocks.")
        if ins != list(range(len(ins))) or outs != list(range(len(ins))):
            missing.append(f"{p}input_blocks.0..N-1 and output_blocks.0..N-1 (found input_blocks {_ranges(ins)}, "
                           f"output_blocks {_ranges(outs)})")
        if family.adm_in_channels and p + "label_emb.0.0.weight" not in sd:
            missing.append(p + "label_emb.0.0.weight")
    if "vae" in parts:
        missing += [family.vae_prefix + k for k in _VAE_REQUIRED if family.vae_prefix + k not in sd]
    if "text" in parts and family.text_encoder == "clip-l":
        p = text_prefix(sd, family)
        missing += [p + k for k in _CLIP_REQUIRED if p + k not in sd]
        layers = block_indices(sd, p + "encoder.layers.")
        if layers != list(range(len(layers))):
            missing.append(f"{p}encoder.layers.0..N-1 (found layers {_ranges(layers)})")
    return missing


def _ranges(indices: list[int]) -> str:
    return "none" if not indices else f"{len(indices)} of {indices[0]}..{indices[-1]}"


def detect_family(sd: Mapping[str, torch.Tensor], *, name: str = "state dict", need_vae: bool = True) -> Family:
    """The family of a single-file checkpoint, checked for completeness.

    Raises ``CheckpointError`` naming what was found and what each family expects when the file is not a
    known checkpoint, is truncated or partial, or belongs to a family that is recognised but not supported.
    """
    found = _describe_found(sd)
    unet_first = "model.diffusion_model.input_blocks.0.0.weight"
    kind = _text_kind(sd)
    in_channels = _shape(sd, unet_first)[1] if unet_first in sd and len(_shape(sd, unet_first)) == 4 else None
    has_adm = "model.diffusion_model.label_emb.0.0.weight" in sd
    candidates = [f for f in FAMILIES if f.text_encoder == kind and (f.adm_in_channels is not None) == has_adm]
    family = next((f for f in candidates if f.unet_in_channels == in_channels), None)
    if family is None:
        expected = "\n  ".join(_describe_expected(f) for f in FAMILIES if f.supported)
        raise CheckpointError(f"{name}: not a recognised Stable Diffusion checkpoint{_hint(sd)}.\n"
                              f"Found: {found}.\nExpected one of:\n  {expected}")
    parts = ("unet", "vae", "text") if need_vae else ("unet", "text")
    missing = _missing(sd, family, parts)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{name}: incomplete or truncated {family.label} checkpoint: missing {shown}.\n"
                              f"Found: {found}.\nExpected {_describe_expected(family)}")
    if not family.supported:
        raise CheckpointError(f"{name}: {family.label} is recognised but not supported yet "
                              f"(supported: {', '.join(f.label for f in FAMILIES if f.supported)})")
    return family


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
    if overrides:
        values.update(overrides)
    return transformers.CLIPTextConfig(**values)
