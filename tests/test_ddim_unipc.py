"""DDIM and UniPC (webui/engine/sampling/ddim.py, unipc.py) against independent references.

The model is a fixed small random conv net ``eps(x_vp, t)`` with a UNet-like sinusoidal timestep
embedding.  The samplers see it through the engine's own VE denoiser (``ModelDenoiser`` +
``DiscreteSchedule``: c_in = 1/sqrt(sigma^2+1), t = t(sigma), x0 = x - eps*sigma); the references
drive it directly in VP form with integer or fractional timesteps, as A1111 and diffusers do.

* DDIM: diffusers ``DDIMScheduler`` (SD1 config) where A1111's timesteps coincide with diffusers'
  (1000 % steps == 0; A1111 stops one step earlier, at alphas_cumprod[1]), and an alpha-form loop
  re-derived from DDIM eq. 12 with A1111's timestep choice otherwise.
* UniPC: diffusers ``UniPCMultistepScheduler`` (integer 'linspace' timesteps, final sigma(0)) for the
  solver itself; a VP-form loop on A1111's continuous-time schedule (log alpha linear in t,
  t_input = (t - 1/N) * 1000, fractional) for A1111's schedule and for the 'vary_coeff' variant.
"""
from __future__ import annotations

import math

import pytest
import torch

from webui.engine.denoiser import ModelDenoiser
from webui.engine.sampling import ddim, unipc
from webui.engine.sampling.schedules import DiscreteSchedule, sd_alphas_cumprod

RTOL = 1e-4
SHAPE = (2, 4, 8, 8)


