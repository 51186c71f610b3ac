"""Parity of webui.engine.sampling with k-diffusion (loaded by file path) and A1111's schedule definitions.

The toy denoiser is the exact posterior mean E[x0 | x] for data whose every element is drawn from a fixed
1-D Gaussian mixture: smooth, non-linear and cheap, so every sampler runs in milliseconds.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.references import k_diffusion
from webui.engine.sampling import registry, samplers, samplers_dpmpp, schedules
from webui.engine.sampling.noise import BrownianTreeNoiseSampler

STEPS = 9
SCHEDULE = schedules.DiscreteSchedule(schedules.sd_alphas_cumprod())

# --------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def kdiff():
    """k-diffusion's ``(sampling, external)`` modules. Its sampling.py imports scipy and torchsde (and the
    Brownian-tree tests need torchsde on our side too): only the tests comparing with k-diffusion skip
    without them; the schedule, registry and loop tests always run."""
    pytest.importorskip("scipy")
    pytest.importorskip("torchsde")
    return k_diffusion()


@pytest.fixture(scope="module")
def ks(kdiff):
    """k-diffusion's sampling module."""
    return kdiff[0]


@pytest.fixture(scope="module")
def ke(kdiff):
    """k-diffusion's external module (CompVisDenoiser)."""
    return kdiff[1]


_MU = torch.tensor([-1.0, 0.3, 1.2])
_LOG_W = torch.tensor([0.3, 0.5, 0.2]).log()
_TAU2 = 0.3 ** 2


def gmm_denoiser(x, sigma):
    """Exact x0 predictor for elementwise data ~ sum_k w_k N(mu_k, tau^2), x = x0 + sigma * noise."""
    s2 = (sigma.to(x.dtype) ** 2).view(-1, *([1] * x.ndim))
    var = _TAU2 + s2
    xe = x[..., None]
    logits = _LOG_W - (xe - _MU) ** 2 / (2 * var)
    posterior_mean = (_MU * s2 + xe * _TAU2) / var
    return (logits.softmax(-1) * posterior_mean).sum(-1)


class Counting:
    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma):
        assert sigma.shape == (x.shape[0],)
        self.calls.append(float(sigma[0]))
        return gmm_denoiser(x, sigma)


def seeded_noise(x, seed):
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=g, dtype=x.dtype)


def x_init(sigmas, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 4, 6, 6), generator=g) * sigmas[0]


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


# (our function, k-diffusion's name, extra options, noise kind)
SAMPLER_CASES = {
    "Euler": (samplers.sample_euler, "sample_euler", {}, None),
    "Euler a": (samplers.sample_euler_ancestral, "sample_euler_ancestral", {}, "ancestral"),
    "Heun": (samplers.sample_heun, "sample_heun", {}, None),
    "DPM2": (samplers.sample_dpm_2, "sample_dpm_2", {}, None),
    "DPM2 a": (samplers.sample_dpm_2_ancestral, "sample_dpm_2_ancestral", {}, "ancestral"),
    "LMS": (samplers.sample_lms, "sample_lms", {}, None),
    "DPM++ 2S a": (samplers_dpmpp.sample_dpmpp_2s_ancestral, "sample_dpmpp_2s_ancestral", {}, "ancestral"),
    "DPM++ 2M": (samplers_dpmpp.sample_dpmpp_2m, "sample_dpmpp_2m", {}, None),
    "DPM++ SDE": (samplers_dpmpp.sample_dpmpp_sde, "sample_dpmpp_sde", {}, "brownian"),
    "DPM++ 2M SDE": (samplers_dpmpp.sample_dpmpp_2m_sde, "sample_dpmpp_2m_sde", {}, "brownian"),
    "DPM++ 2M SDE Heun": (samplers_dpmpp.sample_dpmpp_2m_sde, "sample_dpmpp_2m_sde", {"solver_type": "heun"},
                          "brownian"),
    "DPM++ 3M SDE": (samplers_dpmpp.sample_dpmpp_3m_sde, "sample_dpmpp_3m_sde", {}, "brownian"),
}
SCHEDULE_KEYS = ["uniform", "karras", "exponential", "sgm_uniform", "polyexponential", "normal", "simple",
                 "ddim", "kl_optimal", "align_your_steps"]


