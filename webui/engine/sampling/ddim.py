"""DDIM (Song, Meng & Ermon 2020, "Denoising Diffusion Implicit Models", eq. 12) over sigmas.

Written for the engine's VE convention: ``denoiser(x, sigma_batch) -> x0`` with
``x = x_vp * sqrt(1 + sigma**2)``.  In that form one DDIM step from sigma to sigma_next is

    eps = (x - x0) / sigma
    x   = x0 + sigma_down * eps + sigma_up * noise,
    sigma_up   = eta * sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    sigma_down = sqrt(sigma_next**2 - sigma_up**2)

which is algebraically the alpha-form update ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s**2) eps
+ s z`` (s = eta * sqrt((1 - a_prev)/(1 - a) * (1 - a/a_prev))) divided by sqrt(a_prev).
With eta = 0 it is Euler's method on the probability-flow ODE; with eta > 0 it is k-diffusion's
"Euler ancestral" with the same eta.

A1111 semantics (``modules/sd_samplers_timesteps.py`` ``CompVisSampler.get_timesteps`` and
``modules/sd_samplers_timesteps_impl.py`` ``ddim``; option ``eta_ddim``, default 0):

* timesteps ``ts = clip(range(0, 1000, 1000 // steps) + 1, 0, 999)`` (e.g. 1, 51, ..., 951 for 20
  steps); ``len(ts)`` can exceed ``steps`` when 1000 % steps != 0 (30 steps -> 31 timesteps);
* the loop runs ``len(ts) - 1`` model evaluations, from ``ts[-1]`` down to ``ts[1]``, each stepping
  to the next lower timestep, so the last step targets ``alphas_cumprod[ts[0]] = alphas_cumprod[1]``:
  the result still carries noise of level sigma(1) ~ 0.0413, it is *not* clean.  ``steps=1`` makes
  no evaluation at all and returns the input noise unchanged (as A1111 does);
* A1111's state is the VP latent: it starts from ``x_vp = noise`` and returns ``x_vp`` which goes
  straight to the VAE.

So :func:`ddim_sigmas` returns ``len(ts)`` sigmas ``sigma(ts[-1]) ... sigma(ts[0])`` with *no*
trailing zero, and to reproduce A1111 bit for bit the caller must start from
``x = from_vp(noise, sigmas[0])`` (= noise * sqrt(1 + sigmas[0]**2), not noise * sigmas[0]) and
decode ``to_vp(result, sigmas[-1])`` (= result / sqrt(1 + sigmas[-1]**2)).  The same holds for UniPC.

diffusers' ``DDIMScheduler`` (SD1 config: steps_offset 1, set_alpha_to_one False, 'leading')
uses the same timesteps when 1000 % steps == 0 but runs one more step, from ts[0] = 1 to
alphas_cumprod[0]: A1111's result equals diffusers' sample after its first ``steps - 1`` steps.
"""

from __future__ import annotations

import math

import torch

from .schedules import DiscreteSchedule


def a1111_timesteps(steps: int, num_train_steps: int = 1000) -> list[int]:
    """A1111's ``CompVisSampler.get_timesteps``: ``clip(range(0, N, N // steps) + 1, 0, N - 1)``.

    Ascending.  ``steps > N`` would crash A1111 (zero range step); here the stride is kept >= 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    stride = max(num_train_steps // steps, 1)
    return [min(t + 1, num_train_steps - 1) for t in range(0, num_train_steps, stride)]


def discrete_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The model's sigma table sigma_t = sqrt((1 - acp_t) / acp_t) (float32, CPU), taken from
    :class:`~.schedules.DiscreteSchedule` so that each entry maps back to exactly its integer t."""
    return DiscreteSchedule(alphas_cumprod).sigmas


