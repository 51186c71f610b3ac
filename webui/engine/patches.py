"""Per-job changes to the resident model, from extensions: clone-then-patch, never monkey-patching.

A job gets a ``JobPatches`` record (the "clone": it says what this job changes and shares the resident
weights). ``ModelPatcher.applied(model, patches)`` makes it true for the job:

- weight patches: ``W <- W + strength * delta(W)`` on the named parameters, computed in float32 and
  stored in the parameter's dtype; the originals are kept and copied back (bit-exact). When the next job
  asks for the same patches (equal ``key``s) they stay merged instead of being restored and merged again.
- text-encoder hooks: torch forward hooks on modules of this model's text encoder, for the job only.
- the padding of the UNet's and VAE's convolutions (``conv_padding``: "circular" for tiling), put back after.

The rest is read by the denoiser during sampling: UNet wrappers and block wrappers, residual providers
(ControlNet), wrappers around each model call (before CFG) and after CFG, per-step callbacks, and wrappers
around each pass's sampler loop.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import torch

from .unet import UNetExtras


@dataclass(frozen=True)
class WeightPatch:
    target: str                                   # "unet", "text" (first text encoder) or "text_2" (SDXL: bigG)
    module: str                                   # module path in that network ("input_blocks.1.1.proj_in")
    delta: Callable[[torch.Tensor], torch.Tensor]  # W (float32) -> ΔW (float32, W's shape)
    strength: float = 1.0
    key: Hashable = None                          # same key on the next job: kept merged (None: never)
    param: str = "weight"


@dataclass
class CallInfo:
    """What a model call is: the call index (A1111's step), the sampler step it belongs to (as A1111's
    ``state.sampling_step``: the last finished step, 0 at first), the steps of the run, and which rows
    of the batch are unconditional."""
    call: int
    sampling_step: int
    total_steps: int
    uncond_rows: list[bool]


# p(x, t, cond, info): ``cond`` is the call's ``Cond`` (``crossattn`` = the UNet's context, ``vector`` its y)
ResidualProvider = Callable[[torch.Tensor, torch.Tensor, object, CallInfo], "UNetExtras | None"]


@dataclass(frozen=True)
class PatchKind:
    """One kind of per-job change: its ``JobPatches`` field, how a failure is named, what a failed entry gives
    instead (``fallback``, None: nothing), and where the function sits in an entry (``part``: a field of a
    dataclass entry, an index of a tuple entry; None: the entry is the function)."""
    field: str
    label: str
    fallback: Callable | None = None
    part: str | int | None = None

    def guarded(self, entry, guard: Callable[..., Callable], name: str = ""):
        if self.part is None:
            return guard(entry, f"{self.label} {name}".strip(), self.fallback)
        if isinstance(self.part, int):
            detail = entry[0]
            return (*entry[:self.part], guard(entry[self.part], f"{self.label} {detail}", self.fallback),
                    *entry[self.part + 1:])
        detail = getattr(entry, "module", "")
        return dataclasses.replace(entry, **{self.part: guard(getattr(entry, self.part), f"{self.label} {detail}",
                                                              self.fallback)})


# The per-job patch kinds, once: JobPatches' lists, in the order the hook documents them.
PATCH_KINDS: tuple[PatchKind, ...] = (
    PatchKind("weights", "weight patch", torch.zeros_like, part="delta"),
    PatchKind("text_hooks", "text hook", None, part=1),
    PatchKind("unet_wrappers", "UNet wrapper", lambda apply, *a: apply(*a)),
    PatchKind("block_wrappers", "block wrapper", lambda apply, *a: apply(*a)),
    PatchKind("residuals", "residuals", None),
    PatchKind("model_wrappers", "model wrapper", lambda apply, x, sigma, cond, info: apply(x, sigma, cond)),
    PatchKind("after_cfg", "after-CFG function", lambda denoised, *a: denoised),
    PatchKind("step_callbacks", "step callback", None),
    PatchKind("sample_wrappers", "sample wrapper", lambda apply, x, sigmas: apply(x, sigmas)),
)


@dataclass
class JobPatches:
    weights: list[WeightPatch] = field(default_factory=list)
    text_hooks: list[tuple[str, Callable]] = field(default_factory=list)     # (module path, forward hook)
    unet_wrappers: list[Callable] = field(default_factory=list)    # w(apply, x, t, cond, extras) -> out
    block_wrappers: dict[str, list[Callable]] = field(default_factory=dict)  # w(apply, h, emb, context) -> h
    residuals: list[ResidualProvider] = field(default_factory=list)  # p(x, t, cond, info) -> UNetExtras
    model_wrappers: list[Callable] = field(default_factory=list)   # w(apply, x, sigma, cond, info) -> x0
    after_cfg: list[Callable] = field(default_factory=list)        # f(denoised, x, sigma, info) -> denoised
    step_callbacks: list[Callable] = field(default_factory=list)   # f(progress) after each sampler step
    sample_wrappers: list[Callable] = field(default_factory=list)  # w(apply, x, sigmas) -> latents: the loop
    conv_padding: str | None = None    # "circular": the UNet's and VAE's convolutions wrap around (tiling)

    def add_block_wrapper(self, block: str, wrapper: Callable) -> None:
        self.block_wrappers.setdefault(block, []).append(wrapper)

    def lists(self) -> Iterator[tuple[PatchKind, str, list]]:
        """Every list of entries, with its kind (block wrappers: one list per block, named by the block)."""
        for kind in PATCH_KINDS:
            value = getattr(self, kind.field)
            if isinstance(value, dict):
                yield from ((kind, name, entries) for name, entries in value.items())
            else:
                yield kind, "", value

    def marks(self) -> dict[tuple[str, str], int]:
        """How many entries each list has now (``guard_since`` takes it)."""
        return {(kind.field, name): len(entries) for kind, name, entries in self.lists()}

    def guard_since(self, marks: dict[tuple[str, str], int], guard: Callable[..., Callable]) -> None:
        """Wrap every entry added since ``marks`` with ``guard(fn, what, fallback)`` -- a function that, when
        ``fn`` fails, reports ``what`` and returns ``fallback(*args)`` -- so that a failing piece is dropped from
        the job instead of failing it."""
        for kind, name, entries in self.lists():
            start = marks.get((kind.field, name), 0)
            entries[start:] = [kind.guarded(entry, guard, name) for entry in entries[start:]]

    def unet_extras(self, x, t, cond, info: CallInfo) -> UNetExtras | None:
        """The residual providers' contributions summed, with the block wrappers."""
        found = [e for e in (p(x, t, cond, info) for p in self.residuals) if e is not None]
        if not found and not self.block_wrappers:
            return None
        return UNetExtras(_sum_lists([e.input_residuals for e in found]),
                          _sum([e.middle_residual for e in found]),
                          _sum_lists([e.output_residuals for e in found]), self.block_wrappers)