def run_pair(ks, name, sigmas, x, seeds=(11, 12), **extra):
    """Run ours and k-diffusion's sampler on the same input with the same noise."""
    ours_fn, ref_name, options, noise = SAMPLER_CASES[name]
    options = {**options, **extra}
    ref_fn = getattr(ks, ref_name)
    results = []
    for impl in ("ours", "ref"):
        model, logs = Counting(), []
        if noise == "ancestral":
            ns = seeded_noise(x, 1234)
        elif noise == "brownian":
            positive = sigmas[sigmas > 0]
            cls = BrownianTreeNoiseSampler if impl == "ours" else ks.BrownianTreeNoiseSampler
            ns = cls(x, positive.min(), positive.max(), list(seeds))
        else:
            ns = None
        kwargs = dict(options)
        if ns is not None:
            kwargs["noise_sampler"] = ns
        if impl == "ours":
            out = ours_fn(model, x.clone(), sigmas, callback=logs.append, **kwargs)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # torchsde: query points a rounding error outside [t0, t1]
                out = ref_fn(model, x.clone(), sigmas, callback=logs.append, disable=True, **kwargs)
        results.append((out, model.calls, logs))
    return results


def check_pair(results, tol):
    (out, calls, logs), (ref, ref_calls, ref_logs) = results
    assert torch.isfinite(out).all()
    assert calls == pytest.approx(ref_calls, rel=1e-6)
    assert [d["i"] for d in logs] == [d["i"] for d in ref_logs]
    for mine, theirs in zip(logs, ref_logs):
        assert set(mine) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert float(mine["sigma"]) == float(theirs["sigma"])
        assert float(mine["sigma_hat"]) == float(theirs["sigma_hat"])
    diff = rel_diff(out, ref)
    assert diff <= tol, diff
    return diff


# ------------------------------------------------------------------------------------------- schedules

def test_alphas_cumprod_as_ldm():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.tensor(np.cumprod(1.0 - betas.numpy(), axis=0), dtype=torch.float32)
    assert torch.equal(schedules.sd_alphas_cumprod(), expected)
    assert SCHEDULE.sigma_min == pytest.approx(0.0292, abs=1e-4)
    assert SCHEDULE.sigma_max == pytest.approx(14.6146, abs=1e-4)


class _FakeLDM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("alphas_cumprod", schedules.sd_alphas_cumprod())


@pytest.mark.parametrize("quantize", [False, True])
def test_discrete_schedule_equals_compvis_denoiser(ke, quantize):
    ref = ke.CompVisDenoiser(_FakeLDM(), quantize=quantize)
    ours = schedules.DiscreteSchedule(schedules.sd_alphas_cumprod(), quantize=quantize)
    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.log_sigmas, ref.log_sigmas)
    assert ours.sigma_min == ref.sigma_min.item() and ours.sigma_max == ref.sigma_max.item()
    g = torch.Generator().manual_seed(0)
    sig = torch.cat([
        torch.exp(torch.empty(500).uniform_(-4.5, 3.5, generator=g)),     # inside and outside the range
        ref.sigmas[::37], ref.sigmas[-1:], ref.sigmas[:1],                 # exact table values
    ])
    assert torch.equal(ours.sigma_to_t(sig), ref.sigma_to_t(sig))
    assert torch.equal(ours.sigma_to_t(sig.view(2, -1)), ref.sigma_to_t(sig).view(2, -1))   # any shape
    assert torch.equal(ours.sigma_to_t(sig[3]), ref.sigma_to_t(sig[3]))
    t = torch.empty(300).uniform_(0, 999, generator=g)
    assert torch.equal(ours.t_to_sigma(t), ref.t_to_sigma(t))
    for n in (1, 2, 9, 20, 1000):
        assert torch.equal(schedules.uniform(ours, n), ref.get_sigmas(n))


def test_schedule_to_device_keeps_values():
    moved = SCHEDULE.to("cpu")
    assert moved is not SCHEDULE and torch.equal(moved.sigmas, SCHEDULE.sigmas)
    assert moved.sigma_max == SCHEDULE.sigma_max


