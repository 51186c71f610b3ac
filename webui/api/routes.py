"""A1111's ``/sdapi/v1`` over the ``Backend``: same paths, field names, defaults and response shapes.

Every generation is a job in the backend's one queue (shared with the UI); the route waits for its own
job and answers with base64 PNGs that carry the ``parameters`` chunk. Beyond A1111: per-task progress and
cancel (``/sdapi/v1/tasks/{id}``), since A1111's ``progress`` is global.
"""
from __future__ import annotations

import datetime
import html
import json
from dataclasses import dataclass

from fastapi import APIRouter, Body, HTTPException
from PIL import Image

from .. import __version__
from ..engine import images as im
from ..engine.pipeline import SETTING_FIELDS, GenerationRequest
from ..engine.sampling import registry
from ..jobs import infotext, saving
from ..jobs.backend import Backend
from ..jobs.queue import DONE, FAILED, RUNNING, DuplicateJobId
from ..options import OPTIONS, coerce_option
from . import schemas


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (4xx beyond it)."""
    max_size: int = 2048              # width / height
    max_steps: int = 150
    max_images: int = 64              # batch_size x n_iter
    max_script_images: int = 400      # every image one script (X/Y/Z plot, prompt matrix ...) generates
    max_batch_size: int = 16
    max_prompt_chars: int = 20_000
    max_body_bytes: int = 64 * 2**20  # the whole request
    max_image_pixels: int = 4096 * 4096


MAX_MASK_BLUR = 64           # A1111's "Mask blur" slider
MAX_SEED_VALUE = 2**64 - 1   # the largest seed a torch generator takes


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON", 404: "Not found", 409: "Conflict with the task's or the server's state",
    413: "An image or the body is too large", 422: "A field is invalid: the message names it",
    500: "The model could not be loaded, or the generation failed"}


def error_responses(*codes: int) -> dict:
    """The error answers a route declares in the OpenAPI (``responses=``): all ``{"detail": ...}``."""
    return {code: {"model": schemas.ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def decode_image(data: str, what: str, limits: Limits) -> Image.Image:
    """base64 or ``data:image/...;base64,`` -> PIL image (422, or 413 when too large). URLs are never fetched."""
    try:
        return im.decode_base64(data, what, limits.max_image_pixels)
    except im.ImageInputError as exc:
        raise _error(413 if exc.too_large else 422, str(exc)) from None


def encode_png(image: Image.Image, text: str | None) -> str:
    return saving.png_base64(image, text)


# Request fields A1111 has that this server does not act on yet: refused with a 422 naming them whenever they
# are set to a value that would change what A1111 makes (``tests/test_api_fields.py`` walks the schema).
def unsupported(body, img2img: bool) -> list[str]:
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


class Api:
    """Builds the router; ``cmd_flags`` is what ``GET cmd-flags`` reports."""

    def __init__(self, backend: Backend, limits: Limits | None = None, cmd_flags: dict | None = None):
        self.backend, self.limits, self.cmd_flags = backend, limits or Limits(), cmd_flags or {}

    # ---- request -> job ------------------------------------------------------------------------
    def _checkpoint_name(self, title: str) -> str:
        try:
            return self.backend.find_checkpoint(title)
        except ValueError as exc:
            raise _error(422, str(exc)) from None

    def _vae_name(self, choice: str) -> str:
        try:
            return self.backend.check_vae(choice)
        except ValueError as exc:
            raise _error(422, str(exc)) from None

    def _request(self, body: schemas.Txt2ImgRequest, img2img: bool) -> tuple[GenerationRequest, dict]:
        lim = self.limits
        if body.infotext:
            body = self._with_infotext(body)
        problems = unsupported(body, img2img)
        for name in ("width", "height"):
            value = getattr(body, name)
            if value % 8 or not 64 <= value <= lim.max_size:
                problems.append(f"{name} must be a multiple of 8 within 64..{lim.max_size} (got {value})")
        if not 1 <= body.steps <= lim.max_steps:
            problems.append(f"steps must be within 1..{lim.max_steps} (got {body.steps})")
        if not 1 <= body.batch_size <= lim.max_batch_size:
            problems.append(f"batch_size must be within 1..{lim.max_batch_size} (got {body.batch_size})")
        if body.n_iter < 1 or body.batch_size * body.n_iter > lim.max_images:
            problems.append(f"batch_size x n_iter must be within 1..{lim.max_images} "
                            f"(got {body.batch_size} x {body.n_iter})")
        if not 0.0 <= body.cfg_scale <= 100.0:
            problems.append(f"cfg_scale must be within 0..100 (got {body.cfg_scale})")
        for name in ("prompt", "negative_prompt"):
            if len(getattr(body, name)) > lim.max_prompt_chars:
                problems.append(f"{name} is longer than {lim.max_prompt_chars} characters")
        if img2img:
            blurs = ["mask_blur"] if body.mask_blur is not None else ["mask_blur_x", "mask_blur_y"]
            for name in blurs:
                if not 0 <= getattr(body, name) <= MAX_MASK_BLUR:
                    problems.append(f"{name} must be within 0..{MAX_MASK_BLUR} (got {getattr(body, name)})")
            if body.inpaint_full_res_padding < 0:
                problems.append(f"inpaint_full_res_padding must be 0 or more (got {body.inpaint_full_res_padding})")
        if problems:
            raise _error(422, "; ".join(problems))
        sampler = body.sampler_name or body.sampler_index or "Euler"
        try:
            spec, scheduler = registry.resolve(sampler, body.scheduler)
        except ValueError as exc:
            raise _error(422, str(exc)) from None
        overrides = dict(body.override_settings or {})
        unknown = [k for k in overrides if k not in OPTIONS]
        if unknown:
            raise _error(422, f"unknown override_settings: {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        try:   # every value is checked before the job is queued (the model and VAE by name, below)
            settings = {key: coerce_option(key, value) for key, value in overrides.items()
                        if key not in ("sd_model_checkpoint", "sd_vae")}
        except ValueError as exc:
            raise _error(422, f"override_settings: {exc}") from None
        prompt_settings = {key: settings[key] for key in ("CLIP_stop_at_last_layers", *SETTING_FIELDS)
                           if key in settings}
        clip_skip = prompt_settings.pop("CLIP_stop_at_last_layers", self.backend.options["CLIP_stop_at_last_layers"])
        refiner = body.refiner_checkpoint if body.refiner_checkpoint not in (None, "", "None", "none") else None
        if refiner is not None:
            refiner = self._checkpoint_name(refiner)
        sizes = {key: tuple(getattr(body, key)) for key in ("original_size", "crops_coords_top_left", "target_size")
                 if getattr(body, key) is not None}
        request = GenerationRequest(
            prompt=body.prompt, negative_prompt=body.negative_prompt, sampler_name=sampler,
            scheduler=body.scheduler or "automatic", steps=body.steps, cfg_scale=body.cfg_scale, seed=body.seed,
            width=body.width, height=body.height, batch_size=body.batch_size, n_iter=body.n_iter,
            clip_skip=clip_skip, refiner_checkpoint=refiner, subseed=body.subseed,
            disable_extra_networks=body.disable_extra_networks, tiling=bool(body.tiling), **self._hires_fields(body),
            subseed_strength=body.subseed_strength, seed_resize_from_w=body.seed_resize_from_w,
            seed_resize_from_h=body.seed_resize_from_h, eta=body.eta, s_churn=body.s_churn, s_tmin=body.s_tmin,
            s_tmax=body.s_tmax, s_noise=body.s_noise,
            # A1111: no switch point given means the refiner runs from the first step
            refiner_switch_at=0.0 if body.refiner_switch_at is None else body.refiner_switch_at,
            **sizes, **prompt_settings)
        if img2img:
            assert isinstance(body, schemas.Img2ImgRequest)
            if not body.init_images:
                raise _error(422, "init_images: at least one image is needed")
            request.init_image = decode_image(body.init_images[0], "init_images[0]", lim)
            if body.mask:
                request.mask = decode_image(body.mask, "mask", lim)
            if body.latent_mask:
                request.latent_mask = decode_image(body.latent_mask, "latent_mask", lim)
            request.denoising_strength = 0.75 if body.denoising_strength is None else body.denoising_strength
            request.resize_mode = body.resize_mode
            request.mask_blur = body.mask_blur if body.mask_blur is not None else body.mask_blur_x
            request.inpainting_fill = body.inpainting_fill
            request.inpaint_full_res = bool(body.inpaint_full_res)
            request.inpaint_full_res_padding = body.inpaint_full_res_padding
            request.inpainting_mask_invert = bool(body.inpainting_mask_invert)
            request.initial_noise_multiplier = (1.0 if body.initial_noise_multiplier is None
                                                else body.initial_noise_multiplier)
        try:
            request.validate()
            self._check_run(request)
        except ValueError as exc:
            raise _error(422, str(exc)) from None
        target = {}
        if body.alwayson_scripts:
            extensions = self.backend.extensions
            try:
                if extensions is None:
                    raise ValueError("no extensions are loaded; got alwayson_scripts "
                                     + ", ".join(map(repr, body.alwayson_scripts)))
                target["script_args"] = extensions.api_script_args(body.alwayson_scripts)
            except ValueError as exc:
                raise _error(422, str(exc)) from None
        if body.script_name:
            target["script"] = self._script(body, "img2img" if img2img else "txt2img")
        if "sd_model_checkpoint" in overrides:
            target["checkpoint"] = self._checkpoint_name(str(overrides["sd_model_checkpoint"]))
        if "sd_vae" in overrides:
            target["vae"] = self._vae_name(str(overrides["sd_vae"]))
        return request, target

    def _extras(self, body: schemas.ExtrasBaseRequest, image: Image.Image) -> tuple[str, str]:
        """One image through A1111's extras upscale: (base64 PNG, postprocessing text); 422 for what is not here."""
        import base64

        from ..engine.upscale import ExtrasUpscale
        from ..jobs import extras

        if body.gfpgan_visibility or body.codeformer_visibility:
            raise _error(422, "gfpgan_visibility / codeformer_visibility: face restoration is not available: no "
                              "GFPGAN or CodeFormer model can be loaded in this version")
        upscale = ExtrasUpscale(mode=body.resize_mode, scale=body.upscaling_resize, width=body.upscaling_resize_w,
                                height=body.upscaling_resize_h, crop=body.upscaling_crop, upscaler_1=body.upscaler_1,
                                upscaler_2=body.upscaler_2, visibility=body.extras_upscaler_2_visibility)
        try:
            result, info = extras.postprocess(image, upscale)
        except ValueError as exc:
            raise _error(422, str(exc)) from None
        return base64.b64encode(extras.png_bytes(result, info)).decode("ascii"), info

    def _hires_fields(self, body) -> dict:
        """Hires fix's request fields (only with ``enable_hr``, as in A1111; ``unsupported`` refuses it for
        img2img). ``denoising_strength`` of a txt2img request is the second pass's (A1111's API default 0.75)."""
        if not body.enable_hr:
            return {}
        checkpoint = body.hr_checkpoint_name
        if checkpoint in ("", "Use same checkpoint", "None"):
            checkpoint = None
        return dict(
            enable_hr=True, hr_scale=body.hr_scale, hr_upscaler=body.hr_upscaler or None,
            hr_second_pass_steps=body.hr_second_pass_steps, hr_resize_x=body.hr_resize_x, hr_resize_y=body.hr_resize_y,
            hr_sampler_name=None if body.hr_sampler_name in (None, "", "Use same sampler") else body.hr_sampler_name,
            hr_scheduler=None if body.hr_scheduler in (None, "", "Use same scheduler") else body.hr_scheduler,
            hr_prompt=body.hr_prompt, hr_negative_prompt=body.hr_negative_prompt,
            hr_checkpoint_name=None if checkpoint is None else self._checkpoint_name(checkpoint),
            denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength)

    def _script(self, body, kind: str) -> tuple:
        """``script_name`` / ``script_args`` -> (the script bound to this API's limits, its options); 422."""
        import dataclasses
        try:
            script = self.backend.scripts.find(body.script_name, kind)
            script = script.with_env(dataclasses.replace(script.env, check_request=self._check_run,
                                                         max_images=self.limits.max_script_images))
            return script, script.parse(body.script_args, kind)
        except ValueError as exc:
            raise _error(422, str(exc)) from None

    def _check_run(self, request: GenerationRequest) -> None:
        """The request limits, for each run a script plans (its axes may change size, steps, CFG)."""
        lim = self.limits
        for name in ("width", "height"):
            value = getattr(request, name)
            if not 64 <= value <= lim.max_size:
                raise ValueError(f"{name} must be within 64..{lim.max_size} (got {value})")
        if not 1 <= request.steps <= lim.max_steps:
            raise ValueError(f"steps must be within 1..{lim.max_steps} (got {request.steps})")
        if not 0.0 <= request.cfg_scale <= 100.0:
            raise ValueError(f"cfg_scale must be within 0..100 (got {request.cfg_scale})")
        images = request.batch_size * request.n_iter
        for name in ("seed", "subseed"):     # image i gets seed + i; torch's generators take up to 2^64 - 1
            value = getattr(request, name)
            if value is not None and value + images - 1 > MAX_SEED_VALUE:
                raise ValueError(f"{name} must be -1 (random) or at most {MAX_SEED_VALUE - images + 1} "
                                 f"for {images} image(s) (got {value})")
        if request.enable_hr:
            from ..engine.upscale import hires_target
            if request.hr_second_pass_steps > lim.max_steps:
                raise ValueError(f"hr_second_pass_steps must be within 0..{lim.max_steps} "
                                 f"(got {request.hr_second_pass_steps})")
            target = hires_target(request.width, request.height, request.hr_scale, request.hr_resize_x,
                                  request.hr_resize_y)
            if max(target.width, target.height) > lim.max_size:
                raise ValueError(f"hires fix would make {target.width}x{target.height} images; the largest side "
                                 f"may be {lim.max_size} (hr_scale, hr_resize_x, hr_resize_y)")
            try:   # the job would only find these out after its first pass
                registry.resolve(request.hr_sampler_name or request.sampler_name, request.hr_scheduler)
            except ValueError as exc:
                raise ValueError(f"hr_sampler_name / hr_scheduler: {exc}") from None

    def _with_infotext(self, body):
        """A1111's ``infotext`` field: the parameters it names fill the fields the request did not set."""
        from ..ui.mapping import fields_from_infotext
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

    def _submit(self, body: schemas.Txt2ImgRequest, img2img: bool, *, job_id: str | None = None,
                resumed: bool = False):
        """(the queued job, the engine's request). The job keeps the body (``payload``) so that the task can
        be submitted again after a restart. A resumed task has no client waiting: its images are saved."""
        request, target = self._request(body, img2img)
        kind = "img2img" if img2img else "txt2img"
        save = resumed or (bool(body.save_images) and not body.do_not_save_samples)
        script = target.pop("script", None)
        payload = {"route": kind, "body": body.model_dump(mode="json")}
        common = dict(kind=kind, owner="api", save=save, save_grid=False if body.do_not_save_grid else None,
                      job_id=job_id or body.force_task_id, styles=list(body.styles or []), payload=payload,
                      resumed=resumed, **target)
        if script is not None:
            return self.backend.submit_script(request, *script, **common), request
        return self.backend.submit(request, **common), request

    def resume(self, record) -> None:
        """Submit a stored task again after a restart (``JobQueue.recover``); raises what is wrong with it."""
        route, body = record.payload.get("route"), record.payload.get("body")
        model = {"txt2img": schemas.Txt2ImgRequest, "img2img": schemas.Img2ImgRequest}.get(route)
        if model is None or not isinstance(body, dict):
            raise ValueError(f"unknown stored task route {route!r}")
        try:
            self._submit(model.model_validate(body), route == "img2img", job_id=record.id, resumed=True)
        except HTTPException as exc:
            raise ValueError(str(exc.detail)) from None

    def _run(self, body: schemas.Txt2ImgRequest, img2img: bool) -> schemas.GenerationResponse:
        try:
            job, request = self._submit(body, img2img)
        except DuplicateJobId as exc:
            raise _error(409, str(exc)) from None
        except ValueError as exc:
            raise _error(422, str(exc)) from None
        job.wait()
        if job.state == FAILED:
            raise _error(500, f"generation failed: {job.error}")
        if job.state != DONE:
            raise _error(409, f"task {job.id} was {job.state}")
        out = job.result
        info = self._info(request, out, body, job.id)
        images = [encode_png(img, text) for img, text in zip(out.images, out.infotexts)] if body.send_images else []
        parameters = body.model_dump(mode="json")
        if img2img and not body.include_init_images:      # A1111: the echo leaves the input images out
            parameters["init_images"] = None
            parameters["mask"] = None
        if body.override_settings and not body.override_settings_restore_afterwards:
            self._keep_overrides(body.override_settings)
        return schemas.GenerationResponse(images=images, parameters=parameters, info=json.dumps(info))

    def _keep_overrides(self, overrides: dict) -> None:
        """``override_settings_restore_afterwards: false``: the job's overrides become the settings (A1111)."""
        kept = {key: coerce_option(key, value) for key, value in overrides.items()
                if key not in ("sd_model_checkpoint", "sd_vae")}
        if "sd_model_checkpoint" in overrides:
            kept["sd_model_checkpoint"] = self._checkpoint_name(str(overrides["sd_model_checkpoint"]))
        if "sd_vae" in overrides:
            kept["sd_vae"] = self._vae_name(str(overrides["sd_vae"]))
        self.backend.options.update(kept)

    def _info(self, request: GenerationRequest, out, body, job_id: str) -> dict:
        first = infotext.parse_typed(out.infotexts[0]) if out.infotexts else None
        # the model this job ran with: by the time its client is answered, a later job may have switched it
        model = out.model_info or self.backend.model_info
        return {
            "prompt": request.prompt, "all_prompts": out.prompts,
            "negative_prompt": request.negative_prompt, "all_negative_prompts": out.negative_prompts,
            "seed": out.seeds[0] if out.seeds else request.seed, "all_seeds": out.seeds,
            "subseed": out.subseeds[0] if out.subseeds else request.subseed, "all_subseeds": out.subseeds,
            "subseed_strength": request.subseed_strength,
            "width": request.width, "height": request.height,
            "sampler_name": first.sampler if first else request.sampler_name, "cfg_scale": request.cfg_scale,
            "steps": request.steps, "batch_size": request.batch_size, "restore_faces": False,
            "face_restoration_model": None, "sd_model_name": model.name if model else None,
            "sd_model_hash": model.hash if model else None, "sd_vae_name": model.vae_name if model else None,
            "sd_vae_hash": model.vae_hash if model else None, "seed_resize_from_w": request.seed_resize_from_w,
            "seed_resize_from_h": request.seed_resize_from_h,
            "denoising_strength": request.denoising_strength if request.init_image is not None else None,
            "extra_generation_params": {k: v for k, v in (first.extra if first else {}).items()},
            "index_of_first_image": out.index_of_first_image, "infotexts": out.infotexts,
            "styles": body.styles or [],
            "job_timestamp": datetime.datetime.now().strftime("%Y%m%d%H%M%S"), "clip_skip": request.clip_skip,
            "is_using_inpainting_conditioning": False, "version": __version__, "task_id": job_id,
            "interrupted": out.interrupted, "warnings": out.warnings,
        }

    # ---- progress ----------------------------------------------------------------------------
    def _preview(self, job) -> str | None:
        image = job.progress.preview if job is not None else None
        return encode_png(image, None) if image is not None else None

    def progress(self, skip_current_image: bool = False) -> schemas.ProgressResponse:
        queue = self.backend.queue
        job = queue.running
        pending = queue.pending()
        if job is None or job.kind == "load":
            return schemas.ProgressResponse(progress=0.0, eta_relative=0.0,
                                            state=schemas.ProgressState(job_count=len(pending)))
        p = job.progress
        state = schemas.ProgressState(interrupted=job.control.interrupted, job=job.id, job_count=1 + len(pending),
                                      job_timestamp=datetime.datetime.fromtimestamp(job.started or job.created)
                                      .strftime("%Y%m%d%H%M%S"), job_no=0, sampling_step=p.step,
                                      sampling_steps=p.total)
        return schemas.ProgressResponse(progress=p.fraction, eta_relative=job.eta or 0.0, state=state,
                                        current_image=None if skip_current_image else self._preview(job),
                                        textinfo=p.text or None, current_task=job.id)

    def task(self, task_id: str) -> schemas.TaskProgressResponse:
        job = self.backend.queue.get(task_id)
        if job is None:
            raise _error(404, f"no task {task_id!r}")
        p = job.progress
        progress = 1.0 if job.state == DONE else p.fraction
        saved = job.saved or {}
        return schemas.TaskProgressResponse(
            id=job.id, status=job.state, queue_position=self.backend.queue.position(job), progress=progress,
            eta_relative=job.eta if job.state == RUNNING else (0.0 if job.state == DONE else None),
            sampling_step=p.step, sampling_steps=p.total,
            current_image=self._preview(job) if job.state == RUNNING else None, error=job.error,
            files=saved.get("files"), infotexts=saved.get("infotexts"))

    # ---- the router ------------------------------------------------------------------------------
    def router(self) -> APIRouter:
        r = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
        backend, queue = self.backend, self.backend.queue

        @r.post("/txt2img", response_model=schemas.GenerationResponse,
                responses=error_responses(400, 409, 413, 422, 500))
        def txt2img(body: schemas.Txt2ImgRequest):
            return self._run(body, img2img=False)

        @r.post("/img2img", response_model=schemas.GenerationResponse,
                responses=error_responses(400, 409, 413, 422, 500))
        def img2img(body: schemas.Img2ImgRequest):
            return self._run(body, img2img=True)

        @r.get("/progress", response_model=schemas.ProgressResponse, responses=error_responses(422))
        def progress(skip_current_image: bool = False):
            return self.progress(skip_current_image)

        @r.get("/tasks/{task_id}", response_model=schemas.TaskProgressResponse,
               responses=error_responses(404, 422))
        def task(task_id: str):
            return self.task(task_id)

        @r.delete("/tasks/{task_id}", responses=error_responses(404, 409, 422))
        def cancel_task(task_id: str):
            job = queue.get(task_id)
            if job is None:
                raise _error(404, f"no task {task_id!r}")
            if not queue.cancel(task_id):
                raise _error(409, f"task {task_id!r} already {job.state}")
            return {"id": task_id, "status": job.state if job.state != RUNNING else "interrupting"}

        @r.post("/interrupt")
        def interrupt():
            job = queue.running
            if job is not None and job.kind != "load":
                queue.interrupt(job.id)
            return {}

        @r.post("/skip")
        def skip():
            job = queue.running
            if job is not None:
                queue.skip(job.id)
            return {}

        @r.post("/png-info", response_model=schemas.PngInfoResponse, responses=error_responses(400, 413, 422))
        def png_info(body: schemas.PngInfoRequest):
            if not body.image:
                raise _error(422, "image: empty")
            raw_image = decode_image(body.image, "image", self.limits)
            text = saving.read_infotext(raw_image) or ""
            params = infotext.parse(text) if text else {}
            return schemas.PngInfoResponse(info=text, items={"parameters": text} if text else {},
                                           parameters=params)

        @r.get("/options")
        def get_options():
            values = backend.options.as_dict()
            info, name = backend.model_info, backend.status.name
            if name:   # A1111 reports the title, "name [short hash]"
                values["sd_model_checkpoint"] = f"{name} [{info.hash}]" if info and info.hash else name
            values["sd_checkpoint_hash"] = info.hash if info else None
            return values

        @r.post("/options", responses=error_responses(400, 422, 500))
        def set_options(changes: dict = Body(...)):
            unknown = [k for k in changes if k not in OPTIONS]
            if unknown:
                raise _error(422, f"unknown option(s): {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
            changes = dict(changes)
            if "sd_model_checkpoint" in changes:
                changes["sd_model_checkpoint"] = self._checkpoint_name(str(changes["sd_model_checkpoint"]))
            if "sd_vae" in changes:
                changes["sd_vae"] = self._vae_name(str(changes["sd_vae"]))
            try:
                backend.options.update(changes)
            except ValueError as exc:
                raise _error(422, str(exc)) from None
            if "sd_model_checkpoint" in changes or "sd_vae" in changes:
                job = backend.load(backend.options["sd_model_checkpoint"] or backend.status.name,
                                   backend.options["sd_vae"])
                job.wait()
                if job.state == FAILED:
                    raise _error(500, f"could not load the model: {job.error}")
            return None

        @r.get("/cmd-flags")
        def cmd_flags():
            return self.cmd_flags

        @r.get("/samplers")
        def samplers():
            return [{"name": s.name, "aliases": list(s.aliases),
                     "options": {"scheduler": s.default_scheduler} if s.default_scheduler else {}}
                    for s in registry.SAMPLERS]

        @r.get("/schedulers")
        def schedulers():
            return [{"name": key, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                    for key, label in registry.SCHEDULERS.items()]

        @r.get("/sd-models")
        def sd_models():
            from ..engine.hashing import model_hash
            out = []
            for name, path in backend.checkpoints().items():
                short = model_hash(path, backend.paths.hash_cache)
                out.append({"title": f"{name} [{short}]", "model_name": name.rsplit(".", 1)[0], "hash": short,
                            "sha256": None, "filename": name, "config": None})
            return out

        @r.get("/sd-vae")
        def sd_vae():
            return [{"model_name": name, "filename": name} for name in backend.vaes()]

        @r.get("/embeddings")
        def embeddings():
            return backend.embeddings()

        @r.post("/refresh-embeddings")
        def refresh_embeddings():
            backend.embeddings()          # rereads the folder when its files changed
            return None

        @r.get("/loras")
        def loras():
            lister = backend.extensions.lister("lora") if backend.extensions is not None else None
            return lister() if lister is not None else []

        @r.post("/refresh-loras")
        def refresh_loras():
            lister = backend.extensions.lister("lora") if backend.extensions is not None else None
            if lister is not None:
                lister()            # the list is read from the folder each time
            return None

        @r.get("/prompt-styles")
        def prompt_styles():
            return [{"name": st.name, "prompt": st.prompt, "negative_prompt": st.negative_prompt}
                    for st in backend.styles.styles.values()]

        @r.post("/extra-single-image", response_model=schemas.ExtrasSingleImageResponse,
                responses=error_responses(400, 413, 422))
        def extra_single_image(body: schemas.ExtrasSingleImageRequest):
            image = decode_image(body.image, "image", self.limits)
            data, info = self._extras(body, image)
            return schemas.ExtrasSingleImageResponse(html_info=f"<p>{html.escape(info)}</p>",
                                                     image=data if body.show_extras_results else None)

        @r.post("/extra-batch-images", response_model=schemas.ExtrasBatchImagesResponse,
                responses=error_responses(400, 413, 422))
        def extra_batch_images(body: schemas.ExtrasBatchImagesRequest):
            if not body.imageList:
                raise _error(422, "imageList: at least one image is needed")
            if len(body.imageList) > self.limits.max_images:
                raise _error(422, f"imageList: at most {self.limits.max_images} images per request")
            images = [decode_image(f.data, f"imageList[{i}]", self.limits) for i, f in enumerate(body.imageList)]
            results = [self._extras(body, image) for image in images]
            return schemas.ExtrasBatchImagesResponse(html_info=f"<p>{html.escape(results[0][1])}</p>",
                                                     images=[data for data, _ in results] if body.show_extras_results
                                                     else [])

        @r.get("/upscalers")
        def upscalers():
            from ..engine.upscale import IMAGE_UPSCALERS
            return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                    for name in IMAGE_UPSCALERS]

        @r.get("/latent-upscale-modes")
        def latent_upscale_modes():
            from ..engine.upscale import LATENT_UPSCALE_MODES
            return [{"name": name} for name in LATENT_UPSCALE_MODES]

        @r.get("/memory")
        def memory():
            return _memory(backend)

        @r.get("/scripts")
        def scripts():
            titles = [e.title.lower() for e in backend.extensions.active()] if backend.extensions else []
            return {kind: backend.scripts.names(kind) + titles for kind in ("txt2img", "img2img")}

        @r.get("/script-info")
        def script_info():
            return backend.scripts.script_info()

        @r.get("/extensions")
        def extensions():
            found = backend.extensions.extensions.values() if backend.extensions is not None else []
            return [{"name": e.name, "remote": None, "branch": None, "commit_hash": None, "commit_date": None,
                     "version": e.manifest.version if e.manifest else None, "enabled": e.enabled,
                     "title": e.title, "description": e.manifest.description if e.manifest else "",
                     "state": e.state, "errors": list(e.errors)} for e in found]

        @r.post("/refresh-checkpoints")
        def refresh_checkpoints():
            return None          # the lists are read from the folders on every request

        @r.post("/refresh-vae")
        def refresh_vae():
            return None

        @r.post("/unload-checkpoint")
        def unload_checkpoint():
            job = queue.submit(lambda job: backend.unload(), kind="load", owner="api")
            job.wait()
            return None

        @r.post("/reload-checkpoint", responses=error_responses(409, 500))
        def reload_checkpoint():
            name = backend.status.name or backend.default_checkpoint_name()
            if not name:
                raise _error(409, "no checkpoint to load")
            job = backend.load(name)
            job.wait()
            if job.state == FAILED:
                raise _error(500, f"could not load {name}: {job.error}")
            return None

        return r


def _memory(backend: Backend) -> dict:
    import torch
    ram = {}
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        ram = {"free": info.get("MemAvailable", 0), "total": info.get("MemTotal", 0)}
        ram["used"] = ram["total"] - ram["free"]
    except OSError:
        pass
    cuda = {"error": "CUDA is not available"}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        cuda = {"system": {"free": free, "used": total - free, "total": total},
                "active": {"current": stats.get("active_bytes.all.current", 0),
                           "peak": stats.get("active_bytes.all.peak", 0)}}
    return {"ram": ram, "cuda": cuda}

