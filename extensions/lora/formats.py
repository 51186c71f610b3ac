"""LoRA-family files -> per-module weight deltas (ΔW) for our UNet and text encoder.

Formats read (any of them may appear with kohya names or with dotted diffusers/PEFT names):

- kohya LoRA / LyCORIS LoCon: ``<name>.lora_down.weight``, ``.lora_up.weight``, optional ``.alpha``
  and ``.lora_mid.weight`` (LyCORIS "tucker" conv core). ΔW = up·down (kernels flattened into the
  input side), or with a mid core ΔW[o,i,h,w] = Σ up[o,a]·mid[a,b,h,w]·down[b,i]; scale alpha/rank,
  rank = lora_down rows.
- LyCORIS LoHa: ``hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b`` (optional tucker cores ``hada_t1``,
  ``hada_t2``): ΔW = (w1a·w1b) ⊙ (w2a·w2b); scale alpha/rank, rank = hada_w1_b rows.
- LyCORIS LoKr: ``lokr_w1`` or ``lokr_w1_a``·``lokr_w1_b``; ``lokr_w2`` or ``lokr_w2_a``·``lokr_w2_b``
  (optional tucker core ``lokr_t2``): ΔW = kron(w1, w2). alpha/rank applies only when a factor is
  itself low-rank (rank = ``lokr_w2_b`` rows, else ``lokr_w1_b`` rows); two full factors: scale 1.
- LyCORIS "full": ``diff`` (ΔW stored as is, scale 1).
- diffusers / PEFT: ``<module>.lora_A.weight`` / ``.lora_B.weight`` (ΔW = B·A), the older diffusers
  ``.lora.down/up.weight``, ``.lora_linear_layer.down/up.weight`` and attention-processor
  ``...attn1.processor.to_q_lora.down.weight`` keys; alpha from ``.alpha`` keys, else from diffusers'
  ``lora_adapter_metadata`` header entry (``lora_alpha``, ``alpha_pattern``, ``use_rslora``), else none
  (scale 1).

Text encoders: ``lora_te_`` / ``text_encoder.`` name the first (SD 1.x / 2.x: the only one), SDXL's
``lora_te1_`` / ``lora_te2_`` (kohya) and ``text_encoder.`` / ``text_encoder_2.`` (diffusers, PEFT) name
CLIP-L and OpenCLIP bigG (which we hold as a transformers CLIP model, so its module names are the ones
these files use).

Module names are resolved only through tables built from the model's own module names -- our LDM
names and their diffusers equivalents (``webui.engine.diffusers_names``) -- with ``.`` -> ``_`` applied
to those names for kohya keys; a key is never rewritten from ``_`` back to ``.``. Every key that does
not end up in a module is listed in ``LoraFile.unknown_keys``; modules whose tensors cannot produce
a delta of the target weight's shape are left out and described in ``LoraFile.mismatched``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from webui.hooks.api import read_metadata, read_state_dict, unet_module_names


# kohya names: "lora_unet_" / "lora_te_" (SDXL: "lora_te1_", "lora_te2_") + a module path with "." -> "_"
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
# dotted UNet names: one of these + our (LDM) or the diffusers module path
_UNET_PREFIXES = ("", "unet.", "diffusion_model.", "model.diffusion_model.")

# parameter names of older diffusers files -> the PEFT names
_PEFT_ALIASES = {"lora.down.weight": "lora_A.weight", "lora.up.weight": "lora_B.weight",
                 "lora_linear_layer.down.weight": "lora_A.weight", "lora_linear_layer.up.weight": "lora_B.weight"}
# old diffusers attention-processor keys: "<attention>[.processor].to_q_lora.down.weight"
_PROCESSOR_KEY = re.compile(r"^(?P<base>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\."
                            r"(?P<part>down|up)\.weight$")
_PROCESSOR_TARGETS = {"to_q": ("to_q", "q_proj"), "to_k": ("to_k", "k_proj"), "to_v": ("to_v", "v_proj"),
                      "to_out": ("to_out.0", "out_proj")}
_METADATA_KEY = "lora_adapter_metadata"  # diffusers' PEFT LoraConfig fields, "<component>.<field>"


@dataclass
class LoraModule:
    """One adapted module. ``tensors`` uses the format's own parameter names (older diffusers names are
    stored under the PEFT ones: ``lora_A.weight`` / ``lora_B.weight``); ``alpha`` comes from the module's
    ``.alpha`` key (PEFT: else from diffusers' header metadata); None: none given, scale 1."""
    target: str          # "unet", "text" (first text encoder) or "text_2" (SDXL's bigG)
    module: str          # our module path inside that network
    kind: str            # "lora" (incl. LoCon), "loha", "lokr", "peft", "full"
    tensors: dict[str, torch.Tensor]
    alpha: float | None

    @property
    def rank(self) -> int | None:
        """The rank that alpha is divided by; None where the format has no such scale."""
        t = self.tensors
        if self.kind == "lora":
            return t["lora_down.weight"].shape[0]
        if self.kind == "peft":
            return t["lora_A.weight"].shape[0]
        if self.kind == "loha":
            return t["hada_w1_b"].shape[0]
        if self.kind == "lokr":
            for name in ("lokr_w2_b", "lokr_w1_b"):
                if name in t:
                    return t[name].shape[0]
        return None

    @property
    def scale(self) -> float:
        """alpha / rank, or 1 where alpha is missing or the format has no rank."""
        rank = self.rank
        return self.alpha / rank if self.alpha is not None and rank else 1.0

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """ΔW (float32, on ``weight``'s device, shaped like ``weight``) with alpha/rank applied and the
        user's multiplier not applied. Raises ValueError when the tensors do not fit ``weight``."""
        t = {k: v.to(weight.device, torch.float32) for k, v in self.tensors.items()}
        try:
            if self.kind == "lora":
                up, down = t["lora_up.weight"].flatten(1), t["lora_down.weight"].flatten(1)
                mid = t.get("lora_mid.weight")
                raw = up @ down if mid is None else torch.einsum("oa,abhw,bi->oihw", up, mid, down)
            elif self.kind == "peft":
                raw = t["lora_B.weight"].flatten(1) @ t["lora_A.weight"].flatten(1)
            elif self.kind == "loha":
                w1 = _product(t["hada_w1_a"], t["hada_w1_b"], t.get("hada_t1"))
                w2 = _product(t["hada_w2_a"], t["hada_w2_b"], t.get("hada_t2"))
                raw = w1 * w2.reshape(w1.shape)
            elif self.kind == "lokr":
                w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
                w2 = t["lokr_w2"] if "lokr_w2" in t else _product(t["lokr_w2_a"], t["lokr_w2_b"], t.get("lokr_t2"))
                if w2.ndim == 4:  # a conv kernel factor: the kernel stays with w2
                    w1 = w1[:, :, None, None]
                raw = torch.kron(w1.contiguous(), w2.contiguous())
            elif self.kind == "full":
                raw = t["diff"]
            else:
                raise ValueError(f"unknown kind {self.kind!r}")
            if raw.numel() != weight.numel():
                raise ValueError(f"gives {raw.numel()} values ({tuple(raw.shape)}), expected {weight.numel()}")
            return raw.reshape(weight.shape) * self.scale
        except (RuntimeError, ValueError, KeyError, IndexError) as e:   # (IndexError: too few dimensions)
            raise ValueError(f"{self.target} module {self.module} ({self.kind}): tensors "
                             f"{ {k: tuple(v.shape) for k, v in self.tensors.items()} } do not make a delta for "
                             f"weight {tuple(weight.shape)}: {e}") from None


@dataclass
class LoraFile:
    """A file resolved against one model: ``modules`` are safe to merge (each one's delta fits its weight)."""
    modules: list[LoraModule]
    unknown_keys: list[str]      # keys that name no module of this model, or that no format uses
    metadata: dict[str, str]     # safetensors header metadata (ss_* keys etc.)
    mismatched: list[str] = field(default_factory=list)  # modules left out: shapes do not fit the model
    trained_for: "TrainedFor | None" = None


# cross-attention widths of the released families (what their key/value projections take in)
_CONTEXT_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "the SDXL refiner"}
_DOWN_NAMES = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "lora_linear_layer.down.weight", "hada_w1_b",
               "hada_w2_b")


