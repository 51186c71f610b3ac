"""The service the interfaces talk to: the model lists, the resident model, the request parsers and the one job
queue.

``Backend`` puts the pieces of the job layer together: a ``Catalog`` (models by name), ``Models`` (what is
resident, the status line), ``Requests`` (every interface's input -> a validated ``JobSpec``), the ``JobQueue``
and the ``LocalExecutor`` that runs its jobs on the worker thread. Everything that touches the device -- loading
a checkpoint, switching the VAE, generating -- is a queued job, so the UI, the API and the command line never
race for the device, and a model loads in the background while the page is already served.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from ..engine.prompts.styles import StyleDatabase
from ..options import Options
from ..paths import Paths
from .catalog import VAE_AUTOMATIC, VAE_NONE, Catalog  # noqa: F401  (the VAE choices, for the interfaces)
from .executor import LocalExecutor
from .models import ModelStatus, Models
from .output import GenerationOutput
from .queue import Job, JobQueue, JobProgress
from .request import Requests
from .spec import JobSpec
from .store import TaskRecord, TaskStore
from .tokens import TokenCounter


class Backend:
    """Model lists, the resident model and the job queue; thread-safe."""

    def __init__(self, paths: Paths, options: Options, *, device: str | None = None, precision: str = "auto",
                 no_half: bool = False, no_half_vae: bool = False, vae_approx_dir: Path | None = None,
                 log: Callable[[str], None] = print, extensions=None, prediction: str | None = None,
                 vae_decode: str = "full", memory: str = "auto", fp8: bool = False, compile: bool = False,
                 persist: bool = True, taesd_required: bool = False, tracebacks: bool = True):
        self.paths, self.options, self.log, self.extensions = paths, options, log, extensions
        self.catalog = Catalog(paths)
        self.styles = StyleDatabase(paths.styles)
        self.models = Models(self.catalog, options, log=log, vae_decode=vae_decode, vae_approx_dir=vae_approx_dir,
                             engine_args=dict(device=device, precision=precision, no_half=no_half,
                                              no_half_vae=no_half_vae, prediction=prediction, memory=memory, fp8=fp8,
                                              compile=compile),
                             model_loaded=extensions.model_loaded if extensions is not None else None,
                             taesd_required=taesd_required)
        self.scripts = self._scripts()
        self.requests = Requests(self.catalog, options, self.styles, self.scripts, extensions, lambda: self.models.name)
        self.executor = LocalExecutor(self.models, self.requests, log)
        self.queue = JobQueue(self.executor.run, TaskStore(paths.tasks, log=log) if persist else None,
                              summarize=self.task_summary, tracebacks=tracebacks)
        self.tokens = TokenCounter(self.models, options, self.styles, threading.Lock())

    def _scripts(self):
        """The selectable scripts: the built-in ones, then the extensions'."""
        from .scripts import ScriptEnvironment, ScriptRegistry
        env = ScriptEnvironment(checkpoints=lambda: list(self.catalog.checkpoints()),
                                find_checkpoint=self.catalog.find_checkpoint, vaes=lambda: list(self.catalog.vaes()),
                                styles=lambda: list(self.styles.styles))
        scripts = ScriptRegistry.with_builtins(env)
        for ext in self.extensions.active() if self.extensions is not None else []:
            for script in ext.hooks.scripts:
                try:
                    scripts.add(script.with_env(env))
                except (ValueError, AttributeError) as exc:
                    self.extensions.fail(ext, f"script not added: {exc}")
        return scripts

    # ---- lists and the resident model ---------------------------------------------------------------------
    def checkpoints(self) -> dict[str, Path]:
        return self.catalog.checkpoints()

    def vaes(self) -> dict[str, Path]:
        return self.catalog.vaes()

    def find_checkpoint(self, title: str) -> str:
        return self.catalog.find_checkpoint(title)

    def default_checkpoint_name(self) -> str | None:
        return self.catalog.default_checkpoint_name(self.options["sd_model_checkpoint"])

    @property
    def status(self) -> ModelStatus:
        return self.models.status

    @property
    def model_info(self):
        """Name and hashes of the resident model (``parameters.ModelInfo``), or None."""
        return self.models.info

    @property
    def native_size(self) -> int | None:
        return self.models.native_size

    def native_size_of(self, name: str | None) -> int:
        return self.catalog.native_size_of(name)

    # ---- jobs ---------------------------------------------------------------------------------------------
    def start(self, checkpoint: str | None = None, vae: str | None = None) -> Job | None:
        """Start the queue and load ``checkpoint`` (a listed name) or the default one, with ``vae`` (None: the
        ``sd_vae`` setting)."""
        self.queue.start()
        checkpoint = checkpoint or self.default_checkpoint_name()
        if checkpoint is None:
            self.models.status = ModelStatus("none", None, f"no checkpoint in {self.paths.checkpoints}")
            return None
        return self.load(checkpoint, vae)

    def stop(self) -> None:
        self.queue.stop()

    def load(self, checkpoint: str, vae: str | None = None, owner: str | None = None) -> Job:
        """Queue a model load (returns the job; the status says loading until it runs)."""
        name = self.catalog.find_checkpoint(checkpoint)
        self.models.status = ModelStatus("loading", name)
        return self.queue.submit(JobSpec("load", checkpoint=name, vae=vae, owner=owner))

    def unload(self, owner: str | None = None) -> Job:
        return self.queue.submit(JobSpec("unload", owner=owner))

    def submit(self, spec: JobSpec, *, job_id: str | None = None, resumed: bool = False,
               watch: Callable[[JobProgress], None] | None = None) -> Job:
        """Queue a job made by ``self.requests`` (already validated). The job's result is a ``GenerationOutput``."""
        return self.queue.submit(spec, job_id=job_id, resumed=resumed, watch=watch)

    def resume(self, record: TaskRecord) -> None:
        """Submit a stored task again after a restart (``JobQueue.recover``); raises what is wrong with it now (its
        model gone ...). Its client is gone: its images are saved."""
        payload = record.payload
        if "body" in payload:                  # stored by an earlier version: the API's request body
            from .request.api import job_from_body
            from .request.body import Img2ImgRequest, Txt2ImgRequest
            route = payload.get("route")
            model = {"txt2img": Txt2ImgRequest, "img2img": Img2ImgRequest}.get(route)
            if model is None or not isinstance(payload.get("body"), dict):
                raise ValueError(f"unknown stored task route {route!r}")
            from .spec import Limits
            spec = job_from_body(self.requests, model.model_validate(payload["body"]), route, Limits(), save=True)
        else:
            spec = JobSpec.from_json(payload)
            self.requests.job(spec.request, spec.kind, checkpoint=spec.checkpoint, vae=spec.vae, styles=spec.styles,
                              script=spec.script, extension_args=spec.extension_args, limits=spec.limits)
            spec = spec.replace(save=True)
        self.submit(spec, job_id=record.id, resumed=True)

    def task_summary(self, result) -> dict | None:
        """What a finished task's record keeps of its result: the saved images (relative to the outputs
        folder) and their infotexts."""
        if not isinstance(result, GenerationOutput):
            return None
        files = []
        for path in result.paths:
            try:
                files.append(Path(path).resolve().relative_to(self.paths.outputs.resolve()).as_posix())
            except ValueError:
                files.append(Path(path).name)
        return {"files": files, "infotexts": list(result.infotexts), "seeds": list(result.seeds)}

    # ---- prompts -------------------------------------------------------------------------------------------
    def count_tokens(self, text: str, steps: int = 20, styles: list[str] | None = None,
                     negative: bool = False) -> tuple[int, int]:
        return self.tokens.count(text, steps, styles, negative=negative)

    def embeddings(self) -> dict:
        return self.tokens.embeddings(self.paths.embeddings)
