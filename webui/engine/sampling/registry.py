"""Sampler and schedule-type names as A1111 shows them, their aliases, A1111's per-sampler defaults, and the
legacy combined names ("DPM++ 2M Karras").

Source of truth: A1111 1.10 ``modules/sd_samplers_kdiffusion.py`` (``samplers_k_diffusion``: names, aliases,
``scheduler`` = the "Automatic" schedule type, ``discard_next_to_last_sigma``, ``brownian_noise``,
``solver_type``), ``modules/sd_schedulers.py`` (schedule types) and ``modules/sd_samplers.py``
(``get_sampler_and_scheduler``: legacy "<sampler> <schedule label>" names).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import samplers as k
from . import schedules
from .ddim import a1111_timesteps, ddim_sigmas, sample_ddim, sample_plms
from .unipc import sample_unipc, unipc_sigmas

__all__ = ["SamplerSpec", "SAMPLERS", "SCHEDULERS", "resolve", "build_sigmas", "scheduler_label",
           "effective_scheduler", "find_sampler"]


@dataclass(frozen=True)
class SamplerSpec:
    """One entry of A1111's sampler list.

    name: A1111 display name. function: ``sample_x(denoiser, x, sigmas, *, callback, noise_sampler, **options)``.
    aliases: A1111's aliases (API / old infotexts). default_scheduler: the schedule type "Automatic" means
    for this sampler. discard_penultimate_sigma: build ``steps + 1`` sigmas and drop the next-to-last one.
    noise: 'ancestral' (fresh noise per step: A1111 draws it from the per-image RNG), 'brownian' (a Brownian
    tree seeded with the images' seeds) or None. deterministic: no noise after the initial latent.
    options: keyword arguments the function gets for this entry (e.g. ``solver_type='heun'``).
    second_order: two model calls per step (A1111 uses it for progress accounting). lcm: the model is run
    as a latent consistency model (A1111's ``LCMCompVisDenoiser``): its sigmas, schedule types included, are
    built on LCM's 50 original timesteps and the denoiser applies LCM's boundary scalings.
    own_schedule: ``(schedule, steps) -> sigmas`` used for "Automatic" instead of a schedule type (A1111's
    timestep samplers DDIM / UniPC pick their own timesteps). own_img2img: ``(schedule, steps, t_enc) ->
    (noise sigma, sigmas)``, their own img2img trimming, used with "Automatic". vp_latent: like A1111's timestep samplers, the
    loop starts from unscaled noise in the variance-preserving space and its result is returned there, so
    txt2img starts at ``noise * sqrt(1 + sigma_0^2)`` and the result is divided by ``sqrt(1 + sigma_last^2)``.
    """
    name: str
    function: Callable
    aliases: tuple[str, ...] = ()
    default_scheduler: str = "uniform"
    discard_penultimate_sigma: bool = False
    noise: str | None = None
    deterministic: bool = True
    options: dict = field(default_factory=dict, hash=False, compare=False)
    second_order: bool = False
    own_schedule: Callable | None = field(default=None, hash=False, compare=False)
    own_img2img: Callable | None = field(default=None, hash=False, compare=False)
    vp_latent: bool = False
    lcm: bool = False


def _alphas_cumprod(schedule: schedules.DiscreteSchedule) -> torch.Tensor:
    return 1.0 / (schedule.sigmas.cpu().double() ** 2 + 1.0)


def _ddim_schedule(schedule, steps):
    return ddim_sigmas(_alphas_cumprod(schedule), steps)


def _unipc_schedule(schedule, steps):
    return unipc_sigmas(_alphas_cumprod(schedule), steps)


def _timestep_img2img(schedule, steps: int, t_enc: int, *, uniform_in_t: bool):
    """A1111's ``CompVisSampler.sample_img2img`` (DDIM, UniPC) -> (sigma of the noise, sampling sigmas).

    With the sampler's timesteps ``ts``, the latent is noised to ``ts[t_enc]`` and the sampler runs as
    given ``ts[:t_enc]``: DDIM steps ``ts[t_enc-1] -> ... -> ts[0]`` (``t_enc - 1`` model calls),
    UniPC (``uniform_in_t``) takes ``t_enc`` uniform steps in t from ``ts[t_enc-1]`` down to 0. With
    ``t_enc == 0`` nothing is sampled (A1111's DDIM returns the noised latent; its UniPC fails).
    """
    ts = a1111_timesteps(steps, len(schedule))
    table = schedule.sigmas
    if t_enc > 0 and uniform_in_t:
        sigmas = schedule.t_to_sigma(torch.linspace(ts[t_enc - 1], 0, t_enc + 1, device=table.device))
    else:
        sigmas = table[torch.tensor(ts[max(t_enc - 1, 0)::-1], device=table.device)]
    return table[ts[t_enc]], sigmas


def _ddim_img2img(schedule, steps, t_enc):
    return _timestep_img2img(schedule, steps, t_enc, uniform_in_t=False)


def _unipc_img2img(schedule, steps, t_enc):
    return _timestep_img2img(schedule, steps, t_enc, uniform_in_t=True)


def _ancestral(name, function, aliases, **kw) -> SamplerSpec:
    return SamplerSpec(name, function, aliases, noise="ancestral", deterministic=False, **kw)


def _brownian(name, function, aliases, **kw) -> SamplerSpec:
    return SamplerSpec(name, function, aliases, noise="brownian", deterministic=False, **kw)


# A1111's order (samplers_k_diffusion, the timestep samplers, then LCM). Left out: DPM fast, DPM adaptive and
# Restart (between "DPM2 a" and the timestep samplers in A1111), DDIM CFG++.
SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", k.sample_dpmpp_2m, ("k_dpmpp_2m",), default_scheduler="karras"),
    _brownian("DPM++ SDE", k.sample_dpmpp_sde, ("k_dpmpp_sde",), default_scheduler="karras", second_order=True),
    _brownian("DPM++ 2M SDE", k.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), default_scheduler="exponential"),
    _brownian("DPM++ 2M SDE Heun", k.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",),
              default_scheduler="exponential", options={"solver_type": "heun"}),
    _ancestral("DPM++ 2S a", k.sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), default_scheduler="karras",
               second_order=True),
    _brownian("DPM++ 3M SDE", k.sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), default_scheduler="exponential",
              discard_penultimate_sigma=True),
    _ancestral("Euler a", k.sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral")),
    SamplerSpec("Euler", k.sample_euler, ("k_euler",)),
    SamplerSpec("LMS", k.sample_lms, ("k_lms",)),
    SamplerSpec("Heun", k.sample_heun, ("k_heun",), second_order=True),
    # A1111 1.9+ gives DPM2 / DPM2 a 'scheduler': 'karras' (what "DPM2 Karras" used to be).
    SamplerSpec("DPM2", k.sample_dpm_2, ("k_dpm_2",), default_scheduler="karras",
                discard_penultimate_sigma=True, second_order=True),
    _ancestral("DPM2 a", k.sample_dpm_2_ancestral, ("k_dpm_2_a",), default_scheduler="karras",
               discard_penultimate_sigma=True, second_order=True),
    # --- timestep samplers (A1111 order: DDIM, [DDIM CFG++], [PLMS], UniPC) ---
    SamplerSpec("DDIM", sample_ddim, ("ddim",), own_schedule=_ddim_schedule, own_img2img=_ddim_img2img,
                vp_latent=True),
    SamplerSpec("PLMS", sample_plms, ("plms",), own_schedule=_ddim_schedule, own_img2img=_ddim_img2img,
                vp_latent=True),
    SamplerSpec("UniPC", sample_unipc, ("unipc",), own_schedule=_unipc_schedule, own_img2img=_unipc_img2img,
                vp_latent=True),
    _ancestral("LCM", k.sample_lcm, ("k_lcm",), lcm=True),
)

# key -> A1111 label, in A1111's order. "beta" (needs scipy.stats.beta.ppf) is not available.
SCHEDULERS: dict[str, str] = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
}
_SCHEDULER_ALIASES = {"sgmuniform": "sgm_uniform"}

# Aliases of A1111's removed "<sampler> Karras" / "<sampler> Exponential" entries (1.5-1.8): k_<x>_ka and
# k_<x>_exp, e.g. k_dpmpp_2m_ka, k_dpmpp_2m_sde_exp, k_dpmpp_3m_sde_ka -> (alias k_<x>, schedule type).
_LEGACY_ALIAS_SUFFIXES = {"_ka": "karras", "_exp": "exponential"}


def _sampler_index() -> dict[str, SamplerSpec]:
    index = {}
    for spec in SAMPLERS:
        index[spec.name.lower()] = spec
        for alias in spec.aliases:
            index.setdefault(alias.lower(), spec)
    return index


def _scheduler_key(name: str) -> str | None:
    key = name.strip().lower()
    for candidate, label in SCHEDULERS.items():
        if key in (candidate, label.lower()):
            return candidate
    return _SCHEDULER_ALIASES.get(key.replace(" ", ""))


def find_sampler(name: str) -> SamplerSpec | None:
    """The sampler with this display name or alias (case-insensitive), or None."""
    return _sampler_index().get(name.strip().lower())


def resolve(sampler_name: str, scheduler_name: str | None = None, *,
            convert_automatic: bool = False) -> tuple[SamplerSpec, str]:
    """Sampler name (display name, alias, or A1111's legacy "<sampler> <schedule type>" such as
    "DPM++ 2M Karras" / "DPM++ 2M SDE Exponential") and schedule type (key, label or alias; None =
    automatic) -> ``(SamplerSpec, scheduler key)``.

    As in A1111 a schedule type in the sampler name wins over ``scheduler_name``. With
    ``convert_automatic`` the key becomes 'automatic' when it equals the sampler's default (A1111's
    ``get_sampler_and_scheduler``). Unknown names raise ``ValueError`` listing what exists.
    """
    scheduler = "automatic"
    if scheduler_name is not None and str(scheduler_name).strip():
        scheduler = _scheduler_key(str(scheduler_name))
        if scheduler is None:
            raise ValueError(f"unknown schedule type {scheduler_name!r}; available: "
                             + ", ".join(SCHEDULERS.values()))
    if not isinstance(sampler_name, str) or not sampler_name.strip():
        raise ValueError("no sampler name given; available: " + ", ".join(s.name for s in SAMPLERS))

    name = sampler_name.strip()
    index = _sampler_index()
    spec = index.get(name.lower())
    if spec is None and name.lower().startswith("k_"):
        for suffix, key in _LEGACY_ALIAS_SUFFIXES.items():
            if name.lower().endswith(suffix) and name.lower()[: -len(suffix)] in index:
                spec, scheduler = index[name.lower()[: -len(suffix)]], key
                break
    if spec is None:
        # "<sampler> <schedule label>": the longest matching label first ("SGM Uniform" before "Uniform").
        suffixes = [(label, key) for key, label in SCHEDULERS.items()] + [("SGMUniform", "sgm_uniform")]
        for label, key in sorted(suffixes, key=lambda p: -len(p[0])):
            if name.lower().endswith(" " + label.lower()):
                spec = index.get(name[: -len(label) - 1].strip().lower())
                if spec is not None:
                    scheduler = key
                    break
    if spec is None:
        raise ValueError(f"unknown sampler {sampler_name!r}; available: " + ", ".join(s.name for s in SAMPLERS)
                         + " (also their aliases, and '<sampler> <schedule type>' such as 'DPM++ 2M Karras')")
    if convert_automatic and scheduler == spec.default_scheduler:
        scheduler = "automatic"
    return spec, scheduler


def effective_scheduler(spec: SamplerSpec, scheduler_key: str) -> str:
    """The schedule type actually used: 'automatic' -> the sampler's default."""
    return spec.default_scheduler if scheduler_key == "automatic" else scheduler_key


def scheduler_label(spec: SamplerSpec, scheduler_key: str) -> str:
    """A1111 label of the schedule type actually used ("Automatic" resolved to the sampler's default;
    it stays "Automatic" for samplers that choose their own timesteps)."""
    if scheduler_key == "automatic" and spec.own_schedule is not None:
        return SCHEDULERS["automatic"]
    return SCHEDULERS[effective_scheduler(spec, scheduler_key)]


def build_sigmas(spec: SamplerSpec, scheduler_key: str, schedule: schedules.DiscreteSchedule, steps: int, *,
                 always_discard_penultimate: bool = False, **schedule_options) -> torch.Tensor:
    """The sigmas A1111 samples ``steps`` steps with (CPU float32, as A1111's ``get_sigmas``).

    'automatic' -> the sampler's default schedule type. For samplers that discard the penultimate sigma
    (or with ``always_discard_penultimate``, A1111's "always discard next-to-last sigma" option) the
    schedule is built for ``steps + 1`` and its next-to-last value dropped, so the step count is kept.
    ``schedule_options`` go to the schedule function (e.g. ``rho=``, ``sigma_min=``, ``sdxl=`` for AYS).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if scheduler_key == "automatic" and spec.own_schedule is not None:
        return spec.own_schedule(schedule, steps)
    key = effective_scheduler(spec, scheduler_key)
    function = schedules.SCHEDULE_FUNCTIONS.get(key)
    if function is None:
        raise ValueError(f"unknown schedule type {scheduler_key!r}; available: " + ", ".join(SCHEDULERS))
    discard = spec.discard_penultimate_sigma or always_discard_penultimate
    sigmas = function(schedule, steps + 1 if discard else steps, **schedule_options)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


# A1111's names and defaults of the sampler parameters a request may set (``p.eta``, ``p.s_churn``...)
_PARAMETER_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
_PARAMETER_INFOTEXT = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax",
                       "s_noise": "Sigma noise"}


def sampler_parameters(spec: SamplerSpec, *, eta: float | None = None, s_churn: float | None = None,
                       s_tmin: float | None = None, s_tmax: float | None = None,
                       s_noise: float | None = None) -> tuple[dict, dict]:
    """(keyword arguments for ``spec.function``, infotext entries) for the parameters a request set, as A1111
    hands them to k-diffusion: each goes to the samplers whose function takes it (``s_churn``, ``s_tmin``,
    ``s_tmax``, ``s_noise``: Euler, Heun, DPM2; ``eta``: the ancestral and SDE samplers, default 1, and
    DDIM, default 0; ``s_noise`` also to those). Values equal to the default are not written to the
    infotext (A1111's ``Eta`` / ``Eta DDIM``, ``Sigma churn``, ``Sigma tmin``, ``Sigma tmax``, ``Sigma noise``);
    ``s_tmax`` 0 means infinity, as in A1111."""
    accepted = inspect.signature(spec.function).parameters
    kwargs, infotext = {}, {}
    if eta is not None and "eta" in accepted:
        default = accepted["eta"].default
        kwargs["eta"] = float(eta)
        if eta != default:
            infotext["Eta DDIM" if spec.name == "DDIM" else "Eta"] = eta
    given = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": float("inf") if s_tmax == 0 else s_tmax,
             "s_noise": s_noise}
    for name, value in given.items():
        if value is None or name not in accepted:
            continue
        kwargs[name] = float(value)
        if value != _PARAMETER_DEFAULTS[name]:
            infotext[_PARAMETER_INFOTEXT[name]] = value
    return kwargs, infotext
