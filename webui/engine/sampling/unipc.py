"""UniPC (Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for
Fast Sampling of Diffusion Models"): multistep UniP predictor + UniC corrector with data (x0)
prediction, written over sigmas for the engine's ``denoiser(x, sigma) -> x0``.

With data prediction, alpha_t cancels out of every VP-form update once the state is written as
``x = x_vp / alpha_t`` (the VE latent), and the half-logSNR is ``lambda = -log(sigma)``.  One step
from sigma_s to sigma_t of order p, with h = lambda_t - lambda_s, hh = -h, history of x0
predictions m_0 (at sigma_s), m_1 .. m_{p-1} (earlier) is

    r_k  = (lambda_{s_k} - lambda_s) / h,   D_k = (m_k - m_0) / r_k
    base = (sigma_t / sigma_s) x - expm1(hh) m_0
    UniP: x_t = base - B(h) sum_k rho^p_k D_k
    UniC: x_t = base - B(h) (sum_k rho^c_k D_k + rho^c_p (denoiser(x_t^UniP, sigma_t) - m_0))

B(h) = hh ('bh1') or expm1(hh) ('bh2'); rho solve R rho = b with R_ik = r_k^(i-1) and
b_i = i! phi_{i+1}(hh) / B(h), phi_1 = expm1(hh), phi_{k+1} = phi_k / hh - 1/k!  (rho^p = 0.5
for p = 2, rho^c = 0.5 for p = 1).  'vary_coeff' is the paper's varying-coefficient UniC-v.

A1111 semantics (``modules/sd_samplers_timesteps_impl.py`` ``unipc`` / ``UniPCCFG``,
``modules/models/diffusion/uni_pc/uni_pc.py`` ``UniPC.sample(method='multistep')``, options in
``modules/shared_options.py``: uni_pc_variant 'bh1', uni_pc_skip_type 'time_uniform',
uni_pc_order 3, uni_pc_lower_order_final True):

* number of steps n = len(A1111 DDIM timesteps) (= steps when 1000 % steps == 0, 31 for 30 steps);
* ``NoiseScheduleVP('discrete')``: continuous t in [1/N, 1], log(alpha) piecewise linear with knots
  t = (k+1)/N; 'time_uniform' = linspace(1, 1/N, n+1); the model gets ``t_input = (t - 1/N) * 1000``,
  i.e. 999 * (1 - i/n) for SD: fractional in general, 999 first and exactly 0 last;
* n model evaluations (start + a corrector evaluation after every step but the last); the
  stored x0 of a step is the one evaluated at the *uncorrected* point; step i (1-based) has order
  ``min(i, order)`` while warming up, then ``min(order, n + 1 - i)`` with lower_order_final;
* state is the VP latent: starts from ``x_vp = noise`` at t_input 999, returns x_vp at t_input 0
  (sigma(0) ~ 0.0292, no final denoise).  Use ``ddim.from_vp`` / ``ddim.to_vp`` at both ends.
* A1111 asserts steps >= order; here the order is capped at the number of steps instead.

Conversion caveat: at a fractional t_input A1111's marginal sigma comes from log(alpha) linear in t,
while the engine's denoiser maps sigma -> t by interpolating log(sigma).  :func:`unipc_sigmas`
returns the log-sigma-interpolated sigma at A1111's t_input, so the model sees exactly A1111's
timestep; the solver coefficients then differ from A1111's by the difference of the two
interpolations (relative ~2e-5 in sigma at t ~ 50, 5e-4 at t ~ 10, exact at integer t).
"""

from __future__ import annotations

import math

import torch

from .ddim import a1111_timesteps, discrete_sigmas

VARIANTS = ("bh1", "bh2", "vary_coeff")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


def unipc_timesteps(alphas_cumprod: torch.Tensor, steps: int, skip_type: str = "time_uniform") -> torch.Tensor:
    """A1111's model-input times (float64, descending, n + 1 values from N-1 to 0) for ``steps``."""
    n_train = len(alphas_cumprod)
    n = len(a1111_timesteps(steps, n_train))
    t_T, t_0 = 1.0, 1.0 / n_train
    if skip_type == "time_uniform":
        t = torch.linspace(t_T, t_0, n + 1, dtype=torch.float64)
    elif skip_type == "time_quadratic":
        t = torch.linspace(t_T**0.5, t_0**0.5, n + 1, dtype=torch.float64) ** 2
    elif skip_type == "logSNR":
        # uniform in lambda = log(alpha) - log(sigma_vp); t from log(alpha) linear in t (NoiseScheduleVP)
        log_alpha = 0.5 * torch.log(alphas_cumprod.detach().to("cpu", torch.float64))
        lam = log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))
        lams = torch.linspace(float(lam[-1]), float(lam[0]), n + 1, dtype=torch.float64)
        la = -0.5 * torch.logaddexp(torch.zeros_like(lams), -2 * lams)
        idx = torch.arange(n_train, dtype=torch.float64)
        t = (_interp(la, log_alpha.flip(0), idx.flip(0)) + 1) / n_train
    else:
        raise ValueError(f"unknown UniPC skip type {skip_type!r}, expected one of {SKIP_TYPES}")
    return (t - t_0) * n_train


