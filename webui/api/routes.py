"""A1111's ``/sdapi/v1`` over the ``Backend``: same paths, field names, defaults and response shapes.

``Api.router()`` has the generation routes (``generation.py``) and the rest here: settings (``options``), the
model and resource lists, PNG Info, the Extras upscale, memory, scripts and extensions, and the model
load / unload routes. Beyond A1111: per-task progress and cancel (``/sdapi/v1/tasks/{id}``).
"""
from __future__ import annotations

import html

from fastapi import APIRouter, Body
from PIL import Image

from ..engine.sampling import registry
from ..jobs import infotext, saving
from ..jobs.backend import Backend
from ..jobs.queue import FAILED
from ..jobs.request.api import ImageTooLarge
from ..jobs.request.api import decode_image as decode
from ..jobs.spec import Limits
from ..options import OPTIONS
from . import schemas
from .errors import error, error_responses
from .generation import Generation


def decode_image(data: str, what: str, limits: Limits) -> Image.Image:
    """base64 or ``data:image/...;base64,`` -> PIL image (422, or 413 when too large). URLs are never fetched."""
    try:
        return decode(data, what, limits)
    except ImageTooLarge as exc:
        raise error(413, str(exc)) from None
    except ValueError as exc:
        raise error(422, str(exc)) from None


class Api:
    """Builds the router; ``cmd_flags`` is what ``GET cmd-flags`` reports."""

    def __init__(self, backend: Backend, limits: Limits | None = None, cmd_flags: dict | None = None):
        self.backend, self.limits, self.cmd_flags = backend, limits or Limits(), cmd_flags or {}
        self.generation = Generation(backend, self.limits)

    def _extras(self, body: schemas.ExtrasBaseRequest, image: Image.Image) -> tuple[str, str]:
        """One image through A1111's extras upscale: (base64 PNG, postprocessing text); 422 for what is not here."""
        import base64

        from ..engine.upscale import ExtrasUpscale
        from ..jobs import extras

        if body.gfpgan_visibility or body.codeformer_visibility:
            raise error(422, "gfpgan_visibility / codeformer_visibility: face restoration is not available: no "
                             "GFPGAN or CodeFormer model can be loaded in this version")
        upscale = ExtrasUpscale(mode=body.resize_mode, scale=body.upscaling_resize, width=body.upscaling_resize_w,
                                height=body.upscaling_resize_h, crop=body.upscaling_crop, upscaler_1=body.upscaler_1,
                                upscaler_2=body.upscaler_2, visibility=body.extras_upscaler_2_visibility)
        try:
            result, info = extras.postprocess(image, upscale)
        except ValueError as exc:
            raise error(422, str(exc)) from None
        return base64.b64encode(extras.png_bytes(result, info)).decode("ascii"), info

    def _set_options(self, changes: dict) -> None:
        backend = self.backend
        unknown = [k for k in changes if k not in OPTIONS]
        if unknown:
            raise error(422, f"unknown option(s): {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        changes = dict(changes)
        try:
            if "sd_model_checkpoint" in changes:
                changes["sd_model_checkpoint"] = backend.catalog.find_checkpoint(str(changes["sd_model_checkpoint"]))
            if "sd_vae" in changes:
                changes["sd_vae"] = backend.catalog.check_vae(str(changes["sd_vae"]))
            backend.options.update(changes)
        except ValueError as exc:
            raise error(422, str(exc)) from None
        if "sd_model_checkpoint" in changes or "sd_vae" in changes:
            job = backend.load(backend.options["sd_model_checkpoint"] or backend.status.name,
                               backend.options["sd_vae"])
            job.wait()
            if job.state == FAILED:
                raise error(500, f"could not load the model: {job.error}")

    # ---- the router ------------------------------------------------------------------------------
    def router(self) -> APIRouter:
        r = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
        backend = self.backend
        self.generation.add_routes(r)

        @r.post("/png-info", response_model=schemas.PngInfoResponse, responses=error_responses(400, 413, 422))
        def png_info(body: schemas.PngInfoRequest):
            if not body.image:
                raise error(422, "image: empty")
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
            self._set_options(changes)
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
                raise error(422, "imageList: at least one image is needed")
            if len(body.imageList) > self.limits.max_images:
                raise error(422, f"imageList: at most {self.limits.max_images} images per request")
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
            return _memory()

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
            backend.unload(owner="api").wait()
            return None

        @r.post("/reload-checkpoint", responses=error_responses(409, 500))
        def reload_checkpoint():
            name = backend.status.name or backend.default_checkpoint_name()
            if not name:
                raise error(409, "no checkpoint to load")
            job = backend.load(name)
            job.wait()
            if job.state == FAILED:
                raise error(500, f"could not load {name}: {job.error}")
            return None

        return r


def _memory() -> dict:
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
