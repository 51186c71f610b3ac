"""The ControlNet network (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models").

A trainable copy of the UNet's encoder (time embedding, input blocks, middle block) plus a small conv
stack that turns the hint image into latent-sized features (``input_hint_block``) and one zero-initialised
1x1 conv per encoder output (``zero_convs``, ``middle_block_out``). ``forward`` returns one residual per
input block, then the middle one (13 for SD 1.x / 2.x, 10 for SDXL); the UNet adds them to its skip
connections and to its middle-block output.

Families: SD 1.x (conv projections, 8 heads), SD 2.x (linear projections, 64 channels per head) and SDXL
(no attention at the first level, several transformer blocks per level, 64 channels per head, and the
``label_emb`` MLP that embeds the size vector ``y`` into the time embedding, as the UNet does). Shapes
give the rest (depths per level, middle depth, context width, ``adm_in_channels``); ``family_label`` and
``compatible_with`` tell a ControlNet of another family than the loaded checkpoint by name.

Module attribute names equal the original checkpoint keys under ``control_model.``, so original files
load with ``load_state_dict`` and no key table; diffusers-format files are renamed with the UNet's own
diffusers name map (``unet_module_names``) plus the few ControlNet-specific names. The encoder
modules are the UNet's own: they are taken from a ``UNetModel`` built on the meta device, so the two
networks cannot drift apart.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from webui.hooks.api import CheckpointError, UNetConfig, UNetModel, build_network, embed_time, families, \
    infer_config, read_metadata, read_state_dict, unet_module_names

PREFIX = "control_model."
HINT_BLOCK_CHANNELS = (16, 32, 96, 256)  # the released ControlNets' hint encoder widths

_ORIGINAL_MARKERS = ("input_hint_block.0.weight", "zero_convs.0.0.weight")
_DIFFUSERS_MARKERS = ("controlnet_cond_embedding.conv_in.weight", "controlnet_down_blocks.0.weight")


def _zero_conv(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 1))


def _hint_block(hint_channels: int, widths: tuple[int, ...], model_channels: int) -> nn.Sequential:
    """conv(hint -> w0), then per step conv(w_i -> w_i), conv(w_i -> w_i+1, stride 2), then conv(-> model
    channels); SiLU between all convs (indices 0, 2, ..., 14 for the released widths)."""
    layers: list[nn.Module] = [nn.Conv2d(hint_channels, widths[0], 3, padding=1), nn.SiLU()]
    for width, wider in zip(widths, widths[1:]):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                   nn.Conv2d(width, wider, 3, padding=1, stride=2), nn.SiLU()]
    layers.append(nn.Conv2d(widths[-1], model_channels, 3, padding=1))
    return nn.Sequential(*layers)


def encoder_channels(config: UNetConfig) -> list[int]:
    """Channels of each input block's output, in order (the UNet's skip connections)."""
    channels = [config.model_channels]
    last = len(config.channel_mult) - 1
    for level, mult in enumerate(config.channel_mult):
        channels += [mult * config.model_channels] * (config.num_res_blocks + (level != last))
    return channels


class ControlNet(nn.Module):
    def __init__(self, config: UNetConfig, hint_channels: int = 3,
                 hint_block_channels: tuple[int, ...] = HINT_BLOCK_CHANNELS) -> None:
        """Built on the current default device; under ``torch.device("meta")`` nothing is allocated (for
        ``load_state_dict(assign=True)``), elsewhere weights get torch's default init with zero convs at 0."""
        super().__init__()
        self.config = config
        self.hint_channels = hint_channels
        self.hint_block_channels = tuple(hint_block_channels)
        target = torch.empty(()).device
        with torch.device("meta"):
            unet = UNetModel(config)  # only its encoder is kept
            self.time_embed = unet.time_embed
            if config.adm_in_channels is not None:
                self.label_emb = unet.label_emb
            self.input_hint_block = _hint_block(hint_channels, self.hint_block_channels, config.model_channels)
            self.input_blocks = unet.input_blocks
            channels = encoder_channels(config)
            self.zero_convs = nn.ModuleList(_zero_conv(ch) for ch in channels)
            self.middle_block = unet.middle_block
            self.middle_block_out = _zero_conv(channels[-1])
        del unet
        if target.type != "meta":
            self.to_empty(device=target)
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default init for every layer; the zero convs and the hint block's last conv start at zero."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        for conv in (self.input_hint_block[-1], *(z[0] for z in self.zero_convs), self.middle_block_out[0]):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def hint_features(self, hint: torch.Tensor) -> torch.Tensor:
        """``input_hint_block`` of an RGB hint in [0, 1] (B, 3, 8h, 8w): it does not depend on the latents,
        so a job computes it once and hands it to ``forward``."""
        return self.input_hint_block(hint.to(self.dtype))

    def forward(self, x: torch.Tensor, hint: torch.Tensor | None, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Residuals for the UNet: one per input block, in order, then the middle block's (module dtype).

        ``x``: latents (B, C, h, w); ``hint``: RGB in [0, 1], (B, 3, 8h, 8w), or ``features`` from
        ``hint_features`` instead (batch B or 1); ``timesteps``: (B,) or scalar; ``context``: (B, T, context_dim);
        ``y``: the class/size vector of SDXL-style networks.
        """
        dtype = self.dtype
        emb = embed_time(self, x, timesteps, y)
        guided_hint = features if features is not None else self.hint_features(hint)
        if guided_hint.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"hint features of size {tuple(guided_hint.shape[-2:])}, latents of size "
                             f"{tuple(x.shape[-2:])} (the hint must be 8x the latent size)")
        h, context = x.to(dtype), context.to(dtype)
        residuals = []
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint
            residuals.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        residuals.append(self.middle_block_out(h))
        return residuals

    def compatible_with(self, unet_config: UNetConfig, model_label: str | None = None) -> str | None:
        """Why this ControlNet cannot drive a UNet of ``unet_config`` (None when it can), as the rest of a
        sentence that starts with the file's name + " is": "an SD 1.x ControlNet (context 768); the loaded
        model is SDXL (context 2048)". ``model_label``: the loaded model's family in words (``Family.label``);
        without it the family is told from the context width. Where a side is not a released family, or
        both sides are the same family, the differing numbers follow ("; they differ in context_dim ...")."""
        wrong = mismatches(self.config, unet_config)
        if not wrong:
            return None
        mine, theirs = self.config, unet_config
        numbers = _numbers if mine.context_dim != theirs.context_dim else _numbers_with_vector
        my_label, their_label = family_label(mine), model_label or family_label(theirs)
        style = " SDXL-style" if mine.adm_in_channels is not None else ""
        text = (f"{_article(my_label)} {my_label} ControlNet ({numbers(mine)})" if my_label
                else f"a custom{style} ControlNet ({numbers(mine)})")
        text += (f"; the loaded model is {their_label} ({numbers(theirs)})" if their_label
                 else f"; the loaded model has {numbers(theirs)}")
        if my_label is None or their_label is None or my_label in (their_label, family_label(theirs)):
            text += "; they differ in " + ", ".join(wrong)
        return text

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], *, name: str = "state dict",
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        metadata: Mapping[str, str] | None = None,
                        release: Callable[[torch.Tensor], None] | None = None) -> ControlNet:
        """A ControlNet from original-format (``control_model.*`` or unprefixed) or diffusers-format tensors."""
        sd = control_state_dict(sd, name=name)
        arch = families.arch_overrides(metadata, name=name)
        what = f"{name}: ControlNet"
        config = infer_config(what, controlnet_config, sd, arch.get("unet"))
        hint_channels, widths = infer_config(what, hint_block_spec, sd)
        factory = functools.partial(cls, hint_channels=hint_channels, hint_block_channels=widths)
        return build_network(factory, config, sd, torch.device(device), dtype, what, release)


def load_controlnet(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> ControlNet:
    """Load a ControlNet file (.safetensors, or a pickle read without running any code from it)."""
    sd = read_state_dict(path)
    return ControlNet.from_state_dict(sd, name=str(path), device=device, dtype=dtype, metadata=read_metadata(path),
                                      release=getattr(sd, "release_pages", None))


# ----------------------------------------------------------------------------- families

# The released ControlNets' families, by context width and whether the network takes SDXL's size vector.
RELEASED_FAMILIES = {(768, False): "SD 1.x", (1024, False): "SD 2.x", (2048, True): "SDXL"}


def family_label(config: UNetConfig) -> str | None:
    """"SD 1.x" / "SD 2.x" / "SDXL" for the released families' context widths (768, 1024, 2048 with a size
    vector); None for any other (custom) size."""
    return RELEASED_FAMILIES.get((config.context_dim, config.adm_in_channels is not None))


def mismatches(control: UNetConfig, unet: UNetConfig) -> list[str]:
    """What keeps a ControlNet of ``control`` from driving a UNet of ``unet``, as "field mine vs theirs":
    the residuals' count and widths (model_channels, channel_mult, num_res_blocks), the text width, the size
    vector (SDXL's y), and latent channels (the ControlNet reads the first ``in_channels`` of the UNet's
    input, so an inpainting UNet's 9 channels feed a 4-channel ControlNet). Transformer depths and heads may
    differ: the ControlNet's encoder is its own."""
    fields = ("model_channels", "channel_mult", "num_res_blocks", "context_dim", "adm_in_channels")
    wrong = [f"{f} {getattr(control, f)} vs {getattr(unet, f)}" for f in fields
             if getattr(control, f) != getattr(unet, f)]
    if control.in_channels > unet.in_channels:
        wrong.append(f"in_channels {control.in_channels} vs {unet.in_channels}")
    return wrong


def _numbers(config: UNetConfig) -> str:
    return f"context {config.context_dim}"


def _numbers_with_vector(config: UNetConfig) -> str:
    vector = f"size vector {config.adm_in_channels}" if config.adm_in_channels else "no size vector"
    return f"context {config.context_dim}, {vector}"


def _article(label: str) -> str:
    return "an" if label.startswith(("S", "A", "E", "I", "O", "U")) else "a"   # "an SD 1.x", "an SDXL"


# ----------------------------------------------------------------------------- formats and configs

def control_state_dict(sd: Mapping[str, torch.Tensor], *, name: str = "state dict") -> dict[str, torch.Tensor]:
    """The ControlNet's tensors under our (original) names, whatever the file's format.

    Original: ``control_model.*`` (other keys, e.g. a full ControlLDM's ``model.diffusion_model.*``, are
    ignored) or the same names without the prefix. Diffusers: renamed (``diffusers_to_original``).
    Raises ``CheckpointError`` naming the file and listing what it holds for anything else.
    """
    if "difference" in sd:
        raise CheckpointError(f"{name}: a 'difference' ControlNet (weights stored relative to a base model) "
                              "is not supported; use the full ControlNet file")
    if any(k.startswith(PREFIX) for k in sd):
        sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    if all(k in sd for k in _ORIGINAL_MARKERS):
        return dict(sd)
    if all(k in sd for k in _DIFFUSERS_MARKERS):
        return diffusers_to_original(sd, name=name)
    raise CheckpointError(f"{name}: not a ControlNet. Found {_describe(sd)}.\nExpected the original format "
                          f"({PREFIX}input_hint_block.*, zero_convs.*, input_blocks.*, middle_block.*, "
                          "middle_block_out.*, with or without the prefix) or the diffusers format "
                          "(controlnet_cond_embedding.*, controlnet_down_blocks.*, controlnet_mid_block.*, "
                          "down_blocks.*, mid_block.*)")


def _describe(sd: Mapping[str, torch.Tensor]) -> str:
    if not sd:
        return "no tensors"
    groups: dict[str, int] = {}
    for key in sd:
        parts = key.split(".")
        group = ".".join(parts[:2]) if len(parts) > 2 and parts[0] in ("model", "control_model") else parts[0]
        groups[group] = groups.get(group, 0) + 1
    shown = [f"{g}.* ({n})" if n > 1 or g not in sd else g for g, n in sorted(groups.items())]
    more = f" and {len(shown) - 8} more groups" if len(shown) > 8 else ""
    return f"{len(sd)} tensors: " + ", ".join(shown[:8]) + more


def _head_family(sd: Mapping[str, torch.Tensor]) -> families.Family:
    """The released family whose attention-head rule fits these shapes (SDXL: label_emb; SD 2.x: linear
    transformer projections; else SD 1.x)."""
    proj_in = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    name = "sdxl" if "label_emb.0.0.weight" in sd else "sd2" if proj_in is not None and proj_in.ndim == 2 else "sd1"
    return next(f for f in families.FAMILIES if f.name == name)


def controlnet_config(sd: Mapping[str, torch.Tensor], overrides: Mapping[str, object] | None = None) -> UNetConfig:
    """The encoder's UNetConfig, read from the shapes of original-layout (unprefixed) tensors with the
    UNet's own inference; ``overrides`` as in ``webui.arch``'s "unet" entry. A ControlNet has no output
    head: ``out_channels`` is reported equal to ``in_channels``."""
    family = _head_family(sd)
    view: dict[str, torch.Tensor] = {family.unet_prefix + k: v for k, v in sd.items()}
    first = sd.get("input_blocks.0.0.weight")
    if first is None or first.ndim != 4:
        raise CheckpointError("ControlNet layout not understood: key 'input_blocks.0.0.weight' is missing")
    model_channels, in_channels = first.shape[:2]
    empty = [f"input_blocks.{n}.1" for n in families.block_indices(sd, "input_blocks.")
             if f"input_blocks.{n}.1.norm.weight" in sd
             and not families.block_indices(sd, f"input_blocks.{n}.1.transformer_blocks.")]
    if empty:   # diffusers' '-mid' / '-small' SDXL ControlNets converted to this layout
        raise CheckpointError(f"ControlNet with attention blocks that hold no transformer layers ({', '.join(empty)}, "
                              "as in the '-mid' and '-small' SDXL ControlNets): not supported")
    view[family.unet_prefix + "out.2.weight"] = torch.empty((in_channels, model_channels, 3, 3), device="meta")
    return families.unet_config(view, family, overrides)


def hint_block_spec(sd: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, ...]]:
    """(hint image channels, hint encoder widths) from ``input_hint_block.N.weight`` shapes."""
    indices = families.block_indices(sd, "input_hint_block.")
    if not indices or indices != list(range(0, 2 * len(indices), 2)) or len(indices) % 2:
        raise CheckpointError(f"input_hint_block convs at {indices}, expected 0, 2, 4, ... (an even count)")
    outs = [sd[f"input_hint_block.{i}.weight"].shape[0] for i in indices]
    return sd["input_hint_block.0.weight"].shape[1], tuple(outs[0:-1:2])


