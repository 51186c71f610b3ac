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


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two ``(C, H, W)`` noise tensors, as written there: norms and dot
    products along dim 1, one angle per (channel, column); nearly parallel tensors fall back to
    ``low * val + high * (1 - val)`` (A1111's own order, kept)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


class ImageRNG:
    """Per-image CPU generators for one batch; ``next()`` returns a stacked ``(B, C, H, W)`` draw.

    Variation seeds (A1111's ``ImageRNG.first``): with ``subseeds`` and ``subseed_strength`` the first draw
    is each image's noise slerped towards the noise of its subseed; with ``seed_resize_from`` ``(h, w)`` in
    pixels the noise is drawn at that size and pasted, centred, into the noise of the real size (so the
    composition of a seed found at one size is kept at another). Later draws (ancestral noise) continue
    each image's own generator.
    """

    def __init__(self, seeds: list[int], shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, *, subseeds: list[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None):
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        self.subseeds, self.subseed_strength, self.seed_resize_from = subseeds, subseed_strength, seed_resize_from

    def first(self) -> torch.Tensor:
        """The initial noise, with the variation seed and seed-resize rules applied (A1111's order)."""
        height, width = self.seed_resize_from or (0, 0)
        shape = self.shape
        noise_shape = shape if height <= 0 or width <= 0 else (shape[0], int(height) // 8, int(width) // 8)
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subnoise = _randn(0 if i >= len(self.subseeds) else self.subseeds[i], noise_shape)
            if noise_shape != shape:
                noise = _randn(seed, noise_shape)
            else:
                noise = torch.randn(shape, generator=generator, dtype=torch.float32)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != shape:
                x = torch.randn(shape, generator=generator, dtype=torch.float32)
                dx, dy = (shape[2] - noise_shape[2]) // 2, (shape[1] - noise_shape[1]) // 2
                w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
                h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
                tx, ty = max(dx, 0), max(dy, 0)
                dx, dy = max(-dx, 0), max(-dy, 0)
                x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
                noise = x
            xs.append(noise)
        return torch.stack(xs).to(device=self.device, dtype=self.dtype)

    def next(self) -> torch.Tensor:
        noise = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators])
        return noise.to(device=self.device, dtype=self.dtype)

    def noise_sampler(self, sigma=None, sigma_next=None) -> torch.Tensor:
        """Signature of k-diffusion's noise samplers, for ancestral samplers."""
        return self.next()