@dataclass(frozen=True)
class TrainedFor:
    """What a LoRA file says about the model it was made for: kohya's ``ss_base_model_version``, the width
    its cross-attention key/value adapters take in (the model's context width), whether it has adapters for
    a second text encoder (SDXL), and the width of its first text encoder's adapters."""
    base_version: str | None = None
    context_dim: int | None = None
    two_text_encoders: bool = False
    text_width: int | None = None

    def label(self) -> str:
        if self.context_dim is not None:
            return _CONTEXT_FAMILIES.get(self.context_dim, f"a model with cross-attention width {self.context_dim}")
        if self.base_version:
            version = self.base_version.lower()
            return "SDXL" if version.startswith("sdxl") else "SD 2.x" if version.startswith("sd_v2") else \
                "SD 1.x" if version.startswith("sd_v1") else self.base_version
        if self.two_text_encoders:
            return "SDXL"
        return {768: "SD 1.x", 1024: "SD 2.x"}.get(self.text_width, f"a text encoder of width {self.text_width}")

    def mismatch(self, context_dim: int, text_widths: list[int]) -> bool:
        """True when the file cannot be for a model with this context width and these text encoders."""
        if self.context_dim is not None and self.context_dim != context_dim:
            return True
        if self.two_text_encoders and len(text_widths) < 2:
            return True
        if self.text_width is not None and len(text_widths) == 1 and self.text_width != text_widths[0]:
            return True
        if self.context_dim is None and self.text_width is None and self.base_version:
            xl = self.base_version.startswith("sdxl")
            return xl != (len(text_widths) > 1)
        return False


