"""From the UNet's eps prediction to k-diffusion's ``denoiser(x, sigma) -> x0``, with CFG.

The sampling loop works in k-diffusion's parametrisation: ``x = x0 + sigma * noise``. The UNet sees
``x / sqrt(sigma^2 + 1)`` and the (fractional) timestep ``t(sigma)`` (Karras et al. 2022, "CompVis"
denoiser). Latents stay float32; only the UNet's inputs are cast to its dtype.
"""
from __future__ import annotations

from typing import Callable

import torch

from .sampling.schedules import DiscreteSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ModelDenoiser:
    """Wraps a UNet: ``model(x, sigma, context, image_cond) -> x0`` (eps or v prediction)."""

    def __init__(self, unet: torch.nn.Module, schedule: DiscreteSchedule, prediction: str = "eps"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"unknown prediction type {prediction!r}")
        self.unet, self.schedule, self.prediction = unet, schedule, prediction
        self.dtype = next(unet.parameters()).dtype

    def __call__(self, x, sigma, context, image_cond=None):
        sigma = sigma.to(x.dtype)
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        c_in = 1.0 / (s**2 + 1.0).sqrt()
        model_in = x * c_in
        if image_cond is not None:
            model_in = torch.cat([model_in, image_cond.to(x.dtype)], dim=1)
        t = self.schedule.sigma_to_t(sigma)
        out = self.unet(model_in.to(self.dtype), t, context.to(self.dtype)).to(x.dtype)
        if self.prediction == "v":
            return x * (1.0 / (s**2 + 1.0)) - out * s * c_in
        return x - out * s


def cfg_denoiser(model: ModelDenoiser, cond, uncond, cfg_scale: float, *, image_cond=None,
                 check: Callable[[], None] | None = None) -> Denoiser:
    """Classifier-free guidance: ``uncond + (cond - uncond) * scale``, cond and uncond in one batch.

    With ``cfg_scale == 1`` the unconditional half is not computed (the result is the same).
    ``check`` runs before every model call (interrupt / skip).
    """
    def denoise(x, sigma):
        if check is not None:
            check()
        if cfg_scale == 1.0:
            return model(x, sigma, cond, image_cond)
        both = model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]),
                     None if image_cond is None else torch.cat([image_cond, image_cond]))
        c, u = both.chunk(2)
        return u + (c - u) * cfg_scale
    return denoise


def masked_denoiser(denoiser: Denoiser, init_latent, keep_mask) -> Denoiser:
    """Inpainting with a normal model: keep the known region of the prediction (A1111's latent blend)."""
    def denoise(x, sigma):
        return init_latent * keep_mask + (1.0 - keep_mask) * denoiser(x, sigma)
    return denoise


def masked_model_input(denoiser, init_latent, keep_mask):
    """Inpainting with A1111's timestep samplers (``mask_before_denoising``): the model sees the VP
    latent with the kept region replaced by the clean init latent, while the sampler's own ``x`` is
    left as is. In the engine's form (``x = x_vp * sqrt(1 + sigma^2)``) the x0 A1111 derives is
    ``x - sigma * eps(blended)`` = ``denoiser(blended) + (x - blended)``."""
    def denoise(x, sigma):
        scale = (1.0 + sigma**2).sqrt().view(-1, *([1] * (x.ndim - 1)))
        blended = x * (1.0 - keep_mask) + init_latent * scale * keep_mask
        return denoiser(blended, sigma) + (x - blended)
    return denoise
