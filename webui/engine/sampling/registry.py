"""Sampler and schedule-type names as A1111 shows them, their aliases, A1111's per-sampler defaults, and the
legacy combined names ("DPM++ 2M Karras").

Source of truth: A1111 1.10 ``modules/sd_samplers_kdiffusion.py`` (``samplers_k_diffusion``: names, aliases,
``scheduler`` = the "Automatic" schedule type, ``discard_next_to_last_sigma``, ``brownian_noise``,
``solver_type``), ``modules/sd_schedulers.py`` (schedule types) and ``modules/sd_samplers.py``
(``get_sampler_and_scheduler``: legacy "<sampler> <schedule label>" names).
"""
from __future__ import annotations

import torch

from . import samplers as k
from . import samplers_dpmpp as dpmpp
from . import schedules
from .ddim import a1111_timesteps, ddim_sigmas, sample_ddim, sample_plms
from .entry import SCHEDULERS, Sampler, SamplerSpec, build_sigmas, effective_scheduler, scheduler_label
from .unipc import sample_unipc, unipc_sigmas

__all__ = ["SamplerSpec", "Sampler", "SAMPLERS", "SCHEDULERS", "resolve", "sampler", "build_sigmas",
           "scheduler_label", "effective_scheduler", "find_sampler"]


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
    SamplerSpec("DPM++ 2M", dpmpp.sample_dpmpp_2m, ("k_dpmpp_2m",), default_scheduler="karras"),
    _brownian("DPM++ SDE", dpmpp.sample_dpmpp_sde, ("k_dpmpp_sde",), default_scheduler="karras", second_order=True),
    _brownian("DPM++ 2M SDE", dpmpp.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), default_scheduler="exponential"),
    _brownian("DPM++ 2M SDE Heun", dpmpp.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",),
              default_scheduler="exponential", options={"solver_type": "heun"}),
    _ancestral("DPM++ 2S a", dpmpp.sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), default_scheduler="karras",
               second_order=True),
    _brownian("DPM++ 3M SDE", dpmpp.sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), default_scheduler="exponential",
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
    _ancestral("LCM", dpmpp.sample_lcm, ("k_lcm",), lcm=True),
)

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


def sampler(sampler_name: str, scheduler_name: str | None = None) -> Sampler:
    """``resolve`` as one value: the entry with its schedule type."""
    return Sampler(*resolve(sampler_name, scheduler_name))