def trained_for(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> TrainedFor:
    """Read ``TrainedFor`` from a LoRA file's keys and shapes (and kohya's metadata)."""
    context = text_width = None
    two = False
    for key, tensor in state_dict.items():
        if key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")):
            two = True
        if tensor.ndim < 2 or not key.endswith(_DOWN_NAMES):
            continue
        if "attn2" in key and ("to_k" in key or "to_v" in key):
            context = context or int(tensor.shape[1])
        elif key.startswith(("lora_te_", "text_encoder.")) and ("q_proj" in key or "k_proj" in key):
            text_width = text_width or int(tensor.shape[1])
    version = (metadata or {}).get("ss_base_model_version") or None
    return TrainedFor(version, context, two, text_width)


def read_lora(path: str | os.PathLike, unet: nn.Module | None, text_model) -> LoraFile:
    """Read a LoRA-family file safely (``webui.engine.files``: no code from the file runs) and resolve
    its modules against ``unet`` (our LDM-layout UNet) and ``text_model`` (a CLIPTextModel, or the model's
    text encoders in order: ``StableDiffusionModel.text_models``)."""
    return parse_lora(read_state_dict(path), unet, text_model, read_metadata(path))


def parse_lora(state_dict: Mapping[str, torch.Tensor], unet: nn.Module | None, text_model,
               metadata: Mapping[str, str] | None = None) -> LoraFile:
    """Group ``state_dict``'s keys into modules of ``unet`` / ``text_model`` and recognise each one's format."""
    metadata = dict(metadata or {})
    names = _NameTables(unet, text_model)
    groups: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    file_names: dict[tuple[str, str], str] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        found = names.resolve(key)
        if found is None:
            unknown.append(key)
            continue
        target, module, file_name, param = found
        param = _PEFT_ALIASES.get(param, param)
        group = groups.setdefault((target, module), {})
        if param in group:  # the same module named twice (e.g. diffusers- and LDM-named keys)
            unknown.append(key)
            continue
        group[param] = (key, tensor)
        file_names.setdefault((target, module), file_name)

    peft_alpha = _PeftAlphas(metadata)
    modules, mismatched = [], []
    for (target, module), params in groups.items():
        kind, used = _recognise(params)
        if kind is None:
            unknown.extend(key for key, _ in params.values())
            continue
        unknown.extend(key for param, (key, _) in params.items() if param not in used and param != "alpha")
        alpha = None
        if "alpha" in params:
            key, value = params["alpha"]
            if value.numel() == 1:
                alpha = float(value.reshape(()).float())
            else:
                unknown.append(key)
        tensors = {param: params[param][1] for param in used}
        if alpha is None and kind == "peft":
            lora_a = tensors["lora_A.weight"]     # (a 0-D one is left out below: it makes no delta)
            alpha = peft_alpha.get(file_names[(target, module)], lora_a.shape[0] if lora_a.ndim else 0)
        entry = LoraModule(target, module, kind, tensors, alpha)
        weight = names.weights[(target, module)]
        try:  # shapes only: meta tensors hold no data
            entry_meta = dataclasses.replace(entry, tensors={k: v.to("meta") for k, v in tensors.items()})
            entry_meta.delta(torch.empty(weight.shape, device="meta"))
        except ValueError as e:
            mismatched.append(f"{file_names[(target, module)]}: {e}")
            continue
        modules.append(entry)
    return LoraFile(modules=modules, unknown_keys=unknown, metadata=metadata, mismatched=mismatched,
                    trained_for=trained_for(state_dict, metadata))


def _product(a: torch.Tensor, b: torch.Tensor, core: torch.Tensor | None) -> torch.Tensor:
    """a·b (kernels flattened into b's columns), or with a tucker core (r, r, kh, kw) and a (r, out),
    b (r, in): Σ core[i,j,h,w]·a[i,o]·b[j,n] -> (out, in, kh, kw)."""
    if core is None:
        return a.flatten(1) @ b.flatten(1)
    return torch.einsum("ijhw,io,jn->onhw", core, a.flatten(1), b.flatten(1))


def _recognise(params: Mapping[str, object]) -> tuple[str | None, set[str]]:
    """The format of one module's parameters and the parameter names it uses (alpha aside)."""
    have = set(params)
    if {"lora_down.weight", "lora_up.weight"} <= have:
        return "lora", {"lora_down.weight", "lora_up.weight"} | (have & {"lora_mid.weight"})
    if {"lora_A.weight", "lora_B.weight"} <= have:
        return "peft", {"lora_A.weight", "lora_B.weight"}
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= have:
        return "loha", {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} | (have & {"hada_t1", "hada_t2"})
    w1 = {"lokr_w1"} if "lokr_w1" in have else {"lokr_w1_a", "lokr_w1_b"}
    w2 = {"lokr_w2"} if "lokr_w2" in have else {"lokr_w2_a", "lokr_w2_b"} | (have & {"lokr_t2"})
    if w1 <= have and w2 <= have:
        return "lokr", w1 | w2
    if "diff" in have:
        return "full", {"diff"}
    return None, set()


class _NameTables:
    """File module names -> (target, our module path), built from the networks' own module names."""

    def __init__(self, unet: nn.Module | None, text_model):
        self.kohya: dict[str, tuple[str, str]] = {}
        self.dotted: dict[str, tuple[str, str]] = {}
        self.weights: dict[tuple[str, str], torch.Tensor] = {}
        self.longest = 0                                    # the longest name in ``dotted``
        encoders = [] if text_model is None else [text_model] if isinstance(text_model, nn.Module) else list(text_model)
        if unet is not None:
            ours = self._weighted("unet", unet)
            spellings = [(name, name) for name in sorted(ours)]
            spellings += [(diffusers, name) for diffusers, name in unet_module_names(unet).items() if name in ours]
            for spelling, name in spellings:
                self._add("unet", name, "lora_unet_" + spelling.replace(".", "_"),
                          [prefix + spelling for prefix in _UNET_PREFIXES])
        for index, encoder in enumerate(encoders):
            target = "text" if index == 0 else f"text_{index + 1}"
            kohya = ("lora_te_",) if len(encoders) == 1 else (f"lora_te{index + 1}_",)
            dotted = "text_encoder." if index == 0 else f"text_encoder_{index + 1}."
            nested = hasattr(encoder, "text_model")     # CLIPTextModelWithProjection keeps the level
            for name in sorted(self._weighted(target, encoder)):
                # files say "text_model.encoder...": transformers 5's CLIPTextModel has no "text_model" level
                full = name if nested or name.startswith("text_model.") else "text_model." + name
                bare = name.removeprefix("text_model.")
                for prefix in kohya:
                    self._add(target, name, prefix + full.replace(".", "_"), [dotted + full, dotted + bare])

    def _weighted(self, target: str, root: nn.Module) -> set[str]:
        """Names of the modules of ``root`` that hold a ``weight`` (recorded for the shape checks)."""
        found = set()
        for name, module in root.named_modules():
            weight = getattr(module, "weight", None)
            if name and isinstance(weight, torch.Tensor):
                self.weights[(target, name)] = weight
                found.add(name)
        return found

    def _add(self, target: str, ours: str, kohya: str, dotted: list[str]) -> None:
        self.kohya.setdefault(kohya, (target, ours))
        for name in dotted:
            self.dotted.setdefault(name, (target, ours))
            self.longest = max(self.longest, len(name))

    def resolve(self, key: str) -> tuple[str, str, str, str] | None:
        """(target, our module, the module's name in the file, parameter name) for a key, or None."""
        if key.startswith(_KOHYA_PREFIXES):
            file_name, _, param = key.partition(".")
            hit = self.kohya.get(file_name)
            return (*hit, file_name, param) if hit and param else None
        match = _PROCESSOR_KEY.match(key)
        if match:
            for projection in _PROCESSOR_TARGETS[match["proj"]]:
                file_name = f"{match['base']}.{projection}"
                if file_name in self.dotted:
                    return (*self.dotted[file_name], file_name, f"lora.{match['part']}.weight")
            return None
        end = min(len(key), self.longest + 1)  # (no longer prefix is a known name: a key of a million dots is quick)
        while (end := key.rfind(".", 0, end)) > 0:  # the longest known module name in front of a parameter
            hit = self.dotted.get(key[:end])
            if hit:
                return (*hit, key[:end], key[end + 1:])
        return None


class _PeftAlphas:
    """alpha of a PEFT module from diffusers' ``lora_adapter_metadata`` (``<component>.lora_alpha``,
    ``.alpha_pattern``, ``.use_rslora``); None without it (diffusers' convention: scale 1)."""

    def __init__(self, metadata: Mapping[str, str]):
        try:
            config = json.loads(metadata.get(_METADATA_KEY) or "{}")
        except ValueError:
            config = {}
        self.config = config if isinstance(config, dict) else {}

    def get(self, file_name: str, rank: int) -> float | None:
        component, _, name = file_name.partition(".")
        alpha = self.config.get(f"{component}.lora_alpha")
        if alpha is None:
            return None
        patterns = self.config.get(f"{component}.alpha_pattern") or {}
        if not isinstance(patterns, dict):
            raise ValueError(f"{_METADATA_KEY}: {component}.alpha_pattern is {_short(patterns)}, expected an object "
                             "of module name -> alpha")
        # The keys are module names (diffusers writes them so): matched as a whole name or the end of one after
        # a '.', literally. PEFT reads them as regular expressions, but one from a file could take forever.
        for pattern, value in patterns.items():
            if name == pattern or name.endswith("." + pattern):
                alpha = value
                break
        try:
            alpha = float(alpha)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{_METADATA_KEY}: the alpha of {component}.{name} is {_short(alpha)}, "
                             "expected a number") from None
        if self.config.get(f"{component}.use_rslora"):
            return alpha * math.sqrt(rank)  # scale alpha/sqrt(rank) written as alpha'/rank
        return alpha


def _short(value, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
