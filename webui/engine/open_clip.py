"""OpenCLIP text towers (SD 2.x's ViT-H, SDXL's bigG) as transformers' ``CLIPTextModel``.

Checkpoints store these encoders in open_clip's own layout (``token_embedding``, ``positional_embedding``,
``transformer.resblocks.N.attn.in_proj_weight`` with q, k, v stacked, ``ln_1``/``ln_2``, ``mlp.c_fc`` /
``mlp.c_proj``, ``ln_final``, ``text_projection`` used as ``x @ P``). The network is the same as OpenAI
CLIP's text transformer with exact GELU, so at load time the tensors are given transformers' names --
one fixed rename per parameter, the q/k/v split as views -- and the model is a ``CLIPTextModel``
(``CLIPTextModelWithProjection`` where the pooled, projected output is used: SDXL's vector). Extensions
then see one kind of text encoder whatever the family (kohya's SDXL LoRAs name bigG's modules this way too).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import transformers

from .files import CheckpointError

_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_LAYER_PARTS = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_ROOT = {"token_embedding.weight": "embeddings.token_embedding.weight",
         "positional_embedding": "embeddings.position_embedding.weight",
         "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
# in the file but not part of the text transformer (CLIP's contrastive temperature, an old buffer)
_UNUSED = ("logit_scale", "attn_mask")


def to_transformers(sd: Mapping[str, torch.Tensor], *, projection: bool) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower tensors (keys without the checkpoint prefix) under ``CLIPTextModel`` names
    (no ``text_model.`` level). With ``projection``, ``text_projection.weight`` (the transpose of the
    file's ``text_projection``) is included; without, the file's projection is left out (SD 2.x does not
    use it). Keys this layout does not have are returned unchanged, so the model's key check names them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _UNUSED:
            continue
        if key == "text_projection":
            if projection:
                out["text_projection.weight"] = value.t().contiguous()
            continue
        if key in _ROOT:
            out[_ROOT[key]] = value
            continue
        match = _LAYER.fullmatch(key)
        if match is None:
            out[key] = value
            continue
        layer, part = match.groups()
        prefix = f"encoder.layers.{layer}."
        if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = part.rsplit("_", 1)[1]
            q, k, v = value.chunk(3, dim=0)
            out.update({prefix + f"self_attn.q_proj.{kind}": q, prefix + f"self_attn.k_proj.{kind}": k,
                        prefix + f"self_attn.v_proj.{kind}": v})
        else:
            out[prefix + _LAYER_PARTS.get(part, part)] = value
    return out


def config(sd: Mapping[str, torch.Tensor], *, projection: bool,
           overrides: Mapping[str, object] | None = None) -> transformers.CLIPTextConfig:
    """The ``CLIPTextConfig`` of an OpenCLIP text tower, read from its shapes (heads = width / 64, exact
    GELU, as open_clip's ViT-H-14 and ViT-bigG-14 text towers)."""
    try:
        vocab, hidden = sd["token_embedding.weight"].shape
        layers = {int(m.group(1)) for k in sd if (m := _LAYER.fullmatch(k))}
        values = dict(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(layers),
            intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            max_position_embeddings=sd["positional_embedding"].shape[0],
            num_attention_heads=max(1, hidden // 64), hidden_act="gelu", layer_norm_eps=1e-5,
            projection_dim=sd["text_projection"].shape[1] if projection else hidden,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
        )
    except KeyError as e:
        raise CheckpointError(f"OpenCLIP text encoder layout not understood: key {e.args[0]!r} is missing") from None
    except (IndexError, ValueError):
        shapes = {k: tuple(sd[k].shape) for k in ("token_embedding.weight", "positional_embedding",
                                                  "text_projection") if k in sd}
        raise CheckpointError(f"OpenCLIP text encoder layout not understood: shapes {shapes}") from None
    if overrides:
        values.update(overrides)
    return transformers.CLIPTextConfig(**values)
