"""An A1111 request body (``/sdapi/v1/txt2img`` / ``img2img``, or ``--request FILE.json``) -> a ``JobSpec``.

A1111's rules: ``infotext`` fills the fields the body did not set; the sampler is ``sampler_name``, else the
old ``sampler_index``; ``override_settings`` holds the prompt settings, clip skip, the checkpoint and the VAE;
a refiner without a switch point runs from the first step; hires fix's fields count only with ``enable_hr``,
where ``denoising_strength`` is the second pass's. Fields A1111 has that this server does not act on are
refused by name (``unsupported``).
"""
from __future__ import annotations

from ...engine import images as im
from ...engine.request import SETTING_FIELDS, GenerationRequest
from ...options import OPTIONS, coerce_option
from ..spec import ExtensionArgs, JobSpec, Limits, ScriptChoice
from . import Requests
from .body import Img2ImgRequest, Txt2ImgRequest
from .fields import fields_from_infotext

class ImageTooLarge(ValueError):
    """An input image beyond the pixel limit (the API answers 413)."""


def unsupported(body: Txt2ImgRequest, img2img: bool) -> list[str]:
    """Request fields A1111 has that this server does not act on, set to a value that would change what A1111
    makes (``tests/test_api_fields.py`` walks the schema)."""
    problems = []
    if body.enable_hr and img2img:
        problems.append("enable_hr: hires fix is a txt2img feature")
    if body.restore_faces:
        problems.append("restore_faces is not supported: no face restoration model can be loaded here")
    if body.s_min_uncond:
        problems.append("s_min_uncond (skipping the negative prompt at low sigmas) is not supported")
    if body.firstphase_width or body.firstphase_height:
        problems.append("firstphase_width / firstphase_height are A1111's old hires-fix fields; use hr_scale or "
                        "hr_resize_x / hr_resize_y")
    if body.comments:
        problems.append("comments are not supported")
    if img2img:
        if body.init_images and len(body.init_images) > 1:
            problems.append(f"init_images: one image per request is supported (got {len(body.init_images)})")
        if not body.mask_round:
            problems.append("mask_round: false is not supported (masks are rounded, as A1111's default)")
        if body.mask_blur is None and body.mask_blur_x != body.mask_blur_y:
            problems.append("mask_blur_x and mask_blur_y differ: one blur for both axes is supported "
                            f"(got {body.mask_blur_x} and {body.mask_blur_y}); set mask_blur")
    return problems


def decode_image(data: str, what: str, limits: Limits):
    """base64 or ``data:image/...;base64,`` -> PIL image (ValueError; ``ImageTooLarge`` past the pixel limit).
    URLs are never fetched."""
    try:
        return im.decode_base64(data, what, limits.max_image_pixels)
    except im.ImageInputError as exc:
        raise (ImageTooLarge if exc.too_large else ValueError)(str(exc)) from None


def with_infotext(body: Txt2ImgRequest) -> Txt2ImgRequest:
    """A1111's ``infotext`` field: the parameters it names fill the fields the request did not set."""
    given = body.model_fields_set
    fields = fields_from_infotext(body.infotext)
    names = ("prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "cfg_scale", "seed", "width",
             "height", "denoising_strength")
    changes = {name: fields[name] for name in names if name in fields and name not in given}
    if "clip_skip" in fields and fields["clip_skip"] != 1 and "CLIP_stop_at_last_layers" not in (
            body.override_settings or {}):
        changes["override_settings"] = {**(body.override_settings or {}),
                                        "CLIP_stop_at_last_layers": fields["clip_skip"]}
    return body.model_copy(update=changes)