@pytest.mark.parametrize("n", [1, 4, 9, 25])
def test_kdiffusion_schedules(ks, n):
    smin, smax = SCHEDULE.sigma_min, SCHEDULE.sigma_max
    assert torch.equal(schedules.karras(SCHEDULE, n), ks.get_sigmas_karras(n, smin, smax))
    assert torch.equal(schedules.karras(SCHEDULE, n, rho=3.5), ks.get_sigmas_karras(n, smin, smax, rho=3.5))
    assert torch.equal(schedules.exponential(SCHEDULE, n), ks.get_sigmas_exponential(n, smin, smax))
    assert torch.equal(schedules.polyexponential(SCHEDULE, n), ks.get_sigmas_polyexponential(n, smin, smax))
    assert torch.equal(schedules.polyexponential(SCHEDULE, n, rho=2.0),
                       ks.get_sigmas_polyexponential(n, smin, smax, rho=2.0))
    assert torch.equal(schedules.karras(SCHEDULE, n, sigma_min=0.1, sigma_max=10.0),
                       ks.get_sigmas_karras(n, 0.1, 10.0))


# A1111's sd_schedulers.py definitions, restated over k-diffusion's DiscreteSchedule (the oracle).
def _a1111_timesteps(ref, n, sgm):
    start = ref.sigma_to_t(torch.tensor(ref.sigma_max.item()))
    end = ref.sigma_to_t(torch.tensor(ref.sigma_min.item()))
    ts = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return torch.FloatTensor([ref.t_to_sigma(t) for t in ts] + [0.0])


