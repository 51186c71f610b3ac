"""A sampler entry and what it does itself: its sigmas (txt2img and img2img), its start latent, its noise, how it
finishes, how many model calls a step makes, and which of A1111's parameters it takes.

The pass (``engine/passes.py``) asks the entry instead of testing flags, as ComfyUI's sampler object scales its
own start noise: A1111's timestep samplers (DDIM, PLMS, UniPC) keep their quirks here -- they start from
unscaled noise in the variance-preserving space and return their result there, pick their own timesteps for
"Automatic", trim img2img their own way, and blend inpainting into the model's input -- and LCM runs on its 50
original timesteps.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..denoiser import Denoiser, masked_denoiser, masked_model_input
from . import schedules
from .noise import BrownianTreeNoiseSampler
from .schedules import LCM_ORIGINAL_STEPS, DiscreteSchedule

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

def ve_noise_scaling(sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
    """k-diffusion's (variance-exploding) noising: ``x = x0 + sigma * noise``."""
    return noise * sigma if latent is None else latent + noise * sigma


# A1111's names and defaults of the sampler parameters a request may set (``p.eta``, ``p.s_churn``...)
PARAMETER_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}


@dataclass(frozen=True)
class SamplerSpec:
    """One entry of A1111's sampler list.

    name: A1111 display name. function: ``sample_x(denoiser, x, sigmas, *, callback, noise_sampler, **options)``.
    aliases: A1111's aliases (API / old infotexts). default_scheduler: the schedule type "Automatic" means
    for this sampler. discard_penultimate_sigma: build ``steps + 1`` sigmas and drop the next-to-last one.
    noise: 'ancestral' (fresh noise per step: A1111 draws it from the per-image RNG), 'brownian' (a Brownian
    tree seeded with the images' seeds) or None. deterministic: no noise after the initial latent.
    options: keyword arguments the function gets for this entry (e.g. ``solver_type='heun'``).
    second_order: two model calls per step (A1111 counts prompt-editing steps in model calls). lcm: the model is
    run as a latent consistency model (A1111's ``LCMCompVisDenoiser``): its sigmas, schedule types included, are
    built on LCM's 50 original timesteps and the denoiser applies LCM's boundary scalings.
    own_schedule: ``(schedule, steps) -> sigmas`` used for "Automatic" instead of a schedule type (A1111's
    timestep samplers DDIM / UniPC pick their own timesteps). own_img2img: ``(schedule, steps, t_enc) ->
    (noise sigma, sigmas)``, their own img2img trimming, used with "Automatic". vp_latent: like A1111's timestep
    samplers, the loop starts from unscaled noise in the variance-preserving space and its result is returned
    there, so txt2img starts at ``noise * sqrt(1 + sigma_0^2)`` and the result is divided by
    ``sqrt(1 + sigma_last^2)``.
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

    # ---- the schedule ----------------------------------------------------------------------------------
    def model_calls(self, steps: int) -> int:
        """The model calls ``steps`` steps make: what prompt editing counts in (A1111's ``CFGDenoiser.step``)."""
        return steps * 2 if self.second_order else steps

    def model_schedule(self, schedule: DiscreteSchedule) -> DiscreteSchedule:
        """The schedule the sigmas are built on and the denoiser maps sigmas with: the model's, or for LCM the
        sub-schedule of its original timesteps."""
        return schedule.every(len(schedule) // LCM_ORIGINAL_STEPS) if self.lcm else schedule

    def lcm_stride(self, schedule: DiscreteSchedule) -> int | None:
        """LCM's timestep stride over the model's schedule (None for every other sampler)."""
        return len(schedule) // LCM_ORIGINAL_STEPS if self.lcm else None

    def img2img_sigmas(self, scheduler_key: str, schedule: DiscreteSchedule, sigmas: torch.Tensor, steps: int,
                       denoising_strength: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the sigma the init latent is noised to, the sigmas sampled) of an img2img pass: the sampler's own rule
        (DDIM, UniPC with the automatic schedule), else the last ``t_enc + 1`` of ``sigmas`` (A1111's)."""
        t_enc = int(min(denoising_strength, 0.999) * steps)
        if self.own_img2img is not None and scheduler_key == "automatic":
            return self.own_img2img(schedule, steps, t_enc)
        sigmas = sigmas[steps - t_enc - 1:]
        return sigmas[0], sigmas

    # ---- the loop ---------------------------------------------------------------------------------------
    def start_latent(self, noise: torch.Tensor, sigmas: torch.Tensor, init: torch.Tensor | None = None,
                     noise_sigma: torch.Tensor | None = None, scaling: Callable = ve_noise_scaling) -> torch.Tensor:
        """The loop's first ``x``: noise at ``sigmas[0]`` (txt2img) or ``init`` noised to ``noise_sigma``
        (img2img, a hires pass). ``scaling(sigma, noise, latent=None)`` is the model's (k-diffusion's
        ``x0 + sigma * noise`` for SD). Timestep samplers (``vp_latent``) start, as in A1111, from unscaled noise
        in the variance-preserving space, which is ``noise * sqrt(1 + sigma^2)`` in the engine's space."""
        if init is not None:
            x = scaling(noise_sigma, noise, init)
            if self.vp_latent:   # VP latent noised to noise_sigma, seen by the sampler as at sigmas[0]
                x = x * ((1.0 + sigmas[0] ** 2) / (1.0 + noise_sigma ** 2)).sqrt()
            return x
        if self.vp_latent:
            return noise * (1.0 + sigmas[0] ** 2).sqrt()
        return scaling(sigmas[0], noise)

    def noise_sampler(self, rng, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]):
        """The noise of the steps: a Brownian tree per image seed over ``sigmas`` (A1111 spans it over the whole
        schedule, also in img2img), else the images' own generators (``rng.noise_sampler``: ancestral steps,
        Euler's churn, DDIM with eta draw from them, as A1111's ``randn_like`` does)."""
        if self.noise == "brownian":
            positive = sigmas[sigmas > 0]
            return BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seeds)
        return rng.noise_sampler

    def inpaint(self, denoiser: Denoiser, init_latent: torch.Tensor, keep_mask: torch.Tensor) -> Denoiser:
        """Inpainting with a normal model: the kept region blended into the prediction, or for the timestep
        samplers into the model's input (A1111's ``mask_before_denoising``)."""
        blend = masked_model_input if self.vp_latent else masked_denoiser
        return blend(denoiser, init_latent, keep_mask)

    def sample(self, denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback=None,
               noise_sampler=None, options: dict | None = None) -> torch.Tensor:
        """Run the loop with this entry's own options and the request's ``options`` (``parameters``)."""
        return self.function(denoiser, x, sigmas, callback=callback, noise_sampler=noise_sampler,
                             **{**self.options, **(options or {})})

    def finish(self, samples: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The loop's result in the engine's space (the timestep samplers end in the VP space)."""
        return samples / (1.0 + sigmas[-1] ** 2).sqrt() if self.vp_latent else samples

    def parameters(self, *, eta: float | None = None, s_churn: float | None = None, s_tmin: float | None = None,
                   s_tmax: float | None = None, s_noise: float | None = None) -> tuple[dict, dict]:
        """(keyword arguments for ``function``, the parameters set to other values than the default) of what a
        request set, as A1111 hands them to k-diffusion: each goes to the samplers whose function takes it
        (``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``: Euler, Heun, DPM2; ``eta``: the ancestral and SDE
        samplers, default 1, and DDIM, default 0; ``s_noise`` also to those). ``s_tmax`` 0 means infinity, as in
        A1111. The second dict is keyed by the request's field names, in A1111's infotext order."""
        accepted = inspect.signature(self.function).parameters
        kwargs, changed = {}, {}
        if eta is not None and "eta" in accepted:
            kwargs["eta"] = float(eta)
            if eta != accepted["eta"].default:
                changed["eta"] = eta
        given = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": float("inf") if s_tmax == 0 else s_tmax,
                 "s_noise": s_noise}
        for name, value in given.items():
            if value is None or name not in accepted:
                continue
            kwargs[name] = float(value)
            if value != PARAMETER_DEFAULTS[name]:
                changed[name] = value
        return kwargs, changed


def effective_scheduler(spec: SamplerSpec, scheduler_key: str) -> str:
    """The schedule type actually used: 'automatic' -> the sampler's default."""
    return spec.default_scheduler if scheduler_key == "automatic" else scheduler_key


def scheduler_label(spec: SamplerSpec, scheduler_key: str) -> str:
    """A1111 label of the schedule type actually used ("Automatic" resolved to the sampler's default;
    it stays "Automatic" for samplers that choose their own timesteps)."""
    if scheduler_key == "automatic" and spec.own_schedule is not None:
        return SCHEDULERS["automatic"]
    return SCHEDULERS[effective_scheduler(spec, scheduler_key)]


def build_sigmas(spec: SamplerSpec, scheduler_key: str, schedule: DiscreteSchedule, steps: int, *,
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


@dataclass(frozen=True)
class Sampler:
    """A sampler entry with the schedule type a request chose (a key of ``SCHEDULERS``), resolved once."""
    entry: SamplerSpec
    scheduler: str = "automatic"

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def label(self) -> str:
        """The schedule type's A1111 label ("Automatic" resolved where the sampler has a default)."""
        return scheduler_label(self.entry, self.scheduler)

    def sigmas(self, schedule: DiscreteSchedule, steps: int, *, sdxl: bool = False) -> torch.Tensor:
        """The sigmas of ``steps`` steps on ``schedule`` (the model's; LCM's sub-schedule is taken here).
        ``sdxl``: Align Your Steps' SDXL table (A1111 passes it when the schedule type is chosen explicitly)."""
        options = {"sdxl": True} if (sdxl and self.scheduler != "automatic" and
                                     effective_scheduler(self.entry, self.scheduler) == "align_your_steps") else {}
        return build_sigmas(self.entry, self.scheduler, self.entry.model_schedule(schedule), steps, **options)

    def img2img_sigmas(self, schedule: DiscreteSchedule, sigmas: torch.Tensor, steps: int,
                       denoising_strength: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.entry.img2img_sigmas(self.scheduler, schedule, sigmas, steps, denoising_strength)
