"""A job's plan, made once before anything is sampled: the sampler and its sigmas, the seeds, the sampler
parameters, the img2img inputs, and the optional parts -- hires fix's second pass (its checkpoint, sampler,
sigmas, size and prompts) and the refiner. ``JobPlan.passes`` then makes the frozen ``Pass`` objects (with the
conditioning, which needs the job's patches in place) that ``passes.run_pass`` runs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import upscale
from .img2img import Img2ImgInputs, image_conditioning, prepare_img2img
from .passes import Batch, Pass, RefinerPart, Sampling
from .patches import JobPatches
from .prompts.conditioning import PromptEncoder
from .request import GenerationRequest
from .resident import ResidentModel
from .result import GenerationFacts, HiresFacts
from .sampling import registry
from .sampling.entry import Sampler
from .sampling.schedules import DiscreteSchedule
from .seeds import image_seeds, resolve_seed


@dataclass(frozen=True)
class HiresPlan:
    """Hires fix's second pass: the first pass's latents upscaled (``mode``: a latent mode or an image upscaler)
    to ``target``, cropped to the asked aspect ratio (``shape``), then sampled as img2img with ``request``'s
    size and prompts on ``model`` (the resident one, or hires fix's own checkpoint). Prompt editing counts on
    from the first pass (A1111's ``first_pass_steps``)."""
    target: upscale.HiresTarget
    mode: str
    model: ResidentModel
    sampling: Sampling
    request: GenerationRequest
    shape: tuple[int, int, int]
    calls: int                   # the model calls its prompt schedule spans (its steps before img2img trimming)

    def upscale(self, engine, samples: torch.Tensor) -> torch.Tensor:
        """A1111's ``sample_hr_pass`` up to the second pass: latents interpolated, or decoded, upscaled as images
        and encoded again; then cropped."""
        from . import images as im
        if self.mode in upscale.LATENT_UPSCALE_MODES:
            latents = upscale.upscale_latent(samples, self.target.height, self.target.width, self.mode)
        else:
            images = [upscale.upscale_image(im.to_pil(img), self.target.width, self.target.height, self.mode)
                      for img in engine.decode_latents(samples)]
            latents = engine.encode_images(torch.stack([im.to_tensor(i) for i in images]).to(engine.device))
        latents = upscale.truncate(latents, self.target)
        if tuple(latents.shape[1:]) != self.shape:      # shapes are host metadata: no sync
            raise RuntimeError(f"hires fix: the upscaled latents are {tuple(latents.shape[1:])}, "
                               f"planned {self.shape}")
        return latents


@dataclass(frozen=True)
class JobPlan:
    request: GenerationRequest
    model: ResidentModel
    first: Sampling
    shape: tuple[int, int, int]
    seeds: list[int]
    subseeds: list[int]
    seed: int
    subseed: int
    parameters: dict                        # the sampler parameters set to non-default values (facts)
    img2img: Img2ImgInputs | None = None
    refiner: ResidentModel | None = None
    hires: HiresPlan | None = None

    def batches(self) -> Iterator[Batch]:
        r, size = self.request, self.request.batch_size
        resize = (r.seed_resize_from_h, r.seed_resize_from_w)
        for i in range(r.n_iter):
            yield Batch(i, r.n_iter, self.seeds[i * size:(i + 1) * size], self.subseeds[i * size:(i + 1) * size],
                        r.subseed_strength, resize if min(resize) > 0 else None)

    def passes(self, engine, encoder: PromptEncoder, patches: JobPatches) -> tuple[Pass, Pass | None]:
        """The first pass (with the refiner part) and hires fix's pass, conditioned; call with the job's
        patches applied to the resident model (``Engine.patched``): they change the text encoders too."""
        r, model, entry = self.request, self.model, self.first.sampler.entry
        calls = entry.model_calls(r.steps)              # A1111 counts prompt-editing steps in model calls
        conditioning = model.conditioning(encoder, r, calls)
        needs_image_cond = model.family.is_inpainting or (self.refiner is not None
                                                          and self.refiner.family.is_inpainting)
        image_cond = (image_conditioning(engine, r.width, r.height, r.batch_size, self.img2img)
                      if needs_image_cond else None)
        refiner = None
        if self.refiner is not None:
            second = engine.prompt_encoder(r, self.refiner)
            refiner = RefinerPart(self.refiner.denoiser(entry), self.refiner.conditioning(second, r, calls),
                                  image_cond if self.refiner.family.is_inpainting else None,
                                  switch_flags(model.schedule, self.first.sigmas, r.refiner_switch_at))
        wrappers = tuple(patches.sample_wrappers)
        first = Pass(self.first, model, model.denoiser(entry, patches), conditioning, r.cfg_scale, self.shape,
                     image_cond if model.family.is_inpainting else None, patches, refiner,
                     self.img2img if self.img2img is not None and self.img2img.keep_mask is not None else None,
                     wrappers)
        if self.hires is None:
            return first, None
        h = self.hires
        hr_model, hr_entry = h.model, h.sampling.sampler.entry
        hr_patches = patches if hr_model is model else None
        hr_conditioning = hr_model.conditioning(engine.prompt_encoder(h.request, hr_model), h.request, h.calls,
                                                first_pass_steps=calls)
        hr_image_cond = (image_conditioning(engine, h.request.width, h.request.height, r.batch_size)
                         if hr_model.family.is_inpainting else None)
        hires = Pass(h.sampling, hr_model, hr_model.denoiser(hr_entry, hr_patches), hr_conditioning, r.cfg_scale,
                     h.shape, hr_image_cond, hr_patches, sample_wrappers=wrappers)
        return first, hires

    def facts(self, **found) -> GenerationFacts:
        """The job's facts; ``found``: what only running it told (prompt facts, extension keys, the refiner)."""
        r = self.request
        return GenerationFacts(
            sampler=self.first.sampler.name, scheduler=self.first.sampler.label, seed=self.seed, subseed=self.subseed,
            denoising_strength=r.denoising_strength if self.img2img is not None else None,
            mask=self.img2img.mask_facts(r) if self.img2img is not None else None,
            noise_multiplier=(r.initial_noise_multiplier if self.img2img is not None
                              and r.initial_noise_multiplier != 1.0 else None),
            parameters=dict(self.parameters), hires=_hires_facts(r, self.first.sampler) if r.enable_hr else None,
            tiling=r.tiling, **found)


def plan_job(engine, request: GenerationRequest) -> JobPlan:
    """Resolve, load (the refiner or hires fix's checkpoint) and compute everything a job's passes need."""
    model = engine.require()
    sampler = registry.sampler(request.sampler_name, request.scheduler)
    refiner = engine.refiner(request.refiner_checkpoint) if request.refiner_checkpoint else None
    hires_model = (engine.refiner(request.hr_checkpoint_name)
                   if request.enable_hr and request.hr_checkpoint_name else None)
    if refiner is None and hires_model is None:
        engine.release_second()     # kept only while jobs ask for it: its memory goes back
    steps, batch = request.steps, request.batch_size
    full = sigmas = sampler.sigmas(model.schedule, steps, sdxl=model.family.is_sdxl)
    seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    seeds, subseeds = image_seeds(seed, batch * request.n_iter), image_seeds(subseed, batch * request.n_iter)
    options, changed = _parameters(sampler, request)
    inputs = noise_sigma = None
    if request.init_image is not None:
        inputs = prepare_img2img(engine, request, seeds[:batch])
        noise_sigma, sigmas = sampler.img2img_sigmas(model.schedule, sigmas, steps, request.denoising_strength)
    first = Sampling(sampler, sigmas, full, noise_sigma, options,
                     request.initial_noise_multiplier if inputs is not None else 1.0)
    hires = None
    if request.enable_hr and inputs is None:
        hires = _hires_plan(request, hires_model or model)
    return JobPlan(request, model, first, model.latent.shape(request.width, request.height), seeds, subseeds, seed,
                   subseed, changed, inputs, refiner, hires)


def _hires_plan(request: GenerationRequest, model: ResidentModel) -> HiresPlan:
    target = upscale.hires_target(request.width, request.height, request.hr_scale, request.hr_resize_x,
                                  request.hr_resize_y)
    channels, _, _ = model.latent.shape(request.width, request.height)
    shape = (channels, target.height // 8 - target.truncate_y, target.width // 8 - target.truncate_x)
    hr_request = dataclasses.replace(
        request, width=shape[2] * 8, height=shape[1] * 8, prompt=request.hr_prompt or request.prompt,
        negative_prompt=request.hr_negative_prompt or request.negative_prompt)
    sampler = registry.sampler(request.hr_sampler_name or request.sampler_name,
                               request.hr_scheduler or request.scheduler)
    steps = request.hr_second_pass_steps or request.steps
    sigmas = sampler.sigmas(model.schedule, steps)
    noise_sigma, sigmas = sampler.img2img_sigmas(model.schedule, sigmas, steps, request.denoising_strength)
    sampling = Sampling(sampler, sigmas, sigmas, noise_sigma, _parameters(sampler, request)[0])
    mode = request.hr_upscaler if request.hr_upscaler is not None else upscale.DEFAULT_LATENT_MODE
    return HiresPlan(target, mode, model, sampling, hr_request, shape, sampler.entry.model_calls(steps))


def _parameters(sampler: Sampler, request: GenerationRequest) -> tuple[dict, dict]:
    return sampler.entry.parameters(eta=request.eta, s_churn=request.s_churn, s_tmin=request.s_tmin,
                                    s_tmax=request.s_tmax, s_noise=request.s_noise)


def _hires_facts(request: GenerationRequest, first: Sampler) -> HiresFacts:
    """Hires fix as asked, compared with the first pass as A1111 compares it (the schedule type is resolved
    with the first pass's sampler name when no hires sampler is given)."""
    scheduler = None
    if request.hr_scheduler:
        hr = registry.sampler(request.hr_sampler_name or first.name, request.hr_scheduler)
        if hr.scheduler != first.scheduler:
            scheduler = hr.label
    key, value = upscale.hires_target(request.width, request.height, request.hr_scale, request.hr_resize_x,
                                      request.hr_resize_y).infotext
    return HiresFacts(
        denoising_strength=request.denoising_strength, target=(key, value), checkpoint=request.hr_checkpoint_name,
        sampler=request.hr_sampler_name if request.hr_sampler_name and request.hr_sampler_name != first.name else None,
        scheduler=scheduler,
        prompt=request.hr_prompt if request.hr_prompt and request.hr_prompt != request.prompt else None,
        negative_prompt=(request.hr_negative_prompt if request.hr_negative_prompt
                         and request.hr_negative_prompt != request.negative_prompt else None),
        steps=request.hr_second_pass_steps, upscaler=request.hr_upscaler)


def switch_flags(schedule: DiscreteSchedule, sigmas: torch.Tensor, switch_at: float) -> list[bool]:
    """Per schedule sigma: whether the refiner runs from there, by A1111's rule (``apply_refiner``): the
    sigma's nearest timestep ``t`` in the model's table, done when ``(999 - t) / 1000 >= switch_at``."""
    table = schedule.sigmas.detach().to("cpu")
    flags = []
    for sigma in sigmas.detach().to("cpu"):
        t = int(torch.argmin((table - sigma).abs()))
        flags.append((len(table) - 1 - t) / len(table) >= switch_at)
    return flags
