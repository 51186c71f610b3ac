"""The DPM++ samplers (DPM-Solver++, Lu et al. 2022: 2S a, 2M, SDE, 2M SDE, 3M SDE) and LCM, in the form and
with the host-side step arithmetic that ``samplers.py`` describes (its helpers are shared)."""
from __future__ import annotations

import torch

from .noise import default_noise_sampler
from .samplers import _brownian_default, _host_sigmas, _report, _sigma_fn, _t_fn, get_ancestral_step, to_d

__all__ = [
    "sample_dpmpp_2s_ancestral", "sample_dpmpp_2m", "sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde",
    "sample_lcm",
]


# ---------------------------------------------------------------------------------------------- DPM-Solver++

@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM++ 2S a: ancestral sampling with DPM-Solver++(2S) single-step second-order steps
    (Lu et al. 2022, "DPM-Solver++", Algorithm 1 with r = 1/2) down to ``sigma_down``."""
    sigmas = _host_sigmas(sigmas)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_down == 0:
            d = to_d(x, sigma, denoised)
            x = x + d * (sigma_down - sigma)
        else:
            t, t_next = _t_fn(sigma), _t_fn(torch.as_tensor(sigma_down))
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = denoiser(x_2, _sigma_fn(s) * s_in)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, callback=None, noise_sampler=None):
    """DPM++ 2M: DPM-Solver++(2M), Lu et al. (2022), "DPM-Solver++", Algorithm 2 (multistep, 2nd order,
    data prediction); first and last steps are first order."""
    sigmas = _host_sigmas(sigmas)
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        _report(callback, x, i, sigma, sigma, denoised)
        t, t_next = _t_fn(sigma), _t_fn(sigma_next)
        h = t_next - t
        if old_denoised is None or sigma_next == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_sde(denoiser, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0, r=1 / 2):
    """DPM++ SDE: stochastic DPM-Solver++ (Lu et al. 2022) single-step 2nd-order method with ancestral noise
    at the intermediate point ``r`` and the end of each step (k-diffusion's ``sample_dpmpp_sde``).
    Default noise: a Brownian tree over [min positive sigma, max sigma] with a random seed."""
    sigmas = _host_sigmas(sigmas)
    noise_sampler = _brownian_default(x, sigmas, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            d = to_d(x, sigma, denoised)
            x = x + d * (sigma_next - sigma)
        else:
            t, t_next = _t_fn(sigma), _t_fn(sigma_next)
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            # step 1: to the intermediate time s
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
            s_ = _t_fn(torch.as_tensor(sd))
            x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise_sampler(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
            denoised_2 = denoiser(x_2, _sigma_fn(s) * s_in)
            # step 2: to t_next with the combined slope
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
            t_next_ = _t_fn(torch.as_tensor(sd))
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise_sampler(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0,
                        solver_type="midpoint"):
    """DPM++ 2M SDE: DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", the SDE variant of the
    multistep 2nd-order solver), with the 'midpoint' (A1111 "DPM++ 2M SDE") or 'heun'
    ("DPM++ 2M SDE Heun") second-order correction. The last step (to sigma 0) returns the denoised x0."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    sigmas = _host_sigmas(sigmas)
    noise_sampler = _brownian_default(x, sigmas, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            t, s = -sigma.log(), -sigma_next.log()
            h = s - t
            eta_h = eta * h
            x = sigma_next / sigma * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigma, sigma_next) * sigma_next * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM++ 3M SDE: DPM-Solver++(3M) SDE -- the third-order multistep data-prediction solver of Lu et al.
    (2022), "DPM-Solver++", with SDE noise (k-diffusion's ``sample_dpmpp_3m_sde``)."""
    sigmas = _host_sigmas(sigmas)
    noise_sampler = _brownian_default(x, sigmas, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            t, s = -sigma.log(), -sigma_next.log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + noise_sampler(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_lcm(denoiser, x, sigmas, *, callback=None, noise_sampler=None):
    """LCM: Luo et al. (2023), "Latent Consistency Models", multistep sampling (their Algorithm 1): jump to
    the consistency model's clean estimate, then re-noise it to the next sigma with fresh noise (A1111's and
    k-diffusion's ``sample_lcm``). The denoiser must apply LCM's boundary scalings (the engine's LCM mode)."""
    sigmas = _host_sigmas(sigmas)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x
