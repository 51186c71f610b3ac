"""Which family a state dict holds: detection, and refusals by name with what was found.

``detect_family`` checks a single-file checkpoint against the family table (``families.FAMILIES``) and for
completeness, and refuses what it cannot run -- other architectures (SD3, Flux ...), EDM-schedule SDXL
models, depth / InstructPix2Pix UNets, LoRAs, ControlNets, diffusers-format files -- naming what it found.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .families import FAMILIES, VAE_REQUIRED, Family, TextSpec, _shape, block_indices, text_prefix
from .files import CheckpointError

# Keys whose presence makes a part recognisable, then the keys a complete part must have (the VAE's:
# ``families.VAE_REQUIRED``).
_UNET_REQUIRED = ("time_embed.0.weight", "time_embed.2.weight", "input_blocks.0.0.weight",
                  "middle_block.0.in_layers.0.weight", "middle_block.0.out_layers.3.weight",
                  "out.0.weight", "out.2.weight")
_CLIP_REQUIRED = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
                  "encoder.layers.0.self_attn.q_proj.weight", "final_layer_norm.weight", "final_layer_norm.bias")
_OPEN_CLIP_REQUIRED = ("token_embedding.weight", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight",
                       "ln_final.weight", "ln_final.bias")


def _count(sd: Mapping[str, object], prefix: str) -> int:
    return sum(1 for k in sd if k.startswith(prefix))


def _has_prefix(sd: Mapping[str, object], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


def _text_matches(sd: Mapping[str, object], family: Family) -> bool:
    """Every text encoder of ``family`` is present (under one of its prefixes)."""
    return all(any(_has_prefix(sd, p) for p in spec.prefixes) for spec in family.text)


def _text_kind(sd: Mapping[str, object]) -> str | None:
    """The text encoders this state dict holds, in words (None: none that a family uses)."""
    best = max((f for f in FAMILIES if _text_matches(sd, f)), key=lambda f: len(f.text), default=None)
    return None if best is None else best.text_encoder


# Other architectures, named so that their users learn what they have (first match wins).
_OTHER_ARCHITECTURES = (
    ("SD3 / SD 3.5", ("model.diffusion_model.joint_blocks.", "joint_blocks.", "text_encoders.clip_g.")),
    ("Flux", ("model.diffusion_model.double_blocks.", "double_blocks.", "model.diffusion_model.single_blocks.")),
    ("Stable Cascade", ("down_blocks.0.0.channelwise.",)),
    ("PixArt", ("model.diffusion_model.t_block.", "t_block.")),
    ("AuraFlow", ("model.diffusion_model.double_layers.", "double_layers.")),
    ("SD 2.x unCLIP", ("embedder.model.visual.", "noise_augmentor.")),
)
# Root keys of SDXL-shaped files whose noise schedule we do not run.
_EDM_MARKERS = (("edm_mean", "Playground v2.5 (EDM schedule)"), ("edm_vpred.sigma_max", "CosXL (EDM v-prediction)"))
_CHANNEL_NAMES = {5: "a depth-conditioned model (SD 2.x depth)", 8: "an InstructPix2Pix model"}
SUPPORTED = "SD 1.x, SD 2.x (512 / 768-v, inpainting), SDXL (base, refiner, inpainting, v-prediction)"


def _other_architecture(sd: Mapping[str, object]) -> str | None:
    for label, prefixes in _OTHER_ARCHITECTURES:
        if any(k.startswith(prefixes) for k in sd):
            return label
    return None


def _describe_found(sd: Mapping[str, torch.Tensor]) -> str:
    unet_prefix, vae_prefix = "model.diffusion_model.", "first_stage_model."
    parts = []
    n = _count(sd, unet_prefix)
    if n:
        first = unet_prefix + "input_blocks.0.0.weight"
        channels = f", {_shape(sd, first)[1]} input channels" if first in sd and len(_shape(sd, first)) == 4 else ""
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
    text = " + ".join(spec.prefixes[0] + "*" for spec in family.text)
    return (f"{family.label}: UNet {family.unet_prefix}* with {family.unet_in_channels} input channels"
            f"{', label_emb' if family.adm_in_channels else ''}, VAE {family.vae_prefix}*, "
            f"{family.text_encoder} text encoder{'s' if len(family.text) > 1 else ''} {text}")


def _hint(sd: Mapping[str, object]) -> str:
    keys = list(sd)
    if any(k.startswith(("lora_unet_", "lora_te", "lora_")) or ".lora_" in k for k in keys):
        return " (this looks like a LoRA, not a checkpoint: put it in the LoRA folder)"
    if any(k.startswith("control_model.") for k in keys) or "input_hint_block.0.weight" in sd \
            or "controlnet_cond_embedding.conv_in.weight" in sd:
        return " (this looks like a ControlNet: put it in the ControlNet folder)"
    if any(k.startswith(("down_blocks.", "unet.", "mid_block.", "text_model.")) for k in keys):
        return " (this looks like a diffusers-format file; single-file original-layout checkpoints are expected)"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys) and not any(k.startswith("model.") for k in keys):
        return " (this looks like a standalone VAE; put it in the VAE folder)"
    if any(k.startswith(("clip_l", "clip_g", "string_to_param", "emb_params")) for k in keys):
        return " (this looks like a textual-inversion embedding: put it in the embeddings folder)"
    return ""


def _missing_text(sd: Mapping[str, object], spec: TextSpec) -> list[str]:
    p = text_prefix(sd, spec)
    required, layers = (_CLIP_REQUIRED, "encoder.layers.") if spec.layout == "clip" else \
        (_OPEN_CLIP_REQUIRED, "transformer.resblocks.")
    missing = [p + k for k in required if p + k not in sd]
    found = block_indices(sd, p + layers)
    if found != list(range(len(found))):
        missing.append(f"{p}{layers}0..N-1 (found {_ranges(found)})")
    return missing


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
        missing += [family.vae_prefix + k for k in VAE_REQUIRED if family.vae_prefix + k not in sd]
    if "text" in parts:
        for spec in family.text:
            missing += _missing_text(sd, spec)
    return missing


def _ranges(indices: list[int]) -> str:
    return "none" if not indices else f"{len(indices)} of {indices[0]}..{indices[-1]}"


def detect_family(sd: Mapping[str, torch.Tensor], *, name: str = "state dict", need_vae: bool = True) -> Family:
    """The family of a single-file checkpoint, checked for completeness.

    Raises ``CheckpointError`` naming what was found and what each family expects when the file is not a
    known checkpoint, is truncated or partial, or is an architecture we recognise but do not run (SD3,
    Flux, Playground v2.5 ...: the message names it).
    """
    other = _other_architecture(sd)
    if other is not None:
        raise CheckpointError(f"{name}: this is a {other} model: not supported (supported: {SUPPORTED})")
    found = _describe_found(sd)
    unet_first = "model.diffusion_model.input_blocks.0.0.weight"
    in_channels = _shape(sd, unet_first)[1] if unet_first in sd and len(_shape(sd, unet_first)) == 4 else None
    has_adm = "model.diffusion_model.label_emb.0.0.weight" in sd
    candidates = [f for f in FAMILIES if _text_matches(sd, f) and (f.adm_in_channels is not None) == has_adm]
    candidates.sort(key=lambda f: -len(f.text))   # SDXL's two encoders before a one-encoder family's
    family = next((f for f in candidates if f.unet_in_channels == in_channels), None)
    if family is None:
        if candidates and in_channels in _CHANNEL_NAMES:
            raise CheckpointError(f"{name}: {_CHANNEL_NAMES[in_channels]} ({in_channels} UNet input channels, "
                                  f"{candidates[0].text_encoder} text encoder): not supported "
                                  f"(supported: {SUPPORTED}).\nFound: {found}.")
        expected = "\n  ".join(_describe_expected(f) for f in FAMILIES)
        raise CheckpointError(f"{name}: not a recognised Stable Diffusion checkpoint{_hint(sd)}.\n"
                              f"Found: {found}.\nExpected one of:\n  {expected}")
    parts = ("unet", "vae", "text") if need_vae else ("unet", "text")
    missing = _missing(sd, family, parts)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{name}: incomplete or truncated {family.label} checkpoint: missing {shown}.\n"
                              f"Found: {found}.\nExpected {_describe_expected(family)}")
    for key, label in _EDM_MARKERS:
        if key in sd:
            raise CheckpointError(f"{name}: {label}, an SDXL-shaped model with its own noise schedule: not "
                                  f"supported (supported: {SUPPORTED})")
    return family