def _diffusers_layout(sd: Mapping[str, torch.Tensor]) -> UNetConfig:
    """Enough of the config to name the modules: levels, res blocks, where transformers are."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise CheckpointError(f"diffusers ControlNet layout not understood: key {key!r} is missing")
        return tuple(sd[key].shape)

    model_channels, in_channels = shape("conv_in.weight")[:2]
    levels = families.block_indices(sd, "down_blocks.")
    if levels != list(range(len(levels))) or not levels:
        raise CheckpointError(f"diffusers ControlNet has down_blocks {levels}, expected 0..N-1")
    mult = tuple(shape(f"down_blocks.{lv}.resnets.0.conv2.weight")[0] // model_channels for lv in levels)
    depths = tuple(len(families.block_indices(sd, f"down_blocks.{lv}.attentions.0.transformer_blocks.")) for lv in levels)
    middle = len(families.block_indices(sd, "mid_block.attentions.0.transformer_blocks."))
    # diffusers builds a Transformer2DModel (norm, proj_in, proj_out) even for transformer_layers_per_block 0
    # (the "-mid" / "-small" SDXL ControlNets); our encoder has no such block
    empty = [f"down_blocks.{lv}.attentions" for lv, d in zip(levels, depths)
             if not d and f"down_blocks.{lv}.attentions.0.norm.weight" in sd]
    if not middle and "mid_block.attentions.0.norm.weight" in sd:
        empty.append("mid_block.attentions")
    if empty:
        raise CheckpointError(f"diffusers ControlNet with attention blocks that hold no transformer layers "
                              f"({', '.join(empty)}: transformer_layers_per_block 0, as in the '-mid' and '-small' "
                              "SDXL ControlNets): not supported")
    adm = sd.get("add_embedding.linear_1.weight")
    return UNetConfig(in_channels=in_channels, out_channels=in_channels, model_channels=model_channels,
                      channel_mult=mult, num_res_blocks=len(families.block_indices(sd, "down_blocks.0.resnets.")),
                      attention_levels=tuple(i for i, d in enumerate(depths) if d), transformer_depth=depths,
                      transformer_depth_middle=middle, num_heads=1,   # heads do not change names
                      adm_in_channels=None if adm is None else adm.shape[1])


def diffusers_to_original(sd: Mapping[str, torch.Tensor], *, name: str = "state dict") -> dict[str, torch.Tensor]:
    """Diffusers ControlNetModel tensor names -> ours. The encoder's names come from the UNet's diffusers
    map (built on the meta device for this file's layout); the rest is the hint encoder
    (``controlnet_cond_embedding``) and the zero convs."""
    with torch.device("meta"):
        names = unet_module_names(UNetModel(infer_config(name, _diffusers_layout, sd)))
    n_blocks = len(families.block_indices(sd, "controlnet_cond_embedding.blocks."))
    names["controlnet_cond_embedding.conv_in"] = "input_hint_block.0"
    names["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * n_blocks + 2}"
    names.update({f"controlnet_cond_embedding.blocks.{j}": f"input_hint_block.{2 * j + 2}" for j in range(n_blocks)})
    names.update({f"controlnet_down_blocks.{i}": f"zero_convs.{i}.0"
                  for i in families.block_indices(sd, "controlnet_down_blocks.")})
    names["controlnet_mid_block"] = "middle_block_out.0"
    out, unknown = {}, []
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if module in names:
            out[f"{names[module]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{name}: diffusers ControlNet with {len(unknown)} tensor(s) this layout does not "
                              f"have, e.g. {', '.join(unknown[:4])}")
    return out