def unipc_sigmas(alphas_cumprod: torch.Tensor, steps: int, skip_type: str = "time_uniform") -> torch.Tensor:
    """Sigmas (float32, n + 1 values, ending at sigma(0) > 0, no zero) of A1111's UniPC schedule:
    ``exp`` of log-sigma interpolated at each :func:`unipc_timesteps` time, the inverse of the
    denoiser's sigma -> t."""
    log_table = discrete_sigmas(alphas_cumprod).double().log()
    t = unipc_timesteps(alphas_cumprod, steps, skip_type)
    return torch.exp(_interp(t, torch.arange(len(log_table), dtype=torch.float64), log_table)).float()


def _interp(x, xp, fp):
    """Piecewise-linear interpolation (xp ascending), linear extrapolation beyond the ends."""
    i = torch.searchsorted(xp, x, right=True).clamp(1, len(xp) - 1) - 1
    w = (x - xp[i]) / (xp[i + 1] - xp[i])
    return fp[i] + w * (fp[i + 1] - fp[i])


def _phis(hh: float, n: int) -> list[float]:
    """[phi_1 .. phi_n] with phi_1 = expm1(hh), phi_{k+1} = phi_k / hh - 1/k!."""
    out = [math.expm1(hh)]
    for k in range(1, n):
        out.append(out[-1] / hh - 1.0 / math.factorial(k))
    return out


def _bh_rhos(hh: float, rks: list[float], variant: str):
    """(B(h), rho predictor, rho corrector) of UniPC-bh for order len(rks)."""
    p = len(rks)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    phi = _phis(hh, p + 1)
    b = torch.tensor([phi[i] * math.factorial(i) / b_h for i in range(1, p + 1)], dtype=torch.float64)
    r = torch.tensor(rks, dtype=torch.float64)
    R = torch.stack([r**i for i in range(p)])
    rho_p = [] if p == 1 else [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
    rho_c = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
    return b_h, rho_p, rho_c


def _vary_coeffs(hh: float, rks: list[float]):
    """(phi list, predictor rows, corrector rows) of UniPC-v (varying coefficients) for order len(rks)."""
    K = len(rks)
    C = torch.tensor([[r**k / math.factorial(k + 1) for k in range(K)] for r in rks], dtype=torch.float64)
    A_p = torch.linalg.inv(C[:-1, :-1]).tolist() if K > 1 else []
    A_c = torch.linalg.inv(C).tolist()
    return _phis(hh, K + 1), A_p, A_c


def _combine(coeffs, tensors):
    out = 0
    for c, t in zip(coeffs, tensors):
        out = out + c * t
    return out


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, callback=None, noise_sampler=None, order=3, variant="bh1",
                 lower_order_final=True):
    """Multistep UniPC (Zhao et al. 2023) with data prediction over ``sigmas``; A1111's defaults.

    ``len(sigmas) - 1`` steps and as many model evaluations; no corrector after the last step.
    Deterministic (``noise_sampler`` is accepted for the common signature and unused).  A final
    sigma of 0 is allowed: that step returns the latest x0 prediction (the order-1 limit).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}, expected one of {VARIANTS}")
    n = len(sigmas) - 1
    if n < 1:
        return x
    order = max(1, min(int(order), n))
    s_in = x.new_ones([x.shape[0]])
    sig = [float(s) for s in sigmas]
    models = [denoiser(x, sigmas[0] * s_in)]
    lams = [-math.log(sig[0])]
    for i in range(n):
        step = i + 1
        if step < order:
            p = step
        else:
            p = min(order, n + 1 - step) if lower_order_final else order
        m0 = models[-1]
        if sig[i + 1] == 0:
            x = m0
        else:
            lam_t = -math.log(sig[i + 1])
            h = lam_t - lams[-1]
            hh = -h
            rks = [(lams[-1 - k] - lams[-1]) / h for k in range(1, p)] + [1.0]
            D1s = [(models[-1 - k] - m0) / rks[k - 1] for k in range(1, p)]
            base = (sig[i + 1] / sig[i]) * x - math.expm1(hh) * m0
            last = step == n
            if variant == "vary_coeff":
                phi, A_p, A_c = _vary_coeffs(hh, rks)
                x_t = base
                for k in range(p - 1):
                    x_t = x_t - phi[k + 1] * _combine(A_p[k], D1s)
                if not last:
                    m_t = denoiser(x_t, sigmas[i + 1] * s_in)
                    x_t = base
                    for k in range(p - 1):
                        x_t = x_t - phi[k + 1] * _combine(A_c[k][:-1], D1s)
                    # A1111/UniPC reference code weights the new difference with the row left over
                    # from the loop above (row max(p-2, 0)); kept for parity.
                    x_t = x_t - phi[p] * A_c[max(p - 2, 0)][-1] * (m_t - m0)
            else:
                b_h, rho_p, rho_c = _bh_rhos(hh, rks, variant)
                x_t = base - b_h * _combine(rho_p, D1s) if D1s else base
                if not last:
                    m_t = denoiser(x_t, sigmas[i + 1] * s_in)
                    x_t = base - b_h * (_combine(rho_c[:-1], D1s) + rho_c[-1] * (m_t - m0))
            x = x_t
            if not last:
                models = (models + [m_t])[-order:]
                lams = (lams + [lam_t])[-order:]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": m0})
    return x