class ToyEps(torch.nn.Module):
    """eps(x_vp, t): conv - tanh - conv, modulated by a sinusoidal embedding of t (freqs up to 1/step)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 4, 3, padding=1)
        self.lin = torch.nn.Linear(32, 32)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.seen_t: list[float] = []

    def forward(self, x, t, context=None):
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        self.seen_t.append(float(t[0]))
        freqs = torch.exp(-math.log(10000) * torch.arange(16, dtype=torch.float32) / 16)
        emb = self.lin(torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1))
        h = torch.tanh(self.c1(x) * (1 + 0.3 * emb[:, :16, None, None]) + emb[:, 16:, None, None])
        return self.c2(h) * 0.5 + 0.5 * x


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ToyEps().eval()


def ve_denoiser(model, acp):
    md = ModelDenoiser(model, DiscreteSchedule(acp))
    context = torch.zeros(1)
    return lambda x, sigma: md(x, sigma, context)


def noise_like(seed=1):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def diffusers_acp():
    from diffusers import DDIMScheduler
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod


# ----------------------------------------------------------------------------------------------- DDIM

def test_a1111_timesteps():
    assert ddim.a1111_timesteps(20) == list(range(1, 1000, 50))
    assert ddim.a1111_timesteps(4) == [1, 251, 501, 751]
    assert ddim.a1111_timesteps(3) == [1, 334, 667, 999]  # 999 + 1 clipped
    assert len(ddim.a1111_timesteps(30)) == 31
    assert ddim.a1111_timesteps(1) == [1]
    with pytest.raises(ValueError):
        ddim.a1111_timesteps(0)


@pytest.mark.parametrize("steps", [1, 3, 20, 30])
def test_ddim_sigmas_map_back_to_integer_timesteps(steps):
    acp = sd_alphas_cumprod()
    sched = DiscreteSchedule(acp)
    sigmas = ddim.ddim_sigmas(acp, steps)
    ts = torch.tensor(ddim.a1111_timesteps(steps)[::-1], dtype=torch.float32)
    assert sigmas.dtype == torch.float32 and len(sigmas) == len(ts)
    assert torch.equal(sigmas, sched.sigmas[ts.long()])
    assert torch.equal(sched.sigma_to_t(sigmas), ts)
    assert float(sigmas[-1]) == pytest.approx(0.0413, abs=1e-4)  # sigma(1): A1111 stops short of clean


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("steps", [4, 10, 20])
def test_ddim_matches_diffusers(model, steps, eta):
    from diffusers import DDIMScheduler
    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                        set_alpha_to_one=False, clip_sample=False, timestep_spacing="leading")
    sch.set_timesteps(steps)
    acp = sch.alphas_cumprod
    x_vp = noise_like()
    gen = torch.Generator().manual_seed(2)
    zs = [torch.randn(SHAPE, generator=gen) for _ in range(steps)]
    model.seen_t.clear()
    with torch.no_grad():
        for k, t in enumerate(sch.timesteps[:-1]):  # A1111: one step fewer, ends at alphas_cumprod[1]
            x_vp = sch.step(model(x_vp, t), t, x_vp, eta=eta, variance_noise=zs[k]).prev_sample
    ref_t = list(model.seen_t)

    sigmas = ddim.ddim_sigmas(acp, steps)
    it = iter(zs)
    model.seen_t.clear()
    out = ddim.sample_ddim(ve_denoiser(model, acp), ddim.from_vp(noise_like(), sigmas[0]), sigmas,
                           eta=eta, noise_sampler=lambda s, sn: next(it))
    assert model.seen_t == ref_t
    assert rel_err(ddim.to_vp(out, sigmas[-1]), x_vp) < RTOL


def a1111_ddim_vp(model, acp, x, steps, eta, zs):
    """DDIM eq. 12 in alpha form over A1111's timesteps: x_{t'} = sqrt(a') x0 + sqrt(1 - a' - s^2) eps + s z."""
    ts = [min(k + 1, 999) for k in range(0, 1000, 1000 // steps)]
    for t, t_prev, z in zip(ts[::-1], ts[::-1][1:], zs):
        a, a_prev = float(acp[t]), float(acp[t_prev])
        eps = model(x, torch.tensor([float(t)]))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        s = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - s * s) * eps + s * z
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 30])
def test_ddim_matches_a1111_loop(model, steps, eta):
    acp = sd_alphas_cumprod()
    gen = torch.Generator().manual_seed(3)
    zs = [torch.randn(SHAPE, generator=gen) for _ in range(40)]
    with torch.no_grad():
        ref = a1111_ddim_vp(model, acp, noise_like(), steps, eta, zs)
    sigmas = ddim.ddim_sigmas(acp, steps)
    it = iter(zs)
    calls = []
    out = ddim.sample_ddim(ve_denoiser(model, acp), ddim.from_vp(noise_like(), sigmas[0]), sigmas, eta=eta,
                           noise_sampler=lambda s, sn: next(it), callback=calls.append)
    assert len(calls) == len(sigmas) - 1 == len(ddim.a1111_timesteps(steps)) - 1
    assert rel_err(ddim.to_vp(out, sigmas[-1]), ref) < RTOL


def test_ddim_to_zero_returns_denoised(model):
    acp = sd_alphas_cumprod()
    den = ve_denoiser(model, acp)
    sigmas = torch.tensor([2.0, 0.0])
    x = noise_like() * 2
    assert torch.allclose(ddim.sample_ddim(den, x, sigmas, eta=1.0), den(x, sigmas[:1].expand(2)))


# ---------------------------------------------------------------------------------------------- UniPC

def test_unipc_timesteps_and_sigmas():
    acp = sd_alphas_cumprod()
    sched = DiscreteSchedule(acp)
    t = unipc.unipc_timesteps(acp, 20)
    assert torch.allclose(t, 999 * (1 - torch.arange(21, dtype=torch.float64) / 20))
    assert len(unipc.unipc_timesteps(acp, 30)) == 32  # 31 steps, as A1111's len(get_timesteps(30))
    for skip in unipc.SKIP_TYPES:
        s = unipc.unipc_sigmas(acp, 10, skip)
        assert s.dtype == torch.float32 and len(s) == 11 and bool((s[1:] < s[:-1]).all())
        assert float(s[0]) == pytest.approx(sched.sigma_max, rel=1e-6)
        assert float(s[-1]) == pytest.approx(sched.sigma_min, rel=1e-6)
        assert torch.allclose(sched.sigma_to_t(s).double(), unipc.unipc_timesteps(acp, 10, skip), atol=1e-3)
    with pytest.raises(ValueError):
        unipc.unipc_sigmas(acp, 10, "bogus")


@pytest.mark.parametrize("variant,order,lof", [
    ("bh1", 3, True), ("bh2", 3, True), ("bh1", 2, True), ("bh2", 3, False), ("bh1", 1, True)])
@pytest.mark.parametrize("steps", [3, 4, 10, 20])
def test_unipc_solver_matches_diffusers(model, steps, variant, order, lof):
    from diffusers import UniPCMultistepScheduler
    sch = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  solver_order=order, solver_type=variant, lower_order_final=lof,
                                  predict_x0=True, timestep_spacing="linspace", final_sigmas_type="sigma_min")
    sch.set_timesteps(steps)
    x_vp = noise_like()
    model.seen_t.clear()
    with torch.no_grad():
        for t in sch.timesteps:
            x_vp = sch.step(model(x_vp, t), t, x_vp).prev_sample
    ref_t = list(model.seen_t)

    sigmas = sch.sigmas.clone()  # integer timesteps, then sigma(0) (= A1111's end point)
    model.seen_t.clear()
    out = unipc.sample_unipc(ve_denoiser(model, sch.alphas_cumprod), ddim.from_vp(noise_like(), sigmas[0]),
                             sigmas, order=order, variant=variant, lower_order_final=lof)
    assert model.seen_t == ref_t
    assert rel_err(ddim.to_vp(out, sigmas[-1]), x_vp) < RTOL


def a1111_unipc_vp(model, acp, x, n, order, variant, lof):
    """Multistep UniPC with data prediction in VP form on A1111's NoiseScheduleVP('discrete').

    log alpha is linear in continuous t between knots t = (k+1)/N; time_uniform t from 1 to 1/N;
    the model gets t_input = (t - 1/N) * 1000.
    """
    N = len(acp)
    knots = 0.5 * torch.log(acp.double())

    def marginal(tc):  # (alpha, sigma, lambda)
        u = tc * N - 1
        k = min(max(math.floor(u), 0), N - 2)
        la = float(knots[k] + (u - k) * (knots[k + 1] - knots[k]))
        a, s = math.exp(la), math.sqrt(-math.expm1(2 * la))
        return a, s, math.log(a / s)

    def data(x, tc):
        a, s, _ = marginal(tc)
        return (x - s * model(x, torch.tensor([(tc - 1 / N) * 1000]))) / a

    def weighted(coeffs, tensors):
        return sum((c * d for c, d in zip(coeffs, tensors)), torch.zeros_like(x))

    ts = [1 - i * (1 - 1 / N) / n for i in range(n + 1)]
    hist = [(ts[0], data(x, ts[0]))]
    for i in range(1, n + 1):
        p = min(i, order) if i < order else (min(order, n + 1 - i) if lof else order)
        a_t, s_t, l_t = marginal(ts[i])
        _, s_0, l_0 = marginal(hist[-1][0])
        m0, h = hist[-1][1], l_t - l_0
        r = [(marginal(hist[-1 - j][0])[2] - l_0) / h for j in range(1, p)] + [1.0]
        D = [(hist[-1 - j][1] - m0) / r[j - 1] for j in range(1, p)]
        hh = -h
        phi = [math.expm1(hh)]  # phi_{k+1} = phi_k / hh - 1/k!
        for k in range(1, p + 1):
            phi.append(phi[-1] / hh - 1 / math.factorial(k))
        base = (s_t / s_0) * x - a_t * phi[0] * m0
        last = i == n
        if variant == "vary_coeff":
            C = torch.tensor([[rj ** k / math.factorial(k + 1) for k in range(p)] for rj in r], dtype=torch.float64)
            Ap = torch.linalg.inv(C[:-1, :-1]) if p > 1 else None
            x_new = base - a_t * weighted([phi[k + 1] for k in range(p - 1)],
                                          [weighted(Ap[k].tolist(), D) for k in range(p - 1)])
            if not last:
                mt = data(x_new, ts[i])
                Ac = torch.linalg.inv(C)
                x_new = base - a_t * weighted([phi[k + 1] for k in range(p - 1)],
                                              [weighted(Ac[k, :-1].tolist(), D) for k in range(p - 1)])
                x_new = x_new - a_t * phi[p] * float(Ac[max(p - 2, 0), -1]) * (mt - m0)
        else:
            B = hh if variant == "bh1" else math.expm1(hh)
            R = torch.tensor([[rj ** k for rj in r] for k in range(p)], dtype=torch.float64)
            b = torch.tensor([phi[k] * math.factorial(k) / B for k in range(1, p + 1)], dtype=torch.float64)
            rp = [] if p == 1 else [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            x_new = base - a_t * B * weighted(rp, D)
            if not last:
                mt = data(x_new, ts[i])
                rc = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
                x_new = base - a_t * B * (weighted(rc[:-1], D) + rc[-1] * (mt - m0))
        x = x_new
        if not last:
            hist = (hist + [(ts[i], mt)])[-order:]
    return x


@pytest.mark.parametrize("variant", ["bh1", "bh2", "vary_coeff"])
@pytest.mark.parametrize("steps", [3, 4, 10, 20, 30])
def test_unipc_matches_a1111_schedule(model, steps, variant):
    acp = sd_alphas_cumprod()
    n = len(ddim.a1111_timesteps(steps))
    with torch.no_grad():
        model.seen_t.clear()
        ref = a1111_unipc_vp(model, acp, noise_like(), n, 3, variant, True)
        ref_t = list(model.seen_t)
    sigmas = unipc.unipc_sigmas(acp, steps)
    assert len(sigmas) == n + 1
    model.seen_t.clear()
    calls = []
    out = unipc.sample_unipc(ve_denoiser(model, acp), ddim.from_vp(noise_like(), sigmas[0]), sigmas,
                             variant=variant, callback=calls.append)
    assert len(model.seen_t) == len(ref_t) == n and len(calls) == n
    assert max(abs(a - b) for a, b in zip(model.seen_t, ref_t)) < 1e-3  # same model timesteps
    assert rel_err(ddim.to_vp(out, sigmas[-1]), ref) < RTOL


@pytest.mark.parametrize("steps", [1, 2])
def test_unipc_fewer_steps_than_order(model, steps):
    acp = sd_alphas_cumprod()
    with torch.no_grad():
        ref = a1111_unipc_vp(model, acp, noise_like(), steps, steps, "bh1", True)
    sigmas = unipc.unipc_sigmas(acp, steps)
    out = unipc.sample_unipc(ve_denoiser(model, acp), ddim.from_vp(noise_like(), sigmas[0]), sigmas, order=3)
    assert rel_err(ddim.to_vp(out, sigmas[-1]), ref) < RTOL


def test_unipc_to_zero(model):
    acp = sd_alphas_cumprod()
    den = ve_denoiser(model, acp)
    sigmas = torch.cat([unipc.unipc_sigmas(acp, 5)[:-1], torch.zeros(1)])
    calls = []
    out = unipc.sample_unipc(den, noise_like() * float(sigmas[0]), sigmas, callback=calls.append)
    assert torch.isfinite(out).all() and len(calls) == 5
    assert torch.equal(out, calls[-1]["denoised"])
    with pytest.raises(ValueError):
        unipc.sample_unipc(den, noise_like(), sigmas, variant="bh3")


# ----------------------------------------------------------------------------------------------- PLMS

def a1111_plms_vp(model, acp, x, steps):
    """A1111's ``plms`` (sd_samplers_timesteps_impl.py) in alpha form over its timesteps, float64 scalars."""
    ts = [min(k + 1, 999) for k in range(0, 1000, 1000 // steps)]
    alphas = [float(acp[t]) for t in ts]
    alphas_prev = [float(acp[0])] + alphas[:-1]
    old = []

    def step(e, index):
        a_t, a_prev = alphas[index], alphas_prev[index]
        pred_x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        return math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev) * e

    for i in range(len(ts) - 1):
        index = len(ts) - 1 - i
        e_t = model(x, torch.tensor([float(ts[index])]))
        if not old:
            x_prev = step(e_t, index)
            e_next = model(x_prev, torch.tensor([float(ts[max(index - 1, 0)])]))
            e_prime = (e_t + e_next) / 2
        elif len(old) == 1:
            e_prime = (3 * e_t - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e_t - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = step(e_prime, index)
        old = (old + [e_t])[-3:]
    return x


@pytest.mark.parametrize("steps", [2, 3, 5, 20])
def test_plms_matches_a1111_loop(model, steps):
    from webui.engine.sampling.ddim import sample_plms
    acp = sd_alphas_cumprod()
    with torch.no_grad():
        ref = a1111_plms_vp(model, acp, noise_like(), steps)
    sigmas = ddim.ddim_sigmas(acp, steps)
    model.seen_t.clear()
    out = sample_plms(ve_denoiser(model, acp), ddim.from_vp(noise_like(), sigmas[0]), sigmas)
    assert len(model.seen_t) == len(sigmas)      # the first step's extra call
    assert rel_err(ddim.to_vp(out, sigmas[-1]), ref) < RTOL
