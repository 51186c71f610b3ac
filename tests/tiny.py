"""One factory for the tiny random checkpoints of every family, in the original single-file layouts.

``tiny_checkpoint(path)`` writes an SD 1.x file (``tests.tiny_models``); ``tiny_checkpoint(path, "sdxl")``
an SD 2.x / SDXL / SDXL-refiner one (``tests.tiny_families``; "sd2-inpaint" and "sdxl-inpaint" are the same as
``inpaint=True``). The state-dict builders and the diffusers config folders the reference tests use stay in
those two modules.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_families import FAMILIES, _write_family_checkpoint
from tests.tiny_models import _write_tiny_checkpoint

SD1 = ("sd1", "sd1-inpaint")
# the arguments each builder takes, beyond path / inpaint / seed / dtype / metadata, with their defaults
_SD1_ONLY = {"ema": False, "fmt": None, "model_channels": 32}
_FAMILY_ONLY = {"v_like": False, "v_pred": False}


def tiny_checkpoint(path, family: str = "sd1", *, inpaint: bool = False, seed: int = 0,
                    dtype: torch.dtype = torch.float32, metadata: dict[str, str] | None = None, ema: bool = False,
                    fmt: str | None = None, model_channels: int = 32, v_like: bool = False,
                    v_pred: bool = False) -> Path:
    """Write a tiny ``family`` checkpoint at ``path`` and return its path.

    ``family``: "sd1" (also "sd1-inpaint"), "sd2", "sdxl", "sdxl-refiner" ("sd2-inpaint", "sdxl-inpaint").
    Every family: ``inpaint`` (9-channel UNet input; not the refiner), ``seed``, ``dtype`` (of the floating
    tensors), ``metadata`` (the safetensors header's). SD 1.x only: ``ema`` (``model_ema.*`` keys as "full"
    training files have), ``fmt`` ("safetensors" or "ckpt"; default from the suffix), ``model_channels``
    (a bigger UNet). SD 2.x only: ``v_like`` (A1111's one-step test says v-prediction). SDXL only: ``v_pred``
    (the root ``v_pred`` / ``ztsnr`` markers). An argument given to a family it does not apply to is a
    ValueError that names it. The bytes written are those of the family's builder for the same arguments.
    """
    given = dict(ema=ema, fmt=fmt, model_channels=model_channels, v_like=v_like, v_pred=v_pred)
    if family in SD1:
        _refuse(family, {k: given[k] for k in _FAMILY_ONLY}, _FAMILY_ONLY)
        return _write_tiny_checkpoint(path, dtype=dtype, ema=ema, inpaint=inpaint or family == "sd1-inpaint",
                                      fmt=fmt, seed=seed, model_channels=model_channels, metadata=metadata)
    if family.removesuffix("-inpaint") not in FAMILIES:
        raise ValueError(f"family must be one of {SD1 + FAMILIES} (or sd2-inpaint, sdxl-inpaint), got {family!r}")
    _refuse(family, {k: given[k] for k in _SD1_ONLY}, _SD1_ONLY)
    return _write_family_checkpoint(path, family, inpaint=inpaint, v_like=v_like, v_pred=v_pred, seed=seed,
                                    dtype=dtype, metadata=metadata)


def _refuse(family: str, given: dict, defaults: dict) -> None:
    wrong = [name for name, value in given.items() if value != defaults[name]]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to family "
                         f"{family!r}")
