"""Single-file checkpoint -> resident Stable Diffusion model (UNet, VAE, CLIP text encoder).

Networks are built on the meta device and receive their tensors with ``load_state_dict(assign=True)``,
each converted to the target dtype/device one at a time: no random initialisation, one copy of the
weights in memory: the file's memory-mapped pages are given back tensor by tensor as they are copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import transformers
from torch import nn

from . import detection, families, open_clip
from .families import Family, Prediction, TextSpec
from .files import CheckpointError, read_metadata, read_state_dict
from .sampling.schedules import DiscreteSchedule, sd_alphas_cumprod, zero_terminal_snr
from .unet import UNetModel
from .vae import AutoencoderKL

# Keys inside a network's prefix that carry no weights (old transformers buffers, VAE training loss).
_IGNORED_SUFFIXES = ("embeddings.position_ids",)
_IGNORED_VAE_PREFIXES = ("loss.",)
_VAE_ATTN = ("q", "k", "v", "proj_out")
_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass(eq=False)
class StableDiffusionModel:
    """A loaded checkpoint. ``text_models``: one transformers CLIP text model per ``family.text`` entry, in
    that order (SDXL: CLIP-L, then OpenCLIP bigG with its projection); ``prediction``: what the UNet
    predicts (eps / v, zero terminal SNR) and how that was decided; ``schedule``: its noise schedule (on
    the CPU; ``schedule.to(device)`` for sampling)."""
    unet: UNetModel
    vae: AutoencoderKL | None     # None: loaded without (a refiner: the base model decodes)
    text_models: tuple[transformers.CLIPTextModel, ...]
    family: Family
    path: str
    metadata: dict[str, str] = field(default_factory=dict)
    vae_path: str | None = None
    prediction: Prediction = field(default_factory=lambda: Prediction("eps"))
    schedule: DiscreteSchedule = field(default_factory=DiscreteSchedule.sd)
    key: tuple | None = None      # the file's identity, for the engine's kept checkpoints (sd_checkpoints_limit)

    @property
    def text_model(self) -> transformers.CLIPTextModel:
        """The first text encoder (SD 1.x / 2.x: the only one; SDXL: CLIP-L; refiner: OpenCLIP bigG)."""
        return self.text_models[0]

    @property
    def native_size(self) -> int:
        """The image side to use when the user picks none (metadata ``webui.native_size``, else the family's;
        SD 2.x: 768 for the v-prediction models, 512 for the eps ones)."""
        if self.family.prediction == "detect" and self.prediction.kind == "eps":
            return families.metadata_native_size(self.metadata) or 512
        return families.native_size(self.family, self.metadata)

    def describe(self) -> str:
        """The family and prediction in words ("SDXL, v-prediction (zero terminal SNR; v_pred key)")."""
        kind = {"eps": "eps-prediction", "v": "v-prediction"}[self.prediction.kind]
        notes = (["zero terminal SNR"] if self.prediction.zero_snr else []) + \
            ([self.prediction.source] if self.prediction.source != "family" else [])
        return f"{self.family.label}, {kind}" + (f" ({'; '.join(notes)})" if notes else "")


def noise_schedule(prediction: Prediction) -> DiscreteSchedule:
    """SD's scaled-linear schedule, rescaled to zero terminal SNR where the model was trained so."""
    acp = sd_alphas_cumprod()
    return DiscreteSchedule(zero_terminal_snr(acp) if prediction.zero_snr else acp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read ``path`` and check that it is a complete checkpoint of a supported family, building nothing
    (the tensors stay memory-mapped). Pass the result to ``load_checkpoint(state_dict=...)`` so the
    file is read once. Raises ``CheckpointError`` like ``load_checkpoint``."""
    sd = read_state_dict(path)
    detection.detect_family(sd, name=str(path))
    return sd


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, vae_path: str | os.PathLike | None = None,
                    metadata: Mapping[str, str] | None = None,
                    vae_dtype: torch.dtype | None = None,
                    state_dict: Mapping[str, torch.Tensor] | None = None,
                    prediction: str | None = None, with_vae: bool = True,
                    text_dtype: torch.dtype | None = None) -> StableDiffusionModel:
    """Load a single-file SD checkpoint (original layout, .safetensors or .ckpt).

    ``metadata`` replaces the file's own safetensors metadata (for ``webui.arch`` overrides);
    ``vae_path`` replaces the checkpoint's VAE with an external one; ``vae_dtype`` and ``text_dtype`` default
    to ``dtype``.
    ``model_ema.*`` keys of "full" files are ignored (the normal keys are used, as A1111 does).
    ``state_dict``: the file's tensors when already read (``read_checkpoint``). ``prediction``: "eps" or "v"
    overrides what the file says or what is measured (``--prediction``); ``with_vae=False`` leaves the VAE out.
    Raises ``CheckpointError`` naming the file for anything that is not a complete, supported checkpoint.
    """
    name, device = str(path), torch.device(device)
    sd = read_state_dict(path) if state_dict is None else state_dict
    release = getattr(sd, "release_pages", None)  # memory-mapped .safetensors: give pages back once copied
    meta = dict(read_metadata(path) if metadata is None else metadata)
    family = detection.detect_family(sd, name=name, need_vae=vae_path is None and with_vae)
    arch = families.arch_overrides(meta, name=name)

    unet_what = f"{name}: UNet ({family.unet_prefix}*)"
    unet_config = infer_config(unet_what, families.unet_config, sd, family, arch.get("unet"))
    unet = build_network(UNetModel, unet_config, _sub(sd, family.unet_prefix), device, dtype, unet_what,
                  release)

    text_models = tuple(_load_text(sd, spec, name, device, text_dtype or dtype, arch.get("clip"), release)
                        for spec in family.text)
    _check_vector_width(family, unet_config, text_models, name)
    chosen = families.prediction_from_keys(sd, family, prediction)
    if chosen is None:
        chosen = families.detect_prediction(unet)

    if not with_vae:
        del sd
        vae = None
    elif vae_path is None:
        vae_what = f"{name}: VAE ({family.vae_prefix}*)"
        vae_sd = _vae_state(_sub(sd, family.vae_prefix))
        vae_config = infer_config(vae_what, families.vae_config, vae_sd, "", arch.get("vae"))
        del sd
        vae = build_network(AutoencoderKL, vae_config, vae_sd, device, vae_dtype or dtype, vae_what, release)
        del vae_sd
    else:
        del sd
        vae = load_vae(vae_path, device=device, dtype=vae_dtype or dtype)
    return StableDiffusionModel(unet=unet, vae=vae, text_models=text_models, family=family, path=name,
                                metadata=meta, vae_path=None if vae_path is None else str(vae_path),
                                prediction=chosen, schedule=noise_schedule(chosen))


def _check_vector_width(family: Family, config, text_models, name: str) -> None:
    """SDXL-style files: the UNet's ``label_emb`` must take what the vector is made of (pooled text +
    256 per size number), else generation would fail on the first step."""
    if family.vector is None:
        return
    numbers = {"sdxl": 6, "sdxl_refiner": 5}[family.vector]
    pooled = next(m.config.projection_dim for m, spec in zip(text_models, family.text) if spec.pooled)
    expected = pooled + numbers * 256
    if config.adm_in_channels != expected:
        raise CheckpointError(f"{name}: the UNet's label_emb takes {config.adm_in_channels} inputs, but this "
                              f"{family.label} file's vector has {expected} (pooled text {pooled} + {numbers} x 256)")


def _load_text(sd, spec: TextSpec, name: str, device, dtype, overrides, release):
    """One text encoder of the file, under transformers' names (OpenCLIP layouts converted)."""
    prefix = families.text_prefix(sd, spec)
    what = f"{name}: text encoder {spec.label} ({prefix}*)"
    overrides = {"hidden_act": spec.activation, **(overrides or {})}   # the family's: shapes cannot say it
    text_sd = {k: v for k, v in _sub(sd, prefix).items() if not k.endswith(_IGNORED_SUFFIXES)}
    if spec.layout == "open_clip":
        config = infer_config(what, lambda s, o: open_clip.config(s, projection=spec.pooled, overrides=o),
                              text_sd, overrides)
        text_sd = open_clip.to_transformers(text_sd, projection=spec.pooled)
    else:
        config = infer_config(what, families.clip_config, text_sd, "", overrides)
    return _build_text(config, text_sd, device, dtype, what, release, projection=spec.pooled)


