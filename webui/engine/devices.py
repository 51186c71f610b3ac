"""Device and precision choice.

CPU runs in bfloat16 where the processor computes it natively (AVX512-BF16 or AMX: measured on the
SD1.5-size bench file, 1.9x faster for the whole job, the VAE decode 2.1x, at 46.8 dB PSNR against the
float32 image; 48-50 dB on the demo model), else in float32 (half precision is slow or unsupported there).
CUDA defaults to float16, with the VAE decode retried in float32 when it produces NaNs (the classic SD1.x
VAE overflow). ``--precision`` ``full`` / ``half`` / ``bf16`` and A1111's ``--no-half`` / ``--no-half-vae``
override the default.
"""
from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
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
    elif device.type in ("cuda", "mps"):
        dtype = torch.float16
    else:
        dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    vae = torch.float32 if no_half_vae else dtype
    # the text encoder runs once per job: on the CPU it stays float32 (bf16 conditioning alone cost up to
    # 20 dB of PSNR on ancestral samplers, measured on the demo model)
    text = torch.float32 if device.type == "cpu" and dtype == torch.bfloat16 else dtype
    return Precision(unet=dtype, text=text, vae=vae)


_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """The CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, from /proc/cpuinfo's flags): oneDNN
    then runs bf16 convolutions and matmuls at about twice float32's speed. False where it cannot be told."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(flag in flags for flag in _BF16_FLAGS)
    return False


# glibc malloc settings (mallopt parameter numbers and the values we use)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_MMAP_THRESHOLD = 256 * 2**20  # above the largest per-op buffer (a 2560->1280 3x3 conv weight reorder: 118 MB)
_HEAP_TRIM_THRESHOLD = 512 * 2**20  # at most this much freed memory is kept at the top of the heap
_DECODE_MMAP_THRESHOLD = 2**20  # during a VAE decode: blocks over this size get their own mapping


class CpuAllocator:
    """glibc malloc tuning for CPU inference, owned by the engine that asked for it.

    ``tune()`` lets malloc reuse freed activation buffers instead of returning them to the kernel. By
    default glibc serves every block over 128 KB with its own mmap and unmaps it on free, so the same
    buffers (activations, oneDNN's per-call weight reorders of up to 118 MB) are page-faulted in afresh
    at every layer of every step: about a quarter of a CPU UNet step went to page faults. Raising the
    mmap and trim thresholds keeps freed blocks in the heap (at most ``_HEAP_TRIM_THRESHOLD`` unused at
    its top), as tcmalloc does (A1111 preloads tcmalloc for the same reason). The setting is
    process-wide; it is made when a CPU engine is created, never at import time. Returns ``None`` where
    the C library has no ``mallopt``.
    """

    def __init__(self, libc: ctypes.CDLL):
        self._libc = libc

    @classmethod
    def tune(cls) -> "CpuAllocator | None":
        try:
            libc = ctypes.CDLL(None)
            mallopt, trim = libc.mallopt, libc.malloc_trim
        except (OSError, AttributeError):
            return None
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        mallopt(_M_MMAP_THRESHOLD, _HEAP_MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _HEAP_TRIM_THRESHOLD)
        return cls(libc)

    @contextmanager
    def decode_working_memory(self) -> Iterator[None]:
        """Around a VAE decode: neither keep nor reuse the UNet's retained heap blocks.

        The UNet's freed buffers come in sizes the decoder's full-resolution maps do not fit, so the
        decode used to grow the heap by its whole working set on top of them, and the next UNet run
        again on top of the decoder's leftovers (SD1.5 at 256px: peak RSS 5.22 GB where weights +
        working set are 4.91). So: give the heap's free pages back (``malloc_trim``), serve the
        decode's blocks over ``_DECODE_MMAP_THRESHOLD`` by their own mappings (unmapped when freed),
        and restore the heap settings afterwards. The price is the decode's page faults (about 1 GB of
        first touches at 256px, ~0.1-0.2 s of a 1.5 s decode).
        """
        self._libc.malloc_trim(0)
        self._libc.mallopt(_M_MMAP_THRESHOLD, _DECODE_MMAP_THRESHOLD)
        try:
            yield
        finally:
            self._libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_MMAP_THRESHOLD)
