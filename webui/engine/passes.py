"""One pass of the sampler over one batch: the first pass of txt2img or img2img, hires fix's second pass, and a
refiner taking over within a pass all run through ``run_pass``.

A ``Pass`` is frozen and made once per job (``plan.py``): the sampler with its sigmas, the model object that
gives the denoiser and the latent format, the conditioning, and the optional parts (a refiner, an inpainting
blend). Per batch, ``run_pass`` draws the batch's noise, lets the sampler entry make its start latent, runs the
loop (k-diffusion's callback reports progress) and returns what came out. Interrupt and skip keep the last x0
prediction, as A1111 does, so the partial image is still shown and saved.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .control import Interrupted, JobControl, Progress, ProgressCallback, Skipped
from .denoiser import Denoiser, ModelDenoiser, SamplingState, SwitchingDenoiser, cfg_denoiser
from .img2img import Img2ImgInputs
from .patches import JobPatches
from .resident import Conditioning, ResidentModel
from .sampling.entry import Sampler
from .seeds import ImageRNG


SampleWrapper = Callable[..., torch.Tensor]   # w(apply, x, sigmas) -> latents


@dataclass(frozen=True)
class Sampling:
    """A pass's sampling: the sampler with the sigmas it samples; ``noise_span``: the sigmas a Brownian tree
    spans (A1111: the whole schedule in the first pass, also for img2img); ``noise_sigma``: the sigma the init
    latent is noised to (None: txt2img); ``options``: the request's sampler parameters; ``noise_multiplier``:
    img2img's initial noise multiplier."""
    sampler: Sampler
    sigmas: torch.Tensor
    noise_span: torch.Tensor
    noise_sigma: torch.Tensor | None = None
    options: dict = field(default_factory=dict)
    noise_multiplier: float = 1.0

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass(frozen=True)
class RefinerPart:
    """The model that takes over within the pass where ``switch_at`` (one flag per schedule sigma) says so."""
    denoiser: ModelDenoiser
    conditioning: Conditioning
    image_cond: torch.Tensor | None
    switch_at: list[bool]


@dataclass(frozen=True)
class Pass:
    """Everything one pass needs, made once per job. ``shape``: the latent's (C, h, w); ``patches``: the job's,
    when this pass runs the patched model (None for hires fix's own checkpoint); ``inpaint``: the kept region
    blended at every step (inpainting with a normal model); ``sample_wrappers``: ``w(apply, x, sigmas)`` around
    the sampler loop (``JobPatches.sample_wrappers``)."""
    sampling: Sampling
    model: ResidentModel
    denoiser: ModelDenoiser
    conditioning: Conditioning
    cfg_scale: float
    shape: tuple[int, int, int]
    image_cond: torch.Tensor | None = None
    patches: JobPatches | None = None
    refiner: RefinerPart | None = None
    inpaint: Img2ImgInputs | None = None
    sample_wrappers: tuple[SampleWrapper, ...] = ()   # the job's, around the loop of every pass


@dataclass(frozen=True)
class Batch:
    """One batch of a job: its index and the job's batch count, its images' seeds and variation seeds, and the
    noise rules (variation strength, the size the noise is drawn at)."""
    index: int
    count: int
    seeds: list[int]
    subseeds: list[int]
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None

    def rng(self, shape: tuple[int, int, int], device: torch.device) -> ImageRNG:
        return ImageRNG(self.seeds, shape, device, subseeds=self.subseeds, subseed_strength=self.subseed_strength,
                        seed_resize_from=self.seed_resize_from)


@dataclass(frozen=True)
class PassResult:
    latents: torch.Tensor
    interrupted: bool = False
    refiner_switched: bool = False


class _Loop:
    """k-diffusion's callback: keeps the last x0 prediction and A1111's ``sampling_step`` (``state``), and tells
    the job and the extensions' step callbacks."""

    def __init__(self, progress: ProgressCallback | None, batch: Batch, total: int, state: SamplingState,
                 step_callbacks=()):
        self.progress, self.batch, self.total, self.state = progress, batch, total, state
        self.step_callbacks = step_callbacks
        self.last_denoised = None

    def __call__(self, d: dict) -> None:
        self.last_denoised = d["denoised"]
        self.state.sampling_step = d["i"]
        self.state.steps_reported = d["i"] + 1
        if self.progress is not None or self.step_callbacks:
            report = Progress(d["i"] + 1, self.total, self.batch.index, self.batch.count, d["x"], d["denoised"])
            for step_callback in self.step_callbacks:
                step_callback(report)
            if self.progress is not None:
                self.progress(report)


def pass_denoiser(p: Pass, state: SamplingState,
                  check: Callable[[], None] | None) -> tuple[Denoiser, SwitchingDenoiser | None]:
    """The pass's ``denoiser(x, sigma) -> x0`` (CFG over the model, the refiner switch, the inpainting blend) and
    its refiner switch. Made per batch: its call count (the prompt schedule's step) starts at 0."""
    c = p.conditioning
    denoiser = cfg_denoiser(p.denoiser, c.cond, c.uncond, p.cfg_scale, image_cond=p.image_cond, check=check,
                            empty=c.empty, patches=p.patches, state=state)
    switch = None
    if p.refiner is not None:
        r = p.refiner
        second = cfg_denoiser(r.denoiser, r.conditioning.cond, r.conditioning.uncond, p.cfg_scale,
                              image_cond=r.image_cond, check=check, empty=r.conditioning.empty, state=state)
        denoiser = switch = SwitchingDenoiser(denoiser, second, r.switch_at, state)
    if p.inpaint is not None and p.inpaint.keep_mask is not None:
        denoiser = p.sampling.sampler.entry.inpaint(denoiser, p.inpaint.init_latent, p.inpaint.keep_mask)
    return denoiser, switch


def run_pass(p: Pass, batch: Batch, *, init: torch.Tensor | None = None, progress: ProgressCallback | None = None,
             control: JobControl | None = None) -> PassResult:
    """Sample one batch: from noise (txt2img) or from ``init`` noised to the pass's ``noise_sigma``."""
    s, entry = p.sampling, p.sampling.sampler.entry
    rng = batch.rng(p.shape, p.model.device)
    noise = rng.first()
    if s.noise_multiplier != 1.0:
        noise = noise * s.noise_multiplier
    x = entry.start_latent(noise, s.sigmas, init, s.noise_sigma, scaling=p.model.noise_scaling)
    state = SamplingState(0, s.steps)
    patches = p.patches
    loop = _Loop(progress, batch, s.steps, state, patches.step_callbacks if patches is not None else ())
    denoiser, switch = pass_denoiser(p, state, None if control is None else control.check)

    def sample(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        noise_sampler = entry.noise_sampler(rng, x, s.noise_span, batch.seeds)
        return entry.sample(denoiser, x, sigmas, callback=loop, noise_sampler=noise_sampler, options=s.options)

    apply = sample
    for wrapper in reversed(p.sample_wrappers):
        apply = _wrap(wrapper, apply)
    try:
        samples = apply(x, s.sigmas)
    except (Interrupted, Skipped) as stop:
        last = loop.last_denoised
        return PassResult(x if last is None else last, isinstance(stop, Interrupted), bool(switch and switch.switched))
    return PassResult(entry.finish(samples, s.sigmas), False, bool(switch and switch.switched))


def _wrap(wrapper: SampleWrapper, inner):
    return lambda x, sigmas: wrapper(inner, x, sigmas)
