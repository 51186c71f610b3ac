"""Noise samplers: ``noise_sampler(sigma, sigma_next) -> tensor shaped like x`` (unit variance).

* ``default_noise_sampler(x)`` -- fresh ``torch.randn_like(x)`` per call (k-diffusion's default; global RNG).
  A1111 instead draws ancestral noise from its per-image CPU generators (``seeds.ImageRNG``).
* ``BrownianTreeNoiseSampler`` -- k-diffusion's sampler backed by ``torchsde.BrownianTree``, one tree per
  image seed, as A1111 builds it for DPM++ SDE / 2M SDE / 3M SDE (``seed=current_iter_seeds``), which makes
  each image independent of the batch it is in. The returned noise is the Brownian increment between the
  two noise levels divided by ``sqrt(|sigma_next - sigma|)``.

torchsde's ``BrownianTree`` only needs torch, numpy and ``trampoline`` at run time (no scipy import), but
the torchsde wheel *declares* scipy as a dependency, so ``pip install torchsde`` pulls scipy in.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["NoiseSampler", "default_noise_sampler", "BrownianTreeNoiseSampler"]


def default_noise_sampler(x: torch.Tensor) -> NoiseSampler:
    """Independent standard normal noise like ``x`` at every call (``torch.randn_like``)."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def _ordered(a, b):
    return (a, b, 1) if a < b else (b, a, -1)


class BrownianTreeNoiseSampler:
    """Brownian-tree noise, equal to k-diffusion's ``BrownianTreeNoiseSampler`` (identity transform).

    Args:
        x: a tensor whose shape, device and dtype the noise takes.
        sigma_min, sigma_max: the interval the tree covers (A1111: the smallest positive and the largest
            sigma of the full schedule).
        seeds: one seed per image (``len(seeds) == x.shape[0]``: one tree per image over ``x.shape[1:]``,
            stacked), or a single int (one tree over the whole of ``x``), or ``None``: one random seed drawn
            from torch's global generator (k-diffusion's default).
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seeds: Sequence[int] | int | None = None):
        import torchsde  # runtime dependency; imported here so that importing the sampling package stays light

        t0, t1, self._sign = _ordered(torch.as_tensor(sigma_min), torch.as_tensor(sigma_max))
        w0 = torch.zeros_like(x)
        if seeds is None:
            seeds = torch.randint(0, 2 ** 63 - 1, []).item()
        if isinstance(seeds, int):
            self.batched = False
            seeds = [seeds]
        else:
            seeds = [int(s) for s in seeds]
            if len(seeds) != x.shape[0]:
                raise ValueError(f"BrownianTreeNoiseSampler: {len(seeds)} seeds for a batch of {x.shape[0]}")
            self.batched = True
            w0 = w0[0]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    @classmethod
    def from_sigmas(cls, x: torch.Tensor, sigmas: torch.Tensor, seeds=None) -> "BrownianTreeNoiseSampler":
        """As A1111's ``create_noise_sampler``: the interval is [min positive sigma, max sigma]."""
        positive = sigmas[sigmas > 0]
        return cls(x, positive.min(), sigmas.max(), seeds)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = _ordered(t0, t1)
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends to ~6 digits and warns (then clamps, as k-diffusion gets it)
            # when a query at sigma_max / sigma_min lands a rounding error outside them.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self._sign * sign)
        w = w if self.batched else w[0]
        return w / (t1 - t0).abs().sqrt()
