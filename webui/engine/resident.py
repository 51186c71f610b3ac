"""A loaded model as generation uses it: its latent format, its noise schedule on the device, its denoiser and
its conditioning. The passes (``passes.py``) ask this object and never look at the networks, so another family
(16 latent channels, flow-matching sigmas, other text encoders) comes as another such object.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import StableDiffusionModel
from .denoiser import ModelDenoiser
from .prompts.composable import extra_network_tags
from .prompts.conditioning import PROMPT_SETTINGS, CondSchedule, MultiCond, PromptEncoder, PromptOptions
from .prompts.embeddings import EmbeddingDatabase
from .request import GenerationRequest
from .sampling.entry import SamplerSpec, ve_noise_scaling
from .sampling.schedules import DiscreteSchedule
from .text import TextEncoder
from .vector import SizeConditioning


@dataclass(frozen=True)
class LatentFormat:
    """What the sampler works on: ``channels`` at 1/``downscale`` of the image size, ``(mean - shift) * scale``
    of the VAE's latent distribution."""
    channels: int = 4
    scale: float = 0.18215
    shift: float = 0.0
    downscale: int = 8

    def shape(self, width: int, height: int) -> tuple[int, int, int]:
        return self.channels, height // self.downscale, width // self.downscale

    def from_vae(self, mean: torch.Tensor) -> torch.Tensor:
        return (mean - self.shift) * self.scale if self.shift else mean * self.scale

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.scale + self.shift if self.shift else latents / self.scale


@dataclass(frozen=True)
class Conditioning:
    """What a pass's denoiser is conditioned on: the prompt's ``MultiCond`` (AND parts, each scheduled), the
    negative prompt's ``CondSchedule``, and the empty prompt's encoding when cond and uncond are padded to one
    length (``pad_cond_uncond``)."""
    cond: MultiCond
    uncond: CondSchedule
    empty: torch.Tensor | None = None


class ResidentModel:
    """A loaded checkpoint with its text encoders and its schedule on ``device``. ``model`` is what extensions
    see (``ctx.model``: ``unet``, ``family``, ``text_models`` ...)."""

    def __init__(self, model: StableDiffusionModel, text_encoders: list[TextEncoder], device: torch.device):
        self.model, self.text_encoders, self.device = model, text_encoders, device
        self.schedule: DiscreteSchedule = model.schedule.to(device)
        self.latent = LatentFormat(scale=model.family.latent_scale)

    @property
    def family(self):
        return self.model.family

    @property
    def path(self) -> Path:
        return Path(self.model.path)

    noise_scaling = staticmethod(ve_noise_scaling)    # latent (or nothing, txt2img) noised to sigma

    def sampling_schedule(self, entry: SamplerSpec) -> DiscreteSchedule:
        """The schedule a sampler entry builds its sigmas on (LCM: the sub-schedule of its original steps)."""
        return entry.model_schedule(self.schedule)

    def denoiser(self, entry: SamplerSpec, patches=None) -> ModelDenoiser:
        """``denoiser(x, sigma, cond, image_cond, info) -> x0`` of this model for ``entry`` (LCM's scalings)."""
        return ModelDenoiser(self.model.unet, self.sampling_schedule(entry), self.model.prediction.kind, patches,
                             lcm_stride=entry.lcm_stride(self.schedule))

    def prompt_encoder(self, request: GenerationRequest, embeddings: EmbeddingDatabase | None = None,
                       hash_cache: Path | None = None) -> PromptEncoder:
        """The prompt encoder for ``request``: its prompt settings, clip skip and (SDXL) size conditioning."""
        given = {key: getattr(request, key) for key in PROMPT_SETTINGS if getattr(request, key) is not None}
        options = PromptOptions(clip_skip=request.clip_skip, **given)
        sizes = SizeConditioning.for_image(request.width, request.height, original_size=request.original_size,
                                           crops_coords_top_left=request.crops_coords_top_left,
                                           target_size=request.target_size)
        return PromptEncoder(self.text_encoders, embeddings, options, hash_cache, vector_kind=self.family.vector,
                             sizes=sizes)

    @staticmethod
    def conditioning(encoder: PromptEncoder, request: GenerationRequest, model_calls: int, *,
                     first_pass_steps: int | None = None) -> Conditioning:
        """The request's prompts (``<kind:...>`` tags removed) scheduled over ``model_calls``;
        ``first_pass_steps``: hires fix's second pass (prompt editing counts on across the passes)."""
        prompt, _ = extra_network_tags(request.prompt)
        uncond = encoder.schedule(request.negative_prompt, model_calls, negative=True,
                                  first_pass_steps=first_pass_steps)
        cond = encoder.multicond(prompt, model_calls, first_pass_steps=first_pass_steps)
        empty = encoder.encode([""])[0] if request.pad_cond_uncond else None
        return Conditioning(cond, uncond, empty)
