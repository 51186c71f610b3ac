"""k-diffusion-style samplers: pure functions over a ``denoiser(x, sigma_batch) -> x0``.

Every sampler has the signature::

    sample_x(denoiser, x, sigmas, *, callback=None, noise_sampler=None, **options) -> x

``x`` starts at noise level ``sigmas[0]`` (``x = x0 + sigmas[0] * noise``); ``sigmas`` is a decreasing 1-D
tensor normally ending in 0. The denoiser is called with ``sigma * x.new_ones([batch])``. After each step's
first model call, ``callback({'x', 'i', 'sigma', 'sigma_hat', 'denoised'})`` is called as k-diffusion does.
``noise_sampler(sigma, sigma_next)`` supplies the fresh noise of the stochastic samplers (default: a fresh
``torch.randn_like`` for the ancestral ones, a randomly seeded Brownian tree for the SDE ones).

Numerics and host-device syncs: the step arithmetic is k-diffusion's, operation for operation, but the
per-step scalars (sigmas, log-sigmas, step sizes, ancestral sigma_up/down) are computed as 0-d float32
tensors **on the CPU**: ``sigmas`` is copied to the CPU once before the loop (a single transfer when it
lives on the GPU). All branching (``sigma_next == 0``, ``min`` in the ancestral step, ``s_tmin <= sigma``)
is therefore host-only, and multiplying a device tensor by a 0-d CPU tensor is a scalar kernel argument,
so the loops never wait on the device. Because the scalars stay float32 tensors (not python floats), the
results are bit-identical to k-diffusion run with the same sigmas on the CPU; k-diffusion with the sigmas
on the GPU differs only by the GPU's float32 log/exp rounding of those scalars.

LMS computes its integration coefficients by integrating the Lagrange basis polynomials exactly
(numpy.polynomial) instead of k-diffusion's adaptive ``scipy.integrate.quad``.

The DPM++ samplers (2S a, 2M, SDE, 2M SDE, 3M SDE) and LCM are in ``samplers_dpmpp.py``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numpy.polynomial import Polynomial

from .noise import BrownianTreeNoiseSampler, default_noise_sampler

__all__ = [
    "to_d", "get_ancestral_step", "lms_coefficients",
    "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpm_2_ancestral",
    "sample_lms",
]


# ------------------------------------------------------------------------------------------------ helpers

def to_d(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """Denoiser output -> derivative of the probability-flow ODE, dx/dsigma = (x - x0) / sigma."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """Split a step ``sigma_from -> sigma_to`` into a deterministic step down to ``sigma_down`` and fresh
    noise of std ``sigma_up`` with ``sigma_down^2 + sigma_up^2 = sigma_to^2`` (eta scales ``sigma_up``;
    eta = 1 is DDPM's ancestral sampling)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _host_sigmas(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas).detach()
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError("sigmas must be a 1-D tensor with at least 2 entries")
    return sigmas.to("cpu")


def _sigma_fn(t):
    return t.neg().exp()


def _t_fn(sigma):
    return sigma.log().neg()


def _report(callback, x, i, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(x, sigma, n_steps, s_churn, s_tmin, s_tmax, s_noise, noise_sampler):
    """Karras et al. (2022) Algorithm 2, lines 4-6: raise the noise level to ``sigma_hat = sigma (1 + gamma)``.

    Fresh noise is drawn at every step when ``s_churn > 0`` (as k-diffusion, which draws it unconditionally;
    nothing is drawn when churn is off) from ``noise_sampler(sigma, sigma_hat)`` or ``torch.randn_like``.
    """
    gamma = min(s_churn / n_steps, 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if s_churn > 0:
        noise = torch.randn_like(x) if noise_sampler is None else noise_sampler(sigma, sigma_hat)
        if gamma > 0:
            x = x + noise * s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
    return x, sigma_hat


def _brownian_default(x, sigmas, noise_sampler):
    if noise_sampler is not None:
        return noise_sampler
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), None)


# ------------------------------------------------------------------------------------- Karras ODE solvers

@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, callback=None, noise_sampler=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models",
    Algorithm 2 with Euler steps (``s_churn > 0`` adds the stochastic churn between ``s_tmin``/``s_tmax``)."""
    sigmas = _host_sigmas(sigmas)
    n = len(sigmas) - 1
    s_in = x.new_ones([x.shape[0]])
    for i in range(n):
        x, sigma_hat = _churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = denoiser(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, callback=None, noise_sampler=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun: Karras et al. (2022) Algorithm 2 (2nd-order Heun steps; an Euler step into sigma = 0)."""
    sigmas = _host_sigmas(sigmas)
    n = len(sigmas) - 1
    s_in = x.new_ones([x.shape[0]])
    for i in range(n):
        sigma_next = sigmas[i + 1]
        x, sigma_hat = _churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = denoiser(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = denoiser(x_2, sigma_next * s_in)
            d_2 = to_d(x_2, sigma_next, denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(denoiser, x, sigmas, *, callback=None, noise_sampler=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """DPM2: DPM-Solver-2 (Lu et al. 2022, "DPM-Solver") midpoint steps in Karras et al.'s Algorithm 2
    (k-diffusion's ``sample_dpm_2``): evaluate at the log-midpoint sigma, step with that slope."""
    sigmas = _host_sigmas(sigmas)
    n = len(sigmas) - 1
    s_in = x.new_ones([x.shape[0]])
    for i in range(n):
        sigma_next = sigmas[i + 1]
        x, sigma_hat = _churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = denoiser(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigma_next.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            denoised_2 = denoiser(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigma_next - sigma_hat)
    return x


# --------------------------------------------------------------------------------------------- ancestral

@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """Euler a: ancestral sampling with Euler steps (DDPM-style noise re-injection, Ho et al. 2020, in
    k-diffusion's sigma parametrisation): Euler step down to ``sigma_down``, then add ``sigma_up`` noise."""
    sigmas = _host_sigmas(sigmas)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        _report(callback, x, i, sigma, sigma, denoised)
        d = to_d(x, sigma, denoised)
        x = x + d * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(denoiser, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM2 a: ancestral sampling with DPM-Solver-2 (Lu et al. 2022) midpoint steps to ``sigma_down``."""
    sigmas = _host_sigmas(sigmas)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        _report(callback, x, i, sigma, sigma, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = sigma.log().lerp(torch.as_tensor(sigma_down).log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma)
            denoised_2 = denoiser(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigma_down - sigma)
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


# ------------------------------------------------------------------------------------------ linear multistep

def _lms_coefficient(t: list[float], order: int, i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial of node t[i-j] among t[i], ..., t[i-order+1].

    Exact polynomial integration in the shifted variable ``u = tau - t[i]`` (float64).
    """
    nodes = [t[i - k] - t[i] for k in range(order)]
    others = [nodes[k] for k in range(order) if k != j]
    denom = math.prod(nodes[j] - o for o in others)
    antiderivative = (Polynomial.fromroots(others) if others else Polynomial([1.0])).integ()
    return float(antiderivative(t[i + 1] - t[i])) / denom


def lms_coefficients(sigmas, order: int = 4) -> list[list[float]]:
    """Per step ``i``, the ``min(i + 1, order)`` Adams-Bashforth weights of the derivatives
    ``d_i, d_{i-1}, ...`` over non-uniform nodes ``sigmas`` (k-diffusion's ``linear_multistep_coeff``)."""
    t = [float(s) for s in np.asarray(torch.as_tensor(sigmas).detach().cpu(), dtype=np.float64)]
    return [[_lms_coefficient(t, min(i + 1, order), i, j) for j in range(min(i + 1, order))]
            for i in range(len(t) - 1)]


@torch.no_grad()
def sample_lms(denoiser, x, sigmas, *, callback=None, noise_sampler=None, order=4):
    """LMS: linear multistep (Adams-Bashforth of variable step size, order 4) on the Karras ODE, as
    k-diffusion's ``sample_lms`` (after Katherine Crowson; see Karras et al. 2022, and PLMS, Liu et al. 2022)."""
    sigmas = _host_sigmas(sigmas)
    coefficients = lms_coefficients(sigmas, order)
    s_in = x.new_ones([x.shape[0]])
    ds = []
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = denoiser(x, sigma * s_in)
        ds.append(to_d(x, sigma, denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, x, i, sigma, sigma, denoised)
        x = x + sum(c * d for c, d in zip(coefficients[i], reversed(ds)))
    return x
