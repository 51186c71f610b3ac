"""A1111's generation routes (``txt2img``, ``img2img``), its ``progress``, ``interrupt`` and ``skip``, and the
per-task routes beyond A1111 (``/sdapi/v1/tasks/{id}``: status, progress, preview, cancel).

Every generation is a job in the backend's one queue (shared with the UI): the body becomes a job through the
request parsers (``webui/jobs/request/api.py``), the route waits for its own job and answers with base64 PNGs
that carry the ``parameters`` chunk.
"""
from __future__ import annotations

import datetime
import json

from fastapi import APIRouter

from .. import __version__
from ..jobs import infotext, saving
from ..jobs.backend import Backend
from ..jobs.queue import DONE, FAILED, RUNNING, DuplicateJobId
from ..jobs.request.api import ImageTooLarge, job_from_body
from ..jobs.spec import JobSpec, Limits
from ..options import coerce_option
from . import schemas
from .errors import error, error_responses


class Generation:
    def __init__(self, backend: Backend, limits: Limits):
        self.backend, self.limits = backend, limits

    def job(self, body: schemas.Txt2ImgRequest, kind: str) -> JobSpec:
        """The body as a job; 422 naming the field (413 for an image beyond the pixel limit)."""
        try:
            return job_from_body(self.backend.requests, body, kind, self.limits)
        except ImageTooLarge as exc:
            raise error(413, str(exc)) from None
        except ValueError as exc:
            raise error(422, str(exc)) from None

    def run(self, body: schemas.Txt2ImgRequest, kind: str) -> schemas.GenerationResponse:
        spec = self.job(body, kind)
        try:
            job = self.backend.submit(spec, job_id=body.force_task_id)
        except DuplicateJobId as exc:
            raise error(409, str(exc)) from None
        job.wait()
        if job.state == FAILED:
            raise error(500, f"generation failed: {job.error}")
        if job.state != DONE:
            raise error(409, f"task {job.id} was {job.state}")
        out = job.result
        info = self._info(spec, out, job.id)
        images = ([saving.png_base64(r.image, r.infotext) for r in out.images] if body.send_images else [])
        parameters = body.model_dump(mode="json")
        if kind == "img2img" and not body.include_init_images:      # A1111: the echo leaves the input images out
            parameters["init_images"] = None
            parameters["mask"] = None
        if body.override_settings and not body.override_settings_restore_afterwards:
            self.keep_overrides(body.override_settings)
        return schemas.GenerationResponse(images=images, parameters=parameters, info=json.dumps(info))

    def keep_overrides(self, overrides: dict) -> None:
        """``override_settings_restore_afterwards: false``: the job's overrides become the settings (A1111)."""
        catalog = self.backend.catalog
        kept = {key: coerce_option(key, value) for key, value in overrides.items()
                if key not in ("sd_model_checkpoint", "sd_vae")}
        try:
            if "sd_model_checkpoint" in overrides:
                kept["sd_model_checkpoint"] = catalog.find_checkpoint(str(overrides["sd_model_checkpoint"]))
            if "sd_vae" in overrides:
                kept["sd_vae"] = catalog.check_vae(str(overrides["sd_vae"]))
        except ValueError as exc:
            raise error(422, str(exc)) from None
        self.backend.options.update(kept)

    def _info(self, spec: JobSpec, out, job_id: str) -> dict:
        request = spec.request
        first = infotext.parse_typed(out.infotexts[0]) if out.images else None
        # the model this job ran with: by the time its client is answered, a later job may have switched it
        model = out.model_info or self.backend.model_info
        return {
            "prompt": request.prompt, "all_prompts": out.prompts,
            "negative_prompt": request.negative_prompt, "all_negative_prompts": out.negative_prompts,
            "seed": out.seeds[0] if out.images else request.seed, "all_seeds": out.seeds,
            "subseed": out.subseeds[0] if out.images else request.subseed, "all_subseeds": out.subseeds,
            "subseed_strength": request.subseed_strength,
            "width": request.width, "height": request.height,
            "sampler_name": first.sampler if first else request.sampler_name, "cfg_scale": request.cfg_scale,
            "steps": request.steps, "batch_size": request.batch_size, "restore_faces": False,
            "face_restoration_model": None, "sd_model_name": model.name if model else None,
            "sd_model_hash": model.hash if model else None, "sd_vae_name": model.vae_name if model else None,
            "sd_vae_hash": model.vae_hash if model else None, "seed_resize_from_w": request.seed_resize_from_w,
            "seed_resize_from_h": request.seed_resize_from_h,
            "denoising_strength": request.denoising_strength if request.init_image is not None else None,
            "extra_generation_params": dict(first.extra) if first else {},
            "index_of_first_image": out.index_of_first_image, "infotexts": out.infotexts,
            "styles": list(spec.styles),
            "job_timestamp": datetime.datetime.now().strftime("%Y%m%d%H%M%S"), "clip_skip": request.clip_skip,
            "is_using_inpainting_conditioning": False, "version": __version__, "task_id": job_id,
            "interrupted": out.interrupted, "warnings": out.warnings,
        }

    # ---- progress ----------------------------------------------------------------------------------------
    @staticmethod
    def _preview(job) -> str | None:
        image = job.progress.preview if job is not None else None
        return saving.png_base64(image, None) if image is not None else None

    def progress(self, skip_current_image: bool = False) -> schemas.ProgressResponse:
        queue = self.backend.queue
        job = queue.running
        pending = queue.pending()
        if job is None or job.kind in ("load", "unload"):
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
            raise error(404, f"no task {task_id!r}")
        p = job.progress
        saved = job.saved or {}
        return schemas.TaskProgressResponse(
            id=job.id, status=job.state, queue_position=self.backend.queue.position(job),
            progress=1.0 if job.state == DONE else p.fraction,
            eta_relative=job.eta if job.state == RUNNING else (0.0 if job.state == DONE else None),
            sampling_step=p.step, sampling_steps=p.total,
            current_image=self._preview(job) if job.state == RUNNING else None, error=job.error,
            files=saved.get("files"), infotexts=saved.get("infotexts"))

    def add_routes(self, r: APIRouter) -> None:
        queue = self.backend.queue

        @r.post("/txt2img", response_model=schemas.GenerationResponse,
                responses=error_responses(400, 409, 413, 422, 500))
        def txt2img(body: schemas.Txt2ImgRequest):
            return self.run(body, "txt2img")

        @r.post("/img2img", response_model=schemas.GenerationResponse,
                responses=error_responses(400, 409, 413, 422, 500))
        def img2img(body: schemas.Img2ImgRequest):
            return self.run(body, "img2img")

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
                raise error(404, f"no task {task_id!r}")
            if not queue.cancel(task_id):
                raise error(409, f"task {task_id!r} already {job.state}")
            return {"id": task_id, "status": job.state if job.state != RUNNING else "interrupting"}

        @r.post("/interrupt")
        def interrupt():
            job = queue.running
            if job is not None and job.kind not in ("load", "unload"):
                queue.interrupt(job.id)
            return {}

        @r.post("/skip")
        def skip():
            job = queue.running
            if job is not None:
                queue.skip(job.id)
            return {}
