"""The one check every request passes, whatever the interface: the limits of the interface it came from, then
the sampler names, then the engine's own invariants (``GenerationRequest.validate``). A script's planned runs
pass it too (``ScriptEnvironment.check``).
"""
from __future__ import annotations

from ...engine.request import GenerationRequest
from ...engine.sampling import registry
from ..spec import Limits

MAX_SEED_VALUE = 2**64 - 1   # the largest seed a torch generator takes


def check_limits(request: GenerationRequest, limits: Limits) -> None:
    """ValueError naming every field beyond ``limits`` (fields the limits leave unbounded are not checked), or a
    seed no generator can take."""
    lim, problems = limits, []
    if lim.max_size is not None:
        for name in ("width", "height"):
            value = getattr(request, name)
            if value % 8 or not 64 <= value <= lim.max_size:
                problems.append(f"{name} must be a multiple of 8 within 64..{lim.max_size} (got {value})")
    if lim.max_steps is not None and not 1 <= request.steps <= lim.max_steps:
        problems.append(f"steps must be within 1..{lim.max_steps} (got {request.steps})")
    if lim.max_batch_size is not None and not 1 <= request.batch_size <= lim.max_batch_size:
        problems.append(f"batch_size must be within 1..{lim.max_batch_size} (got {request.batch_size})")
    if lim.max_images is not None and (request.n_iter < 1 or request.batch_size * request.n_iter > lim.max_images):
        problems.append(f"batch_size x n_iter must be within 1..{lim.max_images} "
                        f"(got {request.batch_size} x {request.n_iter})")
    if lim.max_cfg_scale is not None and not 0.0 <= request.cfg_scale <= lim.max_cfg_scale:
        problems.append(f"cfg_scale must be within 0..{lim.max_cfg_scale:g} (got {request.cfg_scale})")
    if lim.max_prompt_chars is not None:
        for name in ("prompt", "negative_prompt"):
            if len(getattr(request, name)) > lim.max_prompt_chars:
                problems.append(f"{name} is longer than {lim.max_prompt_chars} characters")
    if request.init_image is not None:
        if lim.max_mask_blur is not None and not 0 <= request.mask_blur <= lim.max_mask_blur:
            problems.append(f"mask_blur (mask_blur_x, mask_blur_y) must be within 0..{lim.max_mask_blur} "
                            f"(got {request.mask_blur})")
        if request.inpaint_full_res_padding < 0:
            problems.append(f"inpaint_full_res_padding must be 0 or more (got {request.inpaint_full_res_padding})")
    images = request.batch_size * request.n_iter
    for name in ("seed", "subseed"):     # image i gets seed + i; torch's generators take up to 2^64 - 1
        value = getattr(request, name)
        if value is not None and value + images - 1 > MAX_SEED_VALUE:
            problems.append(f"{name} must be -1 (random) or at most {MAX_SEED_VALUE - images + 1} "
                            f"for {images} image(s) (got {value})")
    if request.enable_hr:
        problems += _hires_limits(request, lim)
    if problems:
        raise ValueError("; ".join(problems))


def _hires_limits(request: GenerationRequest, lim: Limits) -> list[str]:
    from ...engine.upscale import hires_target
    problems = []
    if lim.max_steps is not None and request.hr_second_pass_steps > lim.max_steps:
        problems.append(f"hr_second_pass_steps must be within 0..{lim.max_steps} (got {request.hr_second_pass_steps})")
    if lim.max_size is not None and 1.0 <= request.hr_scale <= 8.0 and min(request.width, request.height) >= 64:
        target = hires_target(request.width, request.height, request.hr_scale, request.hr_resize_x,
                              request.hr_resize_y)
        if max(target.width, target.height) > lim.max_size:
            problems.append(f"hires fix would make {target.width}x{target.height} images; the largest side may be "
                            f"{lim.max_size} (hr_scale, hr_resize_x, hr_resize_y)")
    return problems


def check(request: GenerationRequest, limits: Limits) -> None:
    """``check_limits``, the sampler and schedule type names (hires fix's too: the job would only find those out
    after its first pass), then ``request.validate()``. ValueError with the message for the user."""
    check_limits(request, limits)
    registry.resolve(request.sampler_name, request.scheduler)
    if request.enable_hr:
        try:
            registry.resolve(request.hr_sampler_name or request.sampler_name, request.hr_scheduler)
        except ValueError as exc:
            raise ValueError(f"hr_sampler_name / hr_scheduler: {exc}") from None
    request.validate()
