"""Cross-attention UNet in the original (LDM / CompVis) layout.

Module attribute names equal the checkpoint keys under ``model.diffusion_model.``
(``input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight`` ...), so a state dict loads with
``load_state_dict`` and no key table. One class covers SD 1.x (conv proj, fixed head count),
SD 2.x (linear proj, 64 channels per head) and SDXL (per-level transformer depth, ``label_emb``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, Linear


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)  # indices of levels that have transformers
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1)  # per level (used where it has attention)
    transformer_depth_middle: int | None = None  # None: depth of the deepest level (or 1)
    context_dim: int = 768
    num_heads: int = 8  # fixed head count (SD 1.x); -1 when num_head_channels is used
    num_head_channels: int = -1  # fixed channels per head (SD 2.x, SDXL)
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None  # SDXL: size of the pooled-text + size vector ``y``

    def __post_init__(self) -> None:
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ValueError("UNetConfig: set exactly one of num_heads / num_head_channels")
        if len(self.transformer_depth) != len(self.channel_mult):
            raise ValueError("UNetConfig: transformer_depth needs one entry per level")

    def heads(self, channels: int) -> tuple[int, int]:
        """(number of heads, channels per head) for a transformer with ``channels`` channels."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads

    @property
    def middle_depth(self) -> int:
        if self.transformer_depth_middle is not None:
            return self.transformer_depth_middle
        return self.transformer_depth[-1] or 1


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding as in LDM: ``[cos(t f), sin(t f)]``, always computed in float32."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period) / half)
    args = timesteps.to(torch.float32)[:, None] * torch.exp(exponent)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 (as LDM does), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def normalization(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)


class TimestepBlock(nn.Module):
    """A block that also takes the timestep embedding."""


class ResBlock(TimestepBlock):
    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(0.0), Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if channels == out_channels else Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = Linear(query_dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b = x.shape[0]
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3]))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, linear: bool) -> None:
        super().__init__()
        inner = heads * dim_head
        self.linear = linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = Linear(channels, inner) if linear else Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = Linear(inner, channels) if linear else Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        if not self.linear:
            y = self.proj_in(y)
        y = y.flatten(2).transpose(1, 2)  # b (h w) c
        if self.linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.linear:
            y = self.proj_out(y)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        if not self.linear:
            y = self.proj_out(y)
        return x + y


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimestepEmbedSequential(nn.Sequential):
    """Runs its children, giving each the arguments it takes."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


BlockWrapper = Callable[..., torch.Tensor]   # wrapper(apply, h, emb, context) -> h; apply(h, emb, context) -> h


@dataclass
class UNetExtras:
    """Per-call additions to one UNet forward (from the extension hook: ControlNet and the like).

    ``input_residuals``: one tensor (or None) per input block, added to its skip connection before the
    output block that takes it (ControlNet's 12 for SD 1.x); ``middle_residual``: added after the middle
    block; ``output_residuals``: one per output block, added to its result; ``block_wrappers``: by block
    name (``"input_blocks.4"``, ``"middle_block"``, ``"output_blocks.2"``), each called as
    ``wrapper(apply, h, emb, context)`` around that block, the first in the list outermost.
    """
    input_residuals: Sequence[torch.Tensor | None] | None = None
    middle_residual: torch.Tensor | None = None
    output_residuals: Sequence[torch.Tensor | None] | None = None
    block_wrappers: Mapping[str, Sequence[BlockWrapper]] = field(default_factory=dict)


def _add(h: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    return h if residual is None else h + residual.to(h.dtype)


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(Linear(mc, emb_dim), nn.SiLU(), Linear(emb_dim, emb_dim))
        if config.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(Linear(config.adm_in_channels, emb_dim), nn.SiLU(), Linear(emb_dim, emb_dim))
            )

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, dim_head = config.heads(ch)
            return SpatialTransformer(ch, heads, dim_head, depth, config.context_dim, config.use_linear_in_transformer)

        def has_attention(level: int) -> bool:
            return level in config.attention_levels and config.transformer_depth[level] > 0

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch = mc
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc)]
                ch = mult * mc
                if has_attention(level):
                    layers.append(transformer(ch, config.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        middle: list[nn.Module] = [ResBlock(ch, emb_dim, ch)]
        if config.middle_depth > 0:
            middle.append(transformer(ch, config.middle_depth))
        middle.append(ResBlock(ch, emb_dim, ch))
        self.middle_block = TimestepEmbedSequential(*middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * mc)]
                ch = mult * mc
                if has_attention(level):
                    layers.append(transformer(ch, config.transformer_depth[level]))
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), Conv2d(mc, config.out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it computes in: its biases' (with ``--fp8`` the weights are stored as float8)."""
        return self.time_embed[0].bias.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, extras: UNetExtras | None = None) -> torch.Tensor:
        """Predict the model output (eps or v) for latents ``x`` at ``timesteps`` given ``context``;
        ``extras``: residuals and block wrappers for this call (see ``UNetExtras``)."""
        dtype = self.dtype
        emb = embed_time(self, x, timesteps, y)
        h = x.to(dtype)
        context = context.to(dtype)
        if extras is None:
            extras = UNetExtras()
        run = _block_runner(extras.block_wrappers, emb, context)
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = run(f"input_blocks.{i}", block, h)
            skips.append(h)
        if extras.input_residuals is not None:
            if len(extras.input_residuals) != len(skips):
                raise ValueError(f"{len(extras.input_residuals)} input residuals for {len(skips)} input blocks")
            skips = [_add(s, r) for s, r in zip(skips, extras.input_residuals)]
        h = _add(run("middle_block", self.middle_block, h), extras.middle_residual)
        outputs = extras.output_residuals
        for i, block in enumerate(self.output_blocks):
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1)
            # the next skip's size lets odd latent sizes upsample back to the matching resolution
            size = tuple(skips[-1].shape[-2:]) if skips else None
            h = run(f"output_blocks.{i}", block, h, size)
            if outputs is not None:
                h = _add(h, outputs[i])
        return self.out(h).to(x.dtype)


def embed_time(model: nn.Module, x: torch.Tensor, timesteps, y: torch.Tensor | None = None) -> torch.Tensor:
    """``time_embed`` (+ ``label_emb(y)`` for SDXL-style configs) of a UNet or its encoder copy (ControlNet),
    for a batch ``x``; the sinusoidal part in float32, then the module's dtype."""
    dtype = model.time_embed[0].bias.dtype        # the weights may be stored in float8 (--fp8)
    timesteps = torch.as_tensor(timesteps, device=x.device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(x.shape[0])
    emb = model.time_embed(timestep_embedding(timesteps, model.config.model_channels).to(dtype))
    if model.config.adm_in_channels is not None:
        if y is None:
            raise ValueError(f"this {type(model).__name__} needs the class/size vector y")
        emb = emb + model.label_emb(y.to(dtype))
    return emb


def _block_runner(wrappers: Mapping[str, Sequence[BlockWrapper]], emb, context):
    """``run(name, block, h, size=None)``: the block, inside the wrappers registered for ``name``."""
    def run(name, block, h, size=None):
        def apply(h, emb, context):
            return block(h, emb, context, size)
        for wrapper in reversed(wrappers.get(name, ())):
            apply = _wrapped(wrapper, apply)
        return apply(h, emb, context)
    return run


def _wrapped(wrapper: BlockWrapper, inner):
    return lambda h, emb, context: wrapper(inner, h, emb, context)