def load_vae(path: str | os.PathLike, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """Load a standalone VAE file (keys with or without ``first_stage_model.``; 2-D attention weights accepted)."""
    name = str(path)
    sd = read_state_dict(path)
    if any(k.startswith("first_stage_model.") for k in sd):
        vae_sd = _vae_state(_sub(sd, "first_stage_model."))
    else:  # standalone files may also carry training leftovers (loss.*, model_ema.*)
        vae_sd = _vae_state({k: v for k, v in sd.items() if k.startswith(_VAE_ROOTS)})
    missing = [k for k in families.VAE_REQUIRED if k not in vae_sd]
    if missing:
        sample = ", ".join(list(sd)[:3]) or "no tensors"
        raise CheckpointError(f"{name}: not an original-layout VAE: missing {', '.join(missing[:4])}"
                              f"{' ...' if len(missing) > 4 else ''}; found keys like {sample}. Expected "
                              "encoder.*, decoder.*, quant_conv, post_quant_conv (optionally under first_stage_model.)")
    del sd
    arch = families.arch_overrides(read_metadata(path), name=name)
    config = infer_config(f"{name}: VAE", families.vae_config, vae_sd, "", arch.get("vae"))
    return build_network(AutoencoderKL, config, vae_sd, torch.device(device), dtype, f"{name}: VAE")


# ------------------------------------------------------------------------------------------ helpers

def infer_config(what: str, infer, *args):
    """Run a config inference; its errors name the file and network (used by extensions' networks too)."""
    try:
        return infer(*args)
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None


def _sub(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


def _vae_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop training-only keys; diffusers-converted 2-D attention weights become 1x1 conv weights."""
    out = {}
    for k, v in sd.items():
        if k.startswith(_IGNORED_VAE_PREFIXES):
            continue
        parts = k.split(".")
        if len(parts) == 5 and parts[1:3] == ["mid", "attn_1"] and parts[3] in _VAE_ATTN and parts[4] == "weight" \
                and v.ndim == 2:
            v = v[:, :, None, None]
        out[k] = v
    return out


def _convert(sd: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
             release: Callable[[torch.Tensor], None] | None = None,
             channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Copy each tensor to the target device (floating ones also to dtype), one at a time.

    ``release`` (the file's ``MappedStateDict.release_pages``) gives each source tensor's memory-mapped
    pages back as soon as it is copied, so the file's pages and the converted weights are not all
    resident at once (peak memory = the model plus one tensor, instead of the model plus the file).
    ``channels_last`` stores 4-D (conv) weights in channels-last order.
    """
    out = {}
    for k, v in sd.items():
        if channels_last and v.ndim == 4 and v.is_floating_point():
            out[k] = torch.empty_like(v, device=device, dtype=dtype, memory_format=torch.channels_last).copy_(v)
        else:
            out[k] = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=True)
        if release is not None:
            release(v)
    return out


def _check_keys(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s), e.g. {', '.join(missing[:4])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s), e.g. {', '.join(unexpected[:4])}")
    wrong = [(k, tuple(expected[k].shape), tuple(sd[k].shape)) for k in sorted(set(sd) & set(expected))
             if expected[k].shape != sd[k].shape]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. " +
                        ", ".join(f"{k} expected {e} found {f}" for k, e, f in wrong[:3]))
    kinds = [(k, sd[k].dtype) for k in sorted(set(sd) & set(expected))
             if expected[k].is_floating_point() != sd[k].is_floating_point()]
    if kinds:
        problems.append(f"{len(kinds)} tensor(s) of the wrong kind, e.g. " +
                        ", ".join(f"{k} is {dtype} where weights are floating point" for k, dtype in kinds[:3]))
    if problems:
        raise CheckpointError(f"{what}: weights do not match the architecture inferred from the file: "
                              + "; ".join(problems))