def _sum(items):
    items = [i for i in items if i is not None]
    if not items:
        return None
    total = items[0]
    for item in items[1:]:
        total = total + item
    return total


def _sum_lists(lists):
    lists = [values for values in lists if values is not None]
    if not lists:
        return None
    return [_sum(column) for column in zip(*lists, strict=True)]


class ModelPatcher:
    """Applies ``JobPatches`` to one resident model; holds the originals of patched weights."""

    def __init__(self) -> None:
        self._originals: dict[tuple[str, str], torch.Tensor] = {}
        self._merged_key: tuple | None = None

    @staticmethod
    def _network(model, target: str) -> torch.nn.Module:
        if target == "unet":
            return model.unet
        encoders = model.text_models
        names = ["text"] + [f"text_{i + 1}" for i in range(1, len(encoders))]
        if target in names:
            return encoders[names.index(target)]
        raise ValueError(f"weight patch target must be one of {', '.join(['unet', *names])}, not {target!r}")

    @staticmethod
    def _parameter(network: torch.nn.Module, module: str, param: str) -> torch.nn.Parameter:
        try:
            return network.get_submodule(module).get_parameter(param)
        except AttributeError:
            raise ValueError(f"no parameter {module}.{param} in this model") from None

    def merge(self, model, patches: list[WeightPatch]) -> None:
        keys = tuple(p.key for p in patches)
        if patches and None not in keys and keys == self._merged_key:
            return
        self.restore(model)
        with torch.no_grad():
            for patch in patches:
                param = self._parameter(self._network(model, patch.target), patch.module, patch.param)
                slot = (patch.target, f"{patch.module}.{patch.param}")
                if slot not in self._originals:
                    self._originals[slot] = param.detach().clone()
                weight = param.detach().float()
                delta = patch.delta(weight)
                if delta.shape != weight.shape:
                    raise ValueError(f"{patch.module}: patch of shape {tuple(delta.shape)} for a weight of "
                                     f"shape {tuple(weight.shape)}")
                param.copy_((weight + patch.strength * delta.to(weight.device, torch.float32)).to(param.dtype))
        self._merged_key = keys if patches and None not in keys else None

    def restore(self, model) -> None:
        """Put every patched weight back as it was (bit for bit)."""
        with torch.no_grad():
            for (target, name), original in self._originals.items():
                module, _, param = name.rpartition(".")
                self._parameter(self._network(model, target), module, param).copy_(original)
        self._originals.clear()
        self._merged_key = None

    def forget(self) -> None:
        """The model was replaced: drop the originals without writing them anywhere."""
        self._originals.clear()
        self._merged_key = None

    @contextlib.contextmanager
    def applied(self, model, patches: JobPatches) -> Iterator[None]:
        """Weights merged and text hooks in place for the ``with`` block. Merged weights whose patches have
        keys stay merged after it (the next job with other patches restores them first)."""
        self.merge(model, patches.weights)
        handles = []
        modes = _set_conv_padding(model, patches.conv_padding) if patches.conv_padding else []
        try:
            for module, hook in patches.text_hooks:
                handles.append(model.text_model.get_submodule(module).register_forward_hook(hook))
            yield
        except BaseException:
            self.restore(model)
            raise
        finally:
            for handle in handles:
                handle.remove()
            for conv, mode in modes:
                conv.padding_mode = mode
            if self._merged_key is None:
                self.restore(model)


def _set_conv_padding(model, mode: str) -> list[tuple[torch.nn.Conv2d, str]]:
    """Every padded convolution of the UNet and the VAE pads with ``mode`` (torch's own ``padding_mode``);
    returns what to put back. Convolutions without padding (the VAE's downsamplers pad themselves) are left."""
    changed = []
    for network in (model.unet, model.vae):
        for module in network.modules() if network is not None else ():
            if isinstance(module, torch.nn.Conv2d) and any(module.padding):
                changed.append((module, module.padding_mode))
                module.padding_mode = mode
    return changed
