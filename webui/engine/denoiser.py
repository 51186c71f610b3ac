"""From the UNet's eps prediction to k-diffusion's ``denoiser(x, sigma) -> x0``, with CFG.

The sampling loop works in k-diffusion's parametrisation: ``x = x0 + sigma * noise``. The UNet sees
``x / sqrt(sigma^2 + 1)`` and the (fractional) timestep ``t(sigma)`` (Karras et al. 2022, "CompVis"
denoiser). Latents stay float32; only the UNet's inputs are cast to its dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .cond import Cond
from .patches import CallInfo
from .sampling.schedules import DiscreteSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplingState:
    """Where the sampler is, for hooks: A1111's ``state.sampling_step`` (the last finished step, 0 at first)
    and the number of steps of the run; ``calls``: model calls made so far (A1111's ``CFGDenoiser.step``);
    ``steps_reported``: steps whose first model call is done (the sampler's callbacks so far)."""
    sampling_step: int = 0
    total_steps: int = 0
    calls: int = 0
    steps_reported: int = 0


class ModelDenoiser:
    """Wraps a UNet: ``model(x, sigma, cond, image_cond, info) -> x0`` (eps or v prediction); ``cond`` is a
    ``Cond`` (its ``crossattn`` is the UNet's context, its ``vector`` the UNet's ``y``) or a bare context tensor.

    ``patches`` (a job's ``JobPatches``): residual providers and block wrappers reach the UNet through
    ``UNetExtras``; UNet wrappers are called as ``w(apply, x, t, cond, extras)``.

    ``lcm_stride``: run as a latent consistency model (A1111's ``LCMCompVisDenoiser``): ``schedule`` is then
    the sub-schedule of LCM's original timesteps (``DiscreteSchedule.every(stride)``), a sigma is mapped to
    the nearest of them (model timestep ``index * stride + stride - 1``), and the clean estimate gets LCM's
    boundary scalings: ``c_skip * x + c_out * x0`` with ``c_skip = 0.25 / (T^2 + 0.25)``,
    ``c_out = T / sqrt(T^2 + 0.25)``, ``T = 10 * timestep`` (sigma_data 0.5)."""

    def __init__(self, unet: torch.nn.Module, schedule: DiscreteSchedule, prediction: str = "eps", patches=None,
                 lcm_stride: int | None = None):
        if prediction not in ("eps", "v"):
            raise ValueError(f"unknown prediction type {prediction!r}")
        self.unet, self.schedule, self.prediction, self.patches = unet, schedule, prediction, patches
        self.lcm_stride = lcm_stride
        self.dtype = getattr(unet, "dtype", None) or next(unet.parameters()).dtype   # compute dtype (fp8 storage)

    def _unet(self, model_in, t, cond: Cond, info):
        def apply(x, t, cond, extras):
            args = (x.to(self.dtype), t, cond.crossattn.to(self.dtype))
            kwargs = {} if cond.vector is None else {"y": cond.vector.to(self.dtype)}
            if extras is not None:      # any eps model works without extras; only our UNet takes them
                kwargs["extras"] = extras
            return self.unet(*args, **kwargs)
        patches = self.patches
        if patches is None:
            return apply(model_in, t, cond, None)
        for wrapper in reversed(patches.unet_wrappers):
            apply = _wrap_unet(wrapper, apply)
        return apply(model_in, t, cond, patches.unet_extras(model_in, t, cond, info))

    def __call__(self, x, sigma, cond, image_cond=None, info=None):
        cond = cond if isinstance(cond, Cond) else Cond(cond)
        sigma = sigma.to(x.dtype)
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        c_in = 1.0 / (s**2 + 1.0).sqrt()
        model_in = x * c_in
        if image_cond is not None:
            model_in = torch.cat([model_in, image_cond.to(x.dtype)], dim=1)
        t = self.schedule.sigma_to_t(sigma)
        if self.lcm_stride is not None:
            t = (t * self.lcm_stride + (self.lcm_stride - 1)).to(x.dtype)
        out = self._unet(model_in, t, cond, info).to(x.dtype)
        if self.prediction == "v":
            x0 = x * (1.0 / (s**2 + 1.0)) - out * s * c_in
        else:
            x0 = x - out * s
        if self.lcm_stride is None:
            return x0
        scaled = (t * 10.0).view(-1, *([1] * (x.ndim - 1)))
        return x * (0.25 / (scaled**2 + 0.25)) + x0 * (scaled / (scaled**2 + 0.25).sqrt())


def _wrap_unet(wrapper, inner):
    return lambda x, t, cond, extras: wrapper(inner, x, t, cond, extras)


def _wrap_model(wrapper, inner):
    return lambda x, sigma, cond, image_cond, info: wrapper(
        lambda x, sigma, cond: inner(x, sigma, cond, image_cond, info), x, sigma, cond, info)


def cfg_denoiser(model: ModelDenoiser, cond, uncond, cfg_scale: float, *, image_cond=None,
                 check: Callable[[], None] | None = None, empty: torch.Tensor | None = None,
                 patches=None, state: SamplingState | None = None) -> Denoiser:
    """Classifier-free guidance over scheduled, composable conditioning, as A1111's ``CFGDenoiser``.

    ``cond``: a ``MultiCond`` (``at(call) -> (Cond [parts, T, D], weights)``); ``uncond``: a ``CondSchedule``
    (``at(call) -> Cond [T, D]``). ``call`` counts model calls from 0 (A1111's ``step``; kept in ``state``, so
    denoisers sharing a state -- the base model's and the refiner's -- share the count). Each image's parts
    and then the uncond rows go through the model; the result is
    ``uncond + sum_j (cond_j - uncond) * weight_j * scale``. Cond and uncond of different lengths run as
    two batches, or as one when ``empty`` (the empty prompt's [77, D]) is given to pad the shorter
    (A1111's "pad prompt/negative prompt" setting). With ``cfg_scale == 1`` and one part of weight 1 the
    uncond half is not computed. ``check`` runs before every model call (interrupt / skip).
    ``patches``: a job's ``JobPatches`` (model wrappers around each model call, functions after CFG);
    ``state``: the sampler's position, for the ``CallInfo`` hooks receive.
    """
    state = state or SamplingState()
    call_model = model
    for wrapper in reversed(patches.model_wrappers if patches is not None else []):
        call_model = _wrap_model(wrapper, call_model)

    built: dict = {}

    def contexts(conds: Cond, u: Cond, batch: int):
        """The cond rows (each image's parts), the uncond rows, and both in one batch when their lengths match
        (padded when asked); built once per pair of schedule entries (the schedules hand back the same
        objects), not on every model call."""
        key = (id(conds), id(u), batch)
        if key not in built:
            c_len, u_len, parts = conds.tokens, u.tokens, conds.crossattn.shape[0]
            if empty is not None and c_len != u_len:
                repeats = (max(c_len, u_len) - min(c_len, u_len)) // empty.shape[0]
                if u_len < c_len:
                    u = Cond(torch.cat([u.crossattn, empty.repeat(repeats, 1)]), u.vector)
                else:
                    padding = empty.repeat(repeats, 1).expand(parts, -1, -1)
                    conds = Cond(torch.cat([conds.crossattn, padding], dim=1), conds.vector)
            c_rows, u_rows = conds.repeat_batch(batch), u.expand_batch(batch)
            joined = Cond.cat([c_rows, u_rows]) if c_rows.tokens == u_rows.tokens else None
            built[key] = (c_rows, u_rows, joined)
        return built[key]

    def run(x, sigma, rows: Cond, image_cond, step, uncond_rows):
        info = CallInfo(step, state.sampling_step, state.total_steps, uncond_rows)
        return call_model(x, sigma, rows, image_cond, info)

    def denoise(x, sigma):
        out = combine(x, sigma)
        if patches is not None and patches.after_cfg:
            info = CallInfo(state.calls - 1, state.sampling_step, state.total_steps, [])
            for after in patches.after_cfg:
                out = after(out, x, sigma, info)
        return out

    def combine(x, sigma):
        if check is not None:
            check()
        step = state.calls
        state.calls += 1
        conds, weights = cond.at(step)
        batch, parts = x.shape[0], conds.crossattn.shape[0]
        if cfg_scale == 1.0 and weights == [1.0]:
            return run(x, sigma, conds.map(lambda t: t.expand(batch, *t.shape[1:])), image_cond, step,
                       [False] * batch)
        c_rows, u_rows, joined = contexts(conds, uncond.at(step), batch)
        x_c, sigma_c = x.repeat_interleave(parts, 0), sigma.repeat_interleave(parts, 0)
        ic_c = None if image_cond is None else image_cond.repeat_interleave(parts, 0)
        if joined is not None:
            out = run(torch.cat([x_c, x]), torch.cat([sigma_c, sigma]), joined,
                      None if image_cond is None else torch.cat([ic_c, image_cond]), step,
                      [False] * (batch * parts) + [True] * batch)
            out_c, out_u = out[:batch * parts], out[batch * parts:]
        else:
            out_c = run(x_c, sigma_c, c_rows, ic_c, step, [False] * (batch * parts))
            out_u = run(x, sigma, u_rows, image_cond, step, [True] * batch)
        out_c = out_c.view(batch, parts, *out_c.shape[1:])
        denoised = out_u.clone()
        for j, weight in enumerate(weights):
            denoised += (out_c[:, j] - out_u) * (weight * cfg_scale)
        return denoised
    return denoise


class SwitchingDenoiser:
    """``first`` until the sampler reaches a sigma where ``switch_at[k]`` is true, then ``second`` for good
    (the refiner: the same sampler state, another model); ``switched`` says whether it happened. ``k`` is the
    number of steps the sampler has reported (``state.steps_reported``): the index of the schedule sigma the
    call is made at for the first call of a step and for a second-order sampler's call at the next sigma.
    Decided on the host: no sync."""

    def __init__(self, first: Denoiser, second: Denoiser, switch_at: list[bool], state: SamplingState):
        self.first, self.second, self.switch_at, self.state = first, second, switch_at, state
        self.switched = False

    def __call__(self, x, sigma):
        if not self.switched and self.switch_at[min(self.state.steps_reported, len(self.switch_at) - 1)]:
            self.switched = True
        return (self.second if self.switched else self.first)(x, sigma)


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