def build_network(cls, config, sd: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
                  what: str, release: Callable[[torch.Tensor], None] | None = None):
    """``cls(config)`` built on the meta device, filled from ``sd`` (keys checked, tensors assigned on ``device``
    in ``dtype``), in eval mode."""
    with torch.device("meta"):
        module = cls(config)
    _check_keys(module, sd, what)
    # the VAE's full-resolution convs run ~10% faster channels-last on CPU (the UNet's do not gain)
    channels_last = cls is AutoencoderKL and device.type == "cpu"
    module.load_state_dict(_convert(sd, device, dtype, release, channels_last), strict=True, assign=True)
    return module.requires_grad_(False).eval()


def _build_text(config: transformers.CLIPTextConfig, sd: Mapping[str, torch.Tensor], device: torch.device,
                dtype: torch.dtype, what: str, release: Callable[[torch.Tensor], None] | None = None, *,
                projection: bool = False) -> transformers.CLIPTextModel:
    """``CLIPTextModel`` (``sd`` without a ``text_model.`` level), or ``CLIPTextModelWithProjection`` when
    ``projection`` (``sd`` as for CLIPTextModel plus ``text_projection.weight``)."""
    if projection:
        sd = {k if k == "text_projection.weight" else "text_model." + k: v for k, v in sd.items()}
    with torch.device("meta"):
        model = (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config)
    _check_keys(model, sd, what)
    model.load_state_dict(_convert(sd, device, dtype, release), strict=True, assign=True)
    # non-persistent buffers are not in the file: make them on the target device
    embeddings = getattr(model, "text_model", model).embeddings
    positions = torch.arange(config.max_position_embeddings, device=device).expand((1, -1))
    embeddings.register_buffer("position_ids", positions, persistent=False)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{what}: tensors not provided by the file: {', '.join(leftover[:4])}")
    return model.requires_grad_(False).eval()