def _a1111_simple(ref, n):
    ss = len(ref.sigmas) / n
    return torch.FloatTensor([float(ref.sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0])


def _a1111_ddim(ref, n):
    sigs, ss, x = [], max(len(ref.sigmas) // n, 1), 1
    while x < len(ref.sigmas):
        sigs.append(float(ref.sigmas[x]))
        x += ss
    return torch.FloatTensor(sigs[::-1] + [0.0])


def _a1111_kl_optimal(n, smin, smax):
    a_min, a_max = torch.arctan(torch.tensor(smin)), torch.arctan(torch.tensor(smax))
    i = torch.arange(n + 1)
    return torch.tan(i / n * a_min + (1.0 - i / n) * a_max)


def _a1111_ays(n, table):
    if n == len(table):
        return torch.FloatTensor(table + [0.0])
    xs, ys = np.linspace(0, 1, len(table)), np.log(table[::-1])
    interp = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.FloatTensor(np.append(interp, [0.0]))


@pytest.mark.parametrize("n", [1, 3, 10, 11, 20, 30, 77])
def test_a1111_schedules(ke, n):
    ref = ke.CompVisDenoiser(_FakeLDM())
    assert torch.equal(schedules.sgm_uniform(SCHEDULE, n), _a1111_timesteps(ref, n, sgm=True))
    assert torch.equal(schedules.normal(SCHEDULE, n), _a1111_timesteps(ref, n, sgm=False))
    assert torch.equal(schedules.simple(SCHEDULE, n), _a1111_simple(ref, n))
    assert torch.equal(schedules.ddim(SCHEDULE, n), _a1111_ddim(ref, n))
    assert torch.equal(schedules.kl_optimal(SCHEDULE, n), _a1111_kl_optimal(n, SCHEDULE.sigma_min, SCHEDULE.sigma_max))
    assert torch.equal(schedules.align_your_steps(SCHEDULE, n), _a1111_ays(n, schedules._AYS_SD15))
    assert torch.equal(schedules.align_your_steps(SCHEDULE, n, sdxl=True), _a1111_ays(n, schedules._AYS_SDXL))
    for key in ("uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "normal", "simple",
                "align_your_steps"):
        sigmas = schedules.SCHEDULE_FUNCTIONS[key](SCHEDULE, n)
        assert sigmas.dtype == torch.float32 and sigmas.shape == (n + 1,) and sigmas[-1] == 0, key


# ----------------------------------------------------------------------------------------------- LMS

@pytest.mark.parametrize("key", ["karras", "uniform", "exponential"])
def test_lms_coefficients_equal_scipy(ks, key):
    sigmas = schedules.SCHEDULE_FUNCTIONS[key](SCHEDULE, 12)
    ours = samplers.lms_coefficients(sigmas, order=4)
    t = sigmas.numpy()
    for i, row in enumerate(ours):
        order = min(i + 1, 4)
        theirs = [ks.linear_multistep_coeff(order, t, i, j) for j in range(order)]
        scale = max(abs(c) for c in theirs)
        # k-diffusion integrates with float32 nodes (numpy 2 keeps the integrand float32): ~1e-7
        assert max(abs(a - b) for a, b in zip(row, theirs)) <= 1e-6 * scale, (i, row, theirs)
        # with float64 nodes scipy's quadrature agrees with the exact integral to rounding
        exact = [ks.linear_multistep_coeff(order, t.astype(np.float64), i, j) for j in range(order)]
        assert max(abs(a - b) for a, b in zip(row, exact)) <= 1e-12 * scale
        # the weights of a consistent multistep method sum to the step size
        assert sum(row) == pytest.approx(float(t[i + 1]) - float(t[i]), rel=1e-9)


# ---------------------------------------------------------------------------------------------- samplers

@pytest.mark.parametrize("name", list(SAMPLER_CASES))
@pytest.mark.parametrize("key", SCHEDULE_KEYS)
def test_sampler_parity(ks, name, key):
    spec = registry.find_sampler(name)
    sigmas = registry.build_sigmas(spec, key, SCHEDULE, STEPS)
    x = x_init(sigmas)
    tol = 1e-6 if name == "LMS" else 0.0    # LMS: exact integration vs scipy.quad; the rest: bit-identical
    check_pair(run_pair(ks, name, sigmas, x), tol)


@pytest.mark.parametrize("name", ["Euler", "Heun", "DPM2"])
def test_churn_parity(ks, name):
    sigmas = schedules.karras(SCHEDULE, STEPS)
    x = x_init(sigmas)
    outs = []
    for impl in ("ours", "ref"):
        torch.manual_seed(7)
        fn = SAMPLER_CASES[name][0] if impl == "ours" else getattr(ks, SAMPLER_CASES[name][1])
        kw = {} if impl == "ours" else {"disable": True}
        outs.append(fn(gmm_denoiser, x.clone(), sigmas, s_churn=1.0, s_tmin=0.0, s_tmax=float("inf"),
                       s_noise=1.003, **kw))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("name", ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE"])
def test_eta_parity(ks, name, eta):
    sigmas = schedules.exponential(SCHEDULE, STEPS)
    check_pair(run_pair(ks, name, sigmas, x_init(sigmas), eta=eta, s_noise=0.98), 0.0)


@pytest.mark.parametrize("name", ["DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE"])
def test_default_brownian_noise_matches(ks, name):
    """Without a noise sampler both draw the tree's seed from torch's global generator."""
    sigmas = schedules.karras(SCHEDULE, STEPS)
    x = x_init(sigmas)
    outs = []
    for impl in ("ours", "ref"):
        torch.manual_seed(3)
        fn = SAMPLER_CASES[name][0] if impl == "ours" else getattr(ks, SAMPLER_CASES[name][1])
        kw = {} if impl == "ours" else {"disable": True}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if impl == "ref" else "error")
            outs.append(fn(gmm_denoiser, x.clone(), sigmas, **kw))
    assert torch.equal(outs[0], outs[1])


def test_img2img_tail_and_single_step(ks):
    full = schedules.karras(SCHEDULE, 20)
    tail = full[20 - 7 - 1:]
    for name in ("DPM++ 2M", "LMS", "DPM++ 2M SDE", "DPM++ 3M SDE"):
        check_pair(run_pair(ks, name, tail, x_init(tail)), 1e-6)
    one = schedules.karras(SCHEDULE, 1)
    out = samplers_dpmpp.sample_dpmpp_3m_sde(gmm_denoiser, x_init(one), one,
                                             noise_sampler=BrownianTreeNoiseSampler(x_init(one), 0.03, 14.6, [1, 2]))
    assert torch.isfinite(out).all()


def test_brownian_noise_per_image_seed(ks):
    x = torch.zeros(3, 4, 5, 5)
    lo, hi = torch.tensor(0.03), torch.tensor(14.6)
    ours = BrownianTreeNoiseSampler(x, lo, hi, [5, 6, 7])
    ref = ks.BrownianTreeNoiseSampler(x, lo, hi, seed=[5, 6, 7])
    for a, b in [(hi, torch.tensor(9.0)), (9.0, 2.5), (2.5, 2.4), (0.5, lo), (3.0, 7.0)]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")        # ours keeps torchsde's harmless end-rounding warnings quiet
            n = ours(torch.as_tensor(a), torch.as_tensor(b))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ref(torch.as_tensor(a), torch.as_tensor(b))
        assert n.shape == x.shape and torch.equal(n, expected)
    # image 1 of a batch equals the same seed alone (A1111's batch determinism)
    alone = BrownianTreeNoiseSampler(x[:1], lo, hi, [6])
    assert torch.equal(alone(torch.tensor(9.0), torch.tensor(2.5))[0],
                       ours(torch.tensor(9.0), torch.tensor(2.5))[1])
    single = BrownianTreeNoiseSampler(x, lo, hi, 5)
    assert single(torch.tensor(9.0), torch.tensor(2.5)).shape == x.shape
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        BrownianTreeNoiseSampler(x, 0.03, 14.6, [1, 2])


def test_samplers_accept_device_sigmas_and_do_not_mutate():
    sigmas = schedules.karras(SCHEDULE, STEPS)
    keep = sigmas.clone()
    out = samplers_dpmpp.sample_dpmpp_2m(gmm_denoiser, x_init(sigmas), sigmas)
    assert torch.equal(sigmas, keep) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        samplers.sample_euler(gmm_denoiser, x_init(sigmas), sigmas[:1])
    with pytest.raises(ValueError, match="solver_type"):
        samplers_dpmpp.sample_dpmpp_2m_sde(gmm_denoiser, x_init(sigmas), sigmas, solver_type="rk4")


# ---------------------------------------------------------------------------------------------- registry

def test_registry_order_and_defaults():
    names = [s.name for s in registry.SAMPLERS]
    assert [s.name for s in registry.SAMPLERS if s.own_schedule is not None] == ["DDIM", "PLMS", "UniPC"]
    assert names == ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                     "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DDIM", "PLMS", "UniPC", "LCM"]
    by = {s.name: s for s in registry.SAMPLERS}
    assert {n for n, s in by.items() if s.default_scheduler == "karras"} == {
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2S a", "DPM2", "DPM2 a"}
    assert {n for n, s in by.items() if s.default_scheduler == "exponential"} == {
        "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    assert {n for n, s in by.items() if s.discard_penultimate_sigma} == {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
    assert {n for n, s in by.items() if s.noise == "brownian"} == {
        "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    assert {n for n, s in by.items() if s.noise == "ancestral"} == {"Euler a", "DPM2 a", "DPM++ 2S a", "LCM"}
    assert [n for n, s in by.items() if s.lcm] == ["LCM"]
    assert all(s.deterministic == (s.noise is None) for s in registry.SAMPLERS)
    assert by["DPM++ 2M SDE Heun"].options == {"solver_type": "heun"}
    assert registry.SCHEDULERS["sgm_uniform"] == "SGM Uniform" and list(registry.SCHEDULERS)[:4] == [
        "automatic", "uniform", "karras", "exponential"]
    for spec in registry.SAMPLERS[:-4]:  # each k-diffusion row's function is the algorithm named in the case table
        assert spec.function is SAMPLER_CASES[spec.name][0]


@pytest.mark.parametrize("given, expected", [
    ("DPM++ 2M Karras", ("DPM++ 2M", "karras")),
    ("dpm++ 2m karras", ("DPM++ 2M", "karras")),
    ("Euler a", ("Euler a", "automatic")),
    ("k_euler_a", ("Euler a", "automatic")),
    ("k_euler_ancestral", ("Euler a", "automatic")),
    ("DPM++ SDE Karras", ("DPM++ SDE", "karras")),
    ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "exponential")),
    ("DPM++ 2M SDE Heun Karras", ("DPM++ 2M SDE Heun", "karras")),
    ("DPM++ 2M SDE Heun", ("DPM++ 2M SDE Heun", "automatic")),
    ("DPM2 a Karras", ("DPM2 a", "karras")),
    ("LMS Karras", ("LMS", "karras")),
    ("Euler SGM Uniform", ("Euler", "sgm_uniform")),
    ("Euler SGMUniform", ("Euler", "sgm_uniform")),
    ("k_dpmpp_2m_ka", ("DPM++ 2M", "karras")),
    ("k_lms_ka", ("LMS", "karras")),
    ("k_dpmpp_2m_sde_exp", ("DPM++ 2M SDE", "exponential")),
    ("k_dpmpp_2m_sde_heun_ka", ("DPM++ 2M SDE Heun", "karras")),
    ("K_DPMPP_3M_SDE_KA", ("DPM++ 3M SDE", "karras")),
    ("k_dpmpp_2m", ("DPM++ 2M", "automatic")),
    ("  DPM++ 3M SDE  ", ("DPM++ 3M SDE", "automatic")),
])
def test_resolve_names(given, expected):
    spec, key = registry.resolve(given)
    assert (spec.name, key) == expected


def test_resolve_scheduler_argument():
    assert registry.resolve("Euler", "Karras")[1] == "karras"
    assert registry.resolve("Euler", "sgm uniform")[1] == "sgm_uniform"
    assert registry.resolve("Euler", "SGMUniform")[1] == "sgm_uniform"
    assert registry.resolve("Euler", "Automatic")[1] == "automatic"
    assert registry.resolve("Euler", None)[1] == "automatic"
    assert registry.resolve("DPM++ 2M Karras", "Exponential")[1] == "karras"      # the name wins, as A1111
    assert registry.resolve("DPM++ 2M Karras", convert_automatic=True)[1] == "automatic"
    assert registry.resolve("Euler Karras", convert_automatic=True)[1] == "karras"
    spec, key = registry.resolve("DPM++ 2M")
    assert registry.scheduler_label(spec, key) == "Karras"
    assert registry.scheduler_label(*registry.resolve("Euler")) == "Uniform"


def test_unknown_names_list_what_exists():
    with pytest.raises(ValueError) as err:
        registry.resolve("Euler b")
    assert "DPM++ 2M" in str(err.value) and "Euler a" in str(err.value) and "DPM2 a" in str(err.value)
    with pytest.raises(ValueError) as err:
        registry.resolve("Euler", "Karas")
    assert "Karras" in str(err.value) and "SGM Uniform" in str(err.value)
    with pytest.raises(ValueError):
        registry.resolve("DPM++ 2M Karas")
    with pytest.raises(ValueError):
        registry.resolve("")
    with pytest.raises(ValueError):
        registry.resolve("k_euler_b_ka")


def test_build_sigmas_as_a1111():
    spec, key = registry.resolve("Euler")
    assert torch.equal(registry.build_sigmas(spec, key, SCHEDULE, 20), schedules.uniform(SCHEDULE, 20))
    spec, key = registry.resolve("DPM++ 2M")
    assert torch.equal(registry.build_sigmas(spec, key, SCHEDULE, 20), schedules.karras(SCHEDULE, 20))
    # discard: steps + 1 sigmas, the next-to-last dropped -> still steps + 1 values
    for name, fn in [("DPM2", schedules.karras), ("DPM2 a", schedules.karras), ("DPM++ 3M SDE", schedules.exponential)]:
        spec, key = registry.resolve(name)
        full = fn(SCHEDULE, 21)
        sigmas = registry.build_sigmas(spec, key, SCHEDULE, 20)
        assert sigmas.shape == (21,) and torch.equal(sigmas, torch.cat([full[:-2], full[-1:]]))
    spec, _ = registry.resolve("DPM2")
    full = schedules.uniform(SCHEDULE, 21)
    assert torch.equal(registry.build_sigmas(spec, "uniform", SCHEDULE, 20), torch.cat([full[:-2], full[-1:]]))
    spec, _ = registry.resolve("Euler")
    full = schedules.sgm_uniform(SCHEDULE, 11)
    assert torch.equal(registry.build_sigmas(spec, "sgm_uniform", SCHEDULE, 10, always_discard_penultimate=True),
                       torch.cat([full[:-2], full[-1:]]))
    assert torch.equal(registry.build_sigmas(spec, "karras", SCHEDULE, 10, rho=5.0),
                       schedules.karras(SCHEDULE, 10, 5.0))
    with pytest.raises(ValueError):
        registry.build_sigmas(spec, "beta", SCHEDULE, 10)


@pytest.mark.parametrize("spec", registry.SAMPLERS, ids=lambda s: s.name)
def test_loops_never_read_device_values(spec):
    """x on the 'meta' device (no data: any .item() / bool() / .cpu() of it raises) and CPU sigmas: the
    loops branch and compute step sizes on host scalars only, so on a GPU they never wait for the device."""
    x = torch.empty((2, 4, 6, 6), device="meta")
    sigmas = registry.build_sigmas(spec, "automatic", SCHEDULE, 6)

    def denoiser(x, sigma):
        assert sigma.device.type == "meta"
        return x * 0.5

    steps = []
    out = spec.function(denoiser, x, sigmas, callback=steps.append,
                        noise_sampler=lambda s, s_next: torch.randn_like(x), **spec.options)
    assert out.device.type == "meta" and out.shape == x.shape and len(steps) == len(sigmas) - 1
    if spec.function in (samplers.sample_euler, samplers.sample_heun, samplers.sample_dpm_2):
        spec.function(denoiser, x, sigmas, s_churn=1.0)
