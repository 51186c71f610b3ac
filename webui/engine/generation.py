"""txt2img, img2img and inpainting with A1111's semantics: plan the job, let the extensions prepare it, then run
its passes batch by batch and decode.

The plan (``plan.py``) resolves the sampler and its sigmas, the seeds and the img2img inputs once; the
extensions' hooks fill the job's ``JobPatches`` and handle the prompt's ``<kind:...>`` tags; with the patches
applied the passes are conditioned and each batch runs the first pass, hires fix's second pass when asked,
the inpainting blend, the VAE decode and the overlay. The result is one ``ImageRecord`` per image and the
job's facts (``result.py``); the infotext is the job layer's business.

A1111's timestep samplers (DDIM, UniPC: their sampler entries) keep two quirks of its
``sd_samplers_timesteps.py``: img2img noises the latent to timestep ``ts[t_enc]`` but samples over
``ts[:t_enc]`` (first model call one timestep lower), and inpainting blends the kept region into the model's
input (``mask_before_denoising``) instead of into its prediction.
"""
from __future__ import annotations

import re

import torch

from . import images as im
from .control import JobControl, ProgressCallback
from .job_hooks import JobContext, JobHooks
from .passes import run_pass
from .patches import JobPatches
from .plan import plan_job
from .prompts.composable import extra_network_tags
from .request import GenerationRequest
from .result import GenerationResult, ImageRecord


@torch.inference_mode()
def generate(engine, request: GenerationRequest, progress: ProgressCallback | None = None,
             control: JobControl | None = None, hooks: JobHooks | None = None) -> GenerationResult:
    """One job on ``engine`` (an ``Engine``). ``hooks``: extensions' per-job callbacks and tag handlers; tags of a
    kind nobody handles are removed and reported in ``warnings``."""
    request.validate()
    plan = plan_job(engine, request)
    hooks = hooks or JobHooks()
    prompt, tags = extra_network_tags(request.prompt)
    ctx = JobContext(request, plan.model.model, engine.device, JobPatches(), {}, [], hooks.script_args,
                     plan.first.steps, (request.width, request.height), request.batch_size)
    if request.tiling:
        ctx.patches.conv_padding = "circular"
    hooks.run(ctx, [] if request.disable_extra_networks else tags)
    images: list[ImageRecord] = []
    interrupted = switched = False
    with engine.patched(ctx.patches):
        encoder = engine.prompt_encoder(request)
        first, hires = plan.passes(engine, encoder, ctx.patches)
        ctx.warnings.extend(_skipped_embeddings(engine, prompt, request.negative_prompt))
        for batch in plan.batches():
            if control is not None:
                control.new_batch()
            out = run_pass(first, batch, init=plan.img2img.init_latent if plan.img2img else None,
                           progress=progress, control=control)
            samples, interrupted, switched = out.latents, out.interrupted, switched or out.refiner_switched
            if hires is not None and not interrupted:
                upscaled = plan.hires.upscale(engine, samples)
                out = run_pass(hires, batch, init=upscaled, progress=progress, control=control)
                samples, interrupted = out.latents, out.interrupted
            if plan.img2img is not None:
                samples = plan.img2img.finish(samples)
            for img, seed, subseed in zip(engine.decode_latents(samples), batch.seeds, batch.subseeds):
                image = im.to_pil(img)
                if plan.img2img is not None:
                    image = plan.img2img.paste(image)
                images.append(ImageRecord(image, seed, subseed, request.prompt, request.negative_prompt))
            if interrupted:
                break
    facts = plan.facts(extension_params=dict(ctx.infotext), embeddings=tuple(encoder.used_hashes),
                       emphasis=encoder.options.emphasis if encoder.emphasis_used else None,
                       refiner_switched=switched)
    return GenerationResult(images, facts, interrupted, ctx.warnings)


def _skipped_embeddings(engine, *texts: str) -> list[str]:
    """A warning for each embedding a prompt names that was made for other text encoders (it is not used: its
    name stays ordinary text, as in A1111, which says nothing)."""
    database, label = engine.embeddings, engine.require().family.label
    found = []
    for name, reason in database.skip_reasons.items():
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)
        if any(pattern.search(text) for text in texts):
            found.append(f"embedding {reason}; the loaded model is {label}: not used")
    return found