def ddim_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """Sigmas of A1111's DDIM for ``steps``: sigma(t) for t in reversed(a1111_timesteps(steps)).

    Descending, float32, ``len(a1111_timesteps(steps))`` values (``steps`` when 1000 % steps == 0),
    ending at sigma(1) > 0, not 0.  Values are entries of :func:`discrete_sigmas`, so the
    denoiser's log-sigma interpolation gives back the integer timesteps exactly.
    """
    table = discrete_sigmas(alphas_cumprod)
    ts = a1111_timesteps(steps, len(table))
    return table[torch.tensor(ts[::-1])].clone()


def from_vp(x_vp: torch.Tensor, sigma) -> torch.Tensor:
    """VP latent (what A1111's DDIM/UniPC/PLMS carry) -> the engine's VE latent at ``sigma``."""
    return x_vp * math.sqrt(1.0 + float(sigma) ** 2)


def to_vp(x: torch.Tensor, sigma) -> torch.Tensor:
    """The engine's VE latent at ``sigma`` -> VP latent (what A1111 returns and decodes)."""
    return x / math.sqrt(1.0 + float(sigma) ** 2)


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, callback=None, noise_sampler=None, eta=0.0):
    """DDIM (Song et al. 2020) over ``sigmas`` (``len(sigmas) - 1`` model evaluations).

    ``eta`` is A1111's "Eta DDIM" (0 = deterministic).  Noise, when eta > 0, comes from
    ``noise_sampler(sigma, sigma_next)`` (default ``torch.randn_like``), one draw per step, as A1111
    draws ``randn_like`` per step.  A final sigma of 0 is allowed (last step returns x0).
    Unlike A1111, eta > 1 is clamped (sigma_up <= sigma_next) instead of producing NaN.
    """
    if noise_sampler is None:
        noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigmas[i] * s_in)
        eps = (x - denoised) / sigma
        sigma_up = 0.0
        if eta > 0 and sigma_next > 0:
            sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = denoised + eps * sigma_down
        if sigma_up > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    return x


_ADAMS_BASHFORTH = {1: (3.0, -1.0), 2: (23.0, -16.0, 5.0), 3: (55.0, -59.0, 37.0, -9.0)}
_ADAMS_DIVISOR = {1: 2.0, 2: 12.0, 3: 24.0}


@torch.no_grad()
def sample_plms(denoiser, x, sigmas, *, callback=None, noise_sampler=None):
    """PLMS: Liu et al. (2022), "Pseudo Numerical Methods for Diffusion Models on Manifolds" -- DDIM's
    transfer step driven by a linear-multistep estimate of eps: a pseudo improved-Euler step first (two
    model calls), then Adams-Bashforth of order 2, 3, 4 over the previous eps (A1111's ``plms`` in
    ``sd_samplers_timesteps_impl.py``, the CompVis loop), over the same timesteps as DDIM.

    In the engine's form one transfer step with an eps estimate ``e`` from sigma to sigma_next is
    ``x + e * (sigma_next - sigma)`` (``x0(e) + sigma_next * e``), the alpha-form step divided by sqrt(a_prev).
    """
    s_in = x.new_ones([x.shape[0]])
    old = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        eps = (x - denoised) / sigma
        if sigma_next == 0:                  # a schedule that ends at 0 (not A1111's own): the clean estimate
            x = denoised
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
            break
        if not old:
            x_2 = denoised + eps * sigma_next
            eps_2 = (x_2 - denoiser(x_2, sigma_next * s_in)) / sigma_next
            eps_prime = (eps + eps_2) / 2
        else:
            order = min(len(old), 3)
            coeffs = _ADAMS_BASHFORTH[order]
            eps_prime = coeffs[0] * eps
            for c, previous in zip(coeffs[1:], reversed(old)):
                eps_prime = eps_prime + c * previous
            eps_prime = eps_prime / _ADAMS_DIVISOR[order]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x - eps_prime * sigma})
        x = x + eps_prime * (sigma_next - sigma)
        old = (old + [eps])[-3:]
    return x
