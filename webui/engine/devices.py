"""Device and precision choice.

CPU runs in float32 (half precision is slow or unsupported there). CUDA defaults to float16, with the
VAE decode retried in float32 when it produces NaNs (the classic SD1.x VAE overflow). ``--precision``
``full`` / ``half`` / ``bf16`` and A1111's ``--no-half`` / ``--no-half-vae`` override the default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "full", "half", "bf16")


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU. An unavailable device is an error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for, but torch sees no MPS device")
    return device


@dataclass(frozen=True)
class Precision:
    """The dtypes the networks are kept in."""
    unet: torch.dtype
    text: torch.dtype
    vae: torch.dtype

    @property
    def label(self) -> str:
        return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.unet]


def resolve_precision(device: torch.device, precision: str = "auto", *, no_half: bool = False,
                      no_half_vae: bool = False) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if no_half or precision == "full":
        dtype = torch.float32
    elif precision == "half":
        dtype = torch.float16
    elif precision == "bf16":
        dtype = torch.bfloat16
    else:
        dtype = torch.float16 if device.type in ("cuda", "mps") else torch.float32
    vae = torch.float32 if no_half_vae else dtype
    return Precision(unet=dtype, text=dtype, vae=vae)