def job_from_body(requests: Requests, body: Txt2ImgRequest, kind: str, limits: Limits, *, owner: str = "api",
                  resumable: bool = True, save: bool | None = None) -> JobSpec:
    """The body as a job (``kind``: txt2img or img2img). ``save``: None follows the body (A1111's API saves only
    with ``save_images``); a resumed task passes True (its client is gone)."""
    img2img = kind == "img2img"
    if body.infotext:
        body = with_infotext(body)
    problems = unsupported(body, img2img)
    if problems:
        raise ValueError("; ".join(problems))
    overrides = dict(body.override_settings or {})
    unknown = [k for k in overrides if k not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown override_settings: {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    try:   # every value is checked before the job is queued (the model and VAE by name, in Requests.job)
        settings = {key: coerce_option(key, value) for key, value in overrides.items()
                    if key not in ("sd_model_checkpoint", "sd_vae")}
    except ValueError as exc:
        raise ValueError(f"override_settings: {exc}") from None
    prompt_settings = {key: settings[key] for key in SETTING_FIELDS if key in settings}
    clip_skip = settings.get("CLIP_stop_at_last_layers", requests.options["CLIP_stop_at_last_layers"])
    sizes = {key: tuple(getattr(body, key)) for key in ("original_size", "crops_coords_top_left", "target_size")
             if getattr(body, key) is not None}
    request = GenerationRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt,
        sampler_name=body.sampler_name or body.sampler_index or "Euler", scheduler=body.scheduler or "automatic",
        steps=body.steps, cfg_scale=body.cfg_scale, seed=body.seed, width=body.width, height=body.height,
        batch_size=body.batch_size, n_iter=body.n_iter, clip_skip=clip_skip, refiner_checkpoint=body.refiner_checkpoint,
        subseed=body.subseed, disable_extra_networks=body.disable_extra_networks, tiling=bool(body.tiling),
        subseed_strength=body.subseed_strength, seed_resize_from_w=body.seed_resize_from_w,
        seed_resize_from_h=body.seed_resize_from_h, eta=body.eta, s_churn=body.s_churn, s_tmin=body.s_tmin,
        s_tmax=body.s_tmax, s_noise=body.s_noise,
        # A1111: no switch point given means the refiner runs from the first step
        refiner_switch_at=0.0 if body.refiner_switch_at is None else body.refiner_switch_at,
        **_hires_fields(body), **_img2img_fields(body, limits, img2img), **sizes, **prompt_settings)
    script = ScriptChoice(body.script_name, tuple(body.script_args or ())) if body.script_name else None
    return requests.job(
        request, kind, checkpoint=str(overrides["sd_model_checkpoint"]) if "sd_model_checkpoint" in overrides else None,
        vae=str(overrides["sd_vae"]) if "sd_vae" in overrides else None, styles=list(body.styles or []), script=script,
        extension_args=ExtensionArgs(api=dict(body.alwayson_scripts or {})),
        save=(bool(body.save_images) and not body.do_not_save_samples) if save is None else save,
        save_grid=False if body.do_not_save_grid else None, owner=owner, limits=limits, resumable=resumable)


def _hires_fields(body: Txt2ImgRequest) -> dict:
    """Hires fix's fields (only with ``enable_hr``, as in A1111; ``unsupported`` refuses it for img2img).
    ``denoising_strength`` of a txt2img request is the second pass's (A1111's API default 0.75)."""
    if not body.enable_hr:
        return {}
    return dict(
        enable_hr=True, hr_scale=body.hr_scale, hr_upscaler=body.hr_upscaler or None,
        hr_second_pass_steps=body.hr_second_pass_steps, hr_resize_x=body.hr_resize_x, hr_resize_y=body.hr_resize_y,
        hr_sampler_name=body.hr_sampler_name, hr_scheduler=body.hr_scheduler,
        hr_prompt=body.hr_prompt, hr_negative_prompt=body.hr_negative_prompt,
        hr_checkpoint_name=body.hr_checkpoint_name,
        denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength)


def _img2img_fields(body: Txt2ImgRequest, limits: Limits, img2img: bool) -> dict:
    if not img2img:
        return {}
    assert isinstance(body, Img2ImgRequest)
    if not body.init_images:
        raise ValueError("init_images: at least one image is needed")
    fields = dict(
        init_image=decode_image(body.init_images[0], "init_images[0]", limits),
        denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength,
        resize_mode=body.resize_mode, mask_blur=body.mask_blur if body.mask_blur is not None else body.mask_blur_x,
        inpainting_fill=body.inpainting_fill, inpaint_full_res=bool(body.inpaint_full_res),
        inpaint_full_res_padding=body.inpaint_full_res_padding,
        inpainting_mask_invert=bool(body.inpainting_mask_invert),
        initial_noise_multiplier=1.0 if body.initial_noise_multiplier is None else body.initial_noise_multiplier)
    if body.mask:
        fields["mask"] = decode_image(body.mask, "mask", limits)
    if body.latent_mask:
        fields["latent_mask"] = decode_image(body.latent_mask, "latent_mask", limits)
    return fields
