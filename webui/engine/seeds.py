"""Seeds and initial noise with A1111's "RNG source: CPU" semantics.

Image ``i`` of a job uses seed ``seed + i``. Each image owns a CPU ``torch.Generator`` seeded with its
seed: the first draw, ``(C, H/8, W/8)`` in float32, is the initial noise; later draws (the noise of
ancestral samplers, one per step) continue the same generator. Draws are made on the CPU, so the same
seed gives the same picture on every device, then moved to the target device once.
"""
from __future__ import annotations

import random

import torch

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int | None) -> int:
    """``-1`` / ``None`` means "random": returns the seed actually used."""
    if seed is None or int(seed) < 0:
        return random.SystemRandom().randrange(0, MAX_SEED)
    return int(seed)


def image_seeds(seed: int, count: int) -> list[int]:
    """The seeds of ``count`` consecutive images of a job (``seed, seed+1, ...``)."""
    return [seed + i for i in range(count)]


class ImageRNG:
    """Per-image CPU generators for one batch; ``next()`` returns a stacked ``(B, C, H, W)`` draw."""

    def __init__(self, seeds: list[int], shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

    def next(self) -> torch.Tensor:
        noise = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators])
        return noise.to(device=self.device, dtype=self.dtype)

    def noise_sampler(self, sigma=None, sigma_next=None) -> torch.Tensor:
        """Signature of k-diffusion's noise samplers, for ancestral samplers."""
        return self.next()
