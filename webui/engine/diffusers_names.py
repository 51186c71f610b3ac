"""Module names of the original (LDM) UNet layout <-> diffusers' names, built from the model itself.

LoRA files for SD 1.x name UNet modules the diffusers way (``down_blocks.0.attentions.0.proj_in``),
diffusers ControlNets name their encoder copy that way too; our modules carry the checkpoint's (LDM)
names (``input_blocks.1.1.proj_in``). ``unet_module_names(unet)`` walks our UNet and gives, for every
module that holds parameters, its diffusers name -- derived from the block structure (levels, res blocks
per level, where attention is), never by rewriting underscores.
"""
from __future__ import annotations

from .unet import ResBlock, SpatialTransformer, UNetModel, Upsample

_RESNET_PARTS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _block_prefixes(unet: UNetModel) -> dict[str, str]:
    """LDM block path -> diffusers block path (resnets, attentions, samplers, the stem and the head)."""
    config = unet.config
    per_level = config.num_res_blocks + 1
    levels = len(config.channel_mult)
    names = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
             "time_embed.2": "time_embedding.linear_2", "out.0": "conv_norm_out", "out.2": "conv_out"}
    if hasattr(unet, "label_emb"):
        names |= {"label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2"}
    for level in range(levels):
        for j in range(config.num_res_blocks):
            block = f"input_blocks.{1 + level * per_level + j}"
            names[f"{block}.0"] = f"down_blocks.{level}.resnets.{j}"
            names[f"{block}.1"] = f"down_blocks.{level}.attentions.{j}"
        if level != levels - 1:
            names[f"input_blocks.{(level + 1) * per_level}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
    middle = list(unet.middle_block)
    names["middle_block.0"] = "mid_block.resnets.0"
    if len(middle) == 3:
        names["middle_block.1"] = "mid_block.attentions.0"
    names[f"middle_block.{len(middle) - 1}"] = "mid_block.resnets.1"
    for up in range(levels):
        for j in range(per_level):
            index = up * per_level + j
            for k, layer in enumerate(unet.output_blocks[index]):
                path = f"output_blocks.{index}.{k}"
                if isinstance(layer, ResBlock):
                    names[path] = f"up_blocks.{up}.resnets.{j}"
                elif isinstance(layer, SpatialTransformer):
                    names[path] = f"up_blocks.{up}.attentions.{j}"
                elif isinstance(layer, Upsample):
                    names[f"{path}.conv"] = f"up_blocks.{up}.upsamplers.0.conv"
    return names


def unet_module_names(unet: UNetModel) -> dict[str, str]:
    """Diffusers module path -> our module path, for every module of ``unet`` that has parameters."""
    prefixes = _block_prefixes(unet)
    longest_first = sorted(prefixes, key=len, reverse=True)
    resnets = {p for p, d in prefixes.items() if ".resnets." in d}
    out: dict[str, str] = {}
    for name, module in unet.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        for prefix in longest_first:
            if name == prefix or name.startswith(prefix + "."):
                rest = name[len(prefix):].lstrip(".")
                if prefix in resnets:
                    rest = _RESNET_PARTS.get(rest, rest)
                out[prefixes[prefix] + ("." + rest if rest else "")] = name
                break
    return out
