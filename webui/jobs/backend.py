"""The service the interfaces talk to: which models exist, which one is resident, and generation jobs.

``Backend`` owns the ``Engine`` and the ``JobQueue``. Everything that touches the device -- loading a
checkpoint, switching the VAE, generating -- runs as a queued job, so the UI, the API and the command line
never race for the device, and a model loads in the background while the page is already served.
Models are chosen by *name* from the lists this class makes (files in the configured folders); a name
that is not in the list, including any path that tries to leave the folder, is refused with the list.
"""
from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..options import Options
from ..paths import (CHECKPOINT_EXTENSIONS, DEMO_CHECKPOINT, VAE_EXTENSIONS, Paths, default_checkpoint,
                     list_files)
from ..engine.prompts.styles import StyleDatabase
from . import saving
from .queue import Job, JobQueue
from .store import TaskStore

VAE_AUTOMATIC, VAE_NONE = "Automatic", "None"


@dataclass
class ModelStatus:
    state: str = "none"            # none | loading | ready | error
    name: str | None = None        # checkpoint name (as listed)
    message: str = ""
    detail: str = ""               # ready: the family and prediction ("SDXL, eps-prediction")

    def describe(self) -> str:
        if self.state == "ready":
            return f"Model: {self.name}" + (f" ({self.detail})" if self.detail else "")
        if self.state == "loading":
            return f"Loading {self.name} ..."
        if self.state == "error":
            return f"Could not load {self.name}: {self.message}"
        return "No model loaded" + (f": {self.message}" if self.message else "")


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    paths: list[Path] = field(default_factory=list)   # files written (images, then the grid)
    interrupted: bool = False
    model: str | None = None
    prompts: list[str] = field(default_factory=list)            # as used (styles applied), per image
    negative_prompts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)           # for the user (unknown <kind:...> tags)
    subseeds: list[int] = field(default_factory=list)           # variation seeds, per image
    index_of_first_image: int = 0                               # a script's leading grids (A1111's field)
    model_info: Any = None          # the ``generation.ModelInfo`` the job ran with (not the one resident later)


def _relative_names(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    return {path.relative_to(folder).as_posix(): path for path in list_files(folder, extensions)}


class Backend:
    """Model lists, the resident model and the job queue; thread-safe."""

    def __init__(self, paths: Paths, options: Options, *, device: str | None = None, precision: str = "auto",
                 no_half: bool = False, no_half_vae: bool = False, vae_approx_dir: Path | None = None,
                 log: Callable[[str], None] = print, extensions=None, prediction: str | None = None,
                 vae_decode: str = "full", memory: str = "auto", fp8: bool = False, compile: bool = False,
                 persist: bool = True):
        self.paths, self.options, self.log = paths, options, log
        self.queue = JobQueue(TaskStore(paths.tasks, log=log) if persist else None, summarize=self.task_summary)
        self.status = ModelStatus()
        self._engine_args = dict(device=device, precision=precision, no_half=no_half, no_half_vae=no_half_vae,
                                 prediction=prediction, memory=memory, fp8=fp8, compile=compile)
        self._engine = None
        self._lock = threading.Lock()
        self._model_info = None
        self._loaded: tuple[str | None, Path | None, str | None] = (None, None, None)  # name, file, VAE choice
        self._vae_approx_dir = vae_approx_dir or paths.root / "models" / "vae_approx"
        self._vae_decode = vae_decode              # "full" or "taesd" (--vae-decode)
        self._taesd = None
        self._tokenizer = None   # a TextEncoder without a model: token counts for the UI
        self.styles = StyleDatabase(paths.styles)
        self.extensions = extensions    # a hooks.registry.ExtensionManager, or None
        from .scripts import ScriptEnvironment, ScriptRegistry
        env = ScriptEnvironment(checkpoints=lambda: list(self.checkpoints()), find_checkpoint=self.find_checkpoint,
                                vaes=lambda: list(self.vaes()), styles=lambda: list(self.styles.styles))
        self.scripts = ScriptRegistry.with_builtins(env)     # selectable scripts: built-in, then extensions'
        for ext in extensions.active() if extensions is not None else []:
            for script in ext.hooks.scripts:
                try:
                    self.scripts.add(script.with_env(env))
                except (ValueError, AttributeError) as exc:
                    extensions._fail(ext, f"script not added: {exc}")

    # ---- lists ---------------------------------------------------------------------------------
    def checkpoints(self) -> dict[str, Path]:
        """Name -> file: the checkpoint folder's files, plus the shipped demo model."""
        found = _relative_names(self.paths.checkpoints, CHECKPOINT_EXTENSIONS)
        if DEMO_CHECKPOINT.is_file() and DEMO_CHECKPOINT.resolve() not in {p.resolve() for p in found.values()}:
            found.setdefault(DEMO_CHECKPOINT.name, DEMO_CHECKPOINT)
        return found

    def vaes(self) -> dict[str, Path]:
        return _relative_names(self.paths.vae, VAE_EXTENSIONS)

    def checkpoint_path(self, name: str) -> Path:
        found = self.checkpoints()
        if name not in found:
            raise ValueError(f"unknown checkpoint {name!r}; available: {', '.join(found) or 'none'}")
        return found[name]

    def find_checkpoint(self, title: str) -> str:
        """A listed name from what A1111 and infotext call a model: the name, ``name [hash]``, or the file
        name with or without its extension (``Model: v1-5-pruned-emaonly``). ValueError lists the names."""
        bare = title.split(" [", 1)[0].strip()
        found = list(self.checkpoints())
        for name in found:
            base = name.rsplit("/", 1)[-1]
            if bare in (name, name.rsplit(".", 1)[0], base, base.rsplit(".", 1)[0]):
                return name
        raise ValueError(f"unknown checkpoint {title!r}; available: {', '.join(found) or 'none'}")

    def check_vae(self, choice: str) -> str:
        """``choice`` if it is Automatic, None or a listed VAE; else ValueError listing them."""
        found = self.vaes()
        if choice not in (VAE_AUTOMATIC, VAE_NONE) and choice not in found:
            raise ValueError(f"unknown VAE {choice!r}; available: {', '.join([VAE_AUTOMATIC, VAE_NONE, *found])}")
        return choice

    def vae_path(self, choice: str | None, checkpoint: Path) -> Path | None:
        """``Automatic``: a VAE named like the checkpoint (``<stem>.vae.*`` beside it or ``<stem>.*`` in the
        VAE folder), else the checkpoint's own; ``None``: the checkpoint's own; else a listed VAE file."""
        if choice in (None, "", VAE_NONE):
            return None
        if choice == VAE_AUTOMATIC:
            stem = checkpoint.name.rsplit(".", 1)[0]
            for folder, name in ((checkpoint.parent, f"{stem}.vae"), (self.paths.vae, stem)):
                for ext in VAE_EXTENSIONS:
                    if (folder / (name + ext)).is_file():
                        return folder / (name + ext)
            return None
        return self.vaes()[self.check_vae(choice)]

    def default_checkpoint_name(self) -> str | None:
        wanted = self.options["sd_model_checkpoint"]
        found = self.checkpoints()
        if wanted in found:
            return wanted
        path = default_checkpoint(self.paths)
        if path is None:
            return None
        return next((name for name, p in found.items() if p == path), None)

    # ---- the resident model ----------------------------------------------------------------------
    def start(self, checkpoint: str | Path | None = None) -> Job | None:
        """Start the queue and load ``checkpoint`` (a listed name or a file) or the default one."""
        self.queue.start()
        if checkpoint is None:
            checkpoint = self.default_checkpoint_name()
        if checkpoint is None:
            self.status = ModelStatus("none", None, f"no checkpoint in {self.paths.checkpoints}")
            return None
        return self.load(checkpoint)

    def stop(self) -> None:
        self.queue.stop()

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

    def load(self, checkpoint: str | Path, vae: str | None = None, owner: str | None = None) -> Job:
        """Queue a model load (returns the job; the status says loading until it runs)."""
        name, path = self._resolve_checkpoint(checkpoint)
        vae = vae if vae is not None else self.options["sd_vae"]
        self.status = ModelStatus("loading", name)
        return self.queue.submit(lambda job: self._ensure_model(name, path, vae), kind="load", owner=owner)

    def _resolve_checkpoint(self, checkpoint: str | Path) -> tuple[str, Path]:
        if isinstance(checkpoint, Path):       # a file named on the command line (--ckpt)
            if not checkpoint.is_file():
                raise ValueError(f"checkpoint file {checkpoint} not found")
            listed = {p.resolve(): n for n, p in self.checkpoints().items()}
            return listed.get(checkpoint.resolve(), checkpoint.name), checkpoint
        return checkpoint, self.checkpoint_path(checkpoint)

    def _ensure_model(self, name: str, path: Path, vae_choice: str) -> None:
        """On the worker thread: make (name, VAE) resident; a failure leaves the previous model usable."""
        from ..engine.files import CheckpointError
        from ..engine.pipeline import Engine
        from .generation import ModelInfo

        vae_path = self.vae_path(vae_choice, path)
        if self._loaded == (name, path, vae_choice) and self._engine is not None and self._engine.model is not None:
            return
        if self._engine is None:
            self._engine = Engine(**self._engine_args)
            self._engine.embeddings_dir = self.paths.embeddings
            self._engine.hash_cache = self.paths.hash_cache
        self._engine.checkpoints_limit = self.options["sd_checkpoints_limit"]
        self._engine.keep_in_cpu = self.options["sd_checkpoints_keep_in_cpu"]
        previous = self.status
        self.status = ModelStatus("loading", name)
        try:
            if self._loaded[1] != path or self._engine.model is None:
                self._engine.load(path, vae_path=vae_path)
            else:
                self._engine.set_vae(vae_path)
            if self._vae_decode == "taesd":
                try:
                    self._engine.set_fast_decoder(self._vae_approx_dir)
                except ValueError as exc:        # the model works; its own VAE decodes
                    self.log(f"warning: {exc}; decoding with the model's VAE")
            self._model_info = ModelInfo.of(path, vae_path, self.paths.hash_cache)
        except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
            loaded = self._engine.model is not None
            self.status = (ModelStatus("ready", self._loaded[0], "", previous.detail)
                           if loaded and previous.state == "ready" else ModelStatus("error", name, str(exc)))
            raise
        self._loaded = (name, path, vae_choice)
        self._taesd = None
        self.status = ModelStatus("ready", name, detail=self._engine.model.describe())
        if self.extensions is not None:
            self.extensions.model_loaded(self._engine.model)
        self.log(f"model loaded: {name} ({self._engine.model.describe()})"
                 + (f" with VAE {vae_path.name}" if vae_path else ""))

    def native_size_of(self, name: str | None) -> int:
        """The size the UI starts with for a listed checkpoint, read without loading it: its
        ``webui.native_size`` metadata, else its family's (1024 for SDXL, 768 for SD 2.x, 512 for SD 1.x and
        for files that cannot be read)."""
        from ..engine import families
        from ..engine.files import CheckpointError, read_metadata, read_state_dict

        if not name:
            return 512
        try:
            path = self.checkpoint_path(name)
            size = families.metadata_native_size(read_metadata(path))
            return size or families.detect_family(read_state_dict(path), name=name, need_vae=False).native_size
        except (ValueError, CheckpointError, OSError):
            return 512

    @property
    def model_info(self):
        """Name and hashes of the resident model (``generation.ModelInfo``), or None."""
        return self._model_info

    def unload(self) -> None:
        """On the worker thread (queue it): free the resident model."""
        if self._engine is not None:
            self._engine.unload()
        self._loaded, self._model_info, self._taesd = (None, None, None), None, None
        self.status = ModelStatus("none", None, "unloaded")

    @property
    def native_size(self) -> int | None:
        engine = self._engine
        return engine.model.native_size if engine is not None and engine.model is not None else None

    def _text_encoder(self):
        """The loaded model's text encoder, else a tokenizer-only one (token counts need no weights)."""
        engine = self._engine
        if engine is not None and engine.text_encoder is not None:
            return engine.text_encoder
        if self._tokenizer is None:
            from ..engine.text import TextEncoder, load_tokenizer
            self._tokenizer = TextEncoder(None, load_tokenizer())
        return self._tokenizer

    def embedding_database(self):
        """The loaded model's embeddings (the engine's own, reread when the folder changes), or None."""
        engine = self._engine
        return engine.embeddings if engine is not None and engine.text_encoder is not None else None

    def embeddings(self) -> dict:
        """A1111's ``/sdapi/v1/embeddings`` shape: ``{"loaded": {name: info}, "skipped": {name: info}}``."""
        with self._lock:
            db = self.embedding_database()
            if db is None:        # no model yet: the files, all unchecked against a text encoder
                from ..engine.prompts.embeddings import EmbeddingDatabase
                db = EmbeddingDatabase(self.paths.embeddings, -1, lambda t: [])
                db.refresh()

        def info(e):
            return {"step": e.step, "sd_checkpoint": e.sd_checkpoint, "sd_checkpoint_name": e.sd_checkpoint_name,
                    "shape": e.width, "vectors": e.count}
        return {"loaded": {n: info(e) for n, e in db.loaded.items()},
                "skipped": {n: info(e) for n, e in db.skipped.items()}}

    def prompt_options(self):
        from ..engine.prompts.conditioning import PROMPT_SETTINGS, PromptOptions
        return PromptOptions(**{key: self.options[key] for key in PROMPT_SETTINGS})

    def count_tokens(self, text: str, steps: int = 20, styles: list[str] | None = None,
                     negative: bool = False) -> tuple[int, int]:
        """A1111's token counter: ``(tokens, tokens allowed before one more chunk)`` for the longest text the
        prompt schedules to, after styles (setting ``include_styles_into_token_counters``), without
        ``<kind:...>`` tags, with ``AND`` parts counted apart and embeddings counted by their vectors."""
        from ..engine.prompts import composable, schedule
        from ..engine.prompts.chunks import CHUNK
        from ..engine.prompts.conditioning import make_chunker

        if styles and self.options["include_styles_into_token_counters"]:
            try:
                styled = self.styles.apply(text if not negative else "", text if negative else "", styles)
                text = styled[1] if negative else styled[0]
            except ValueError:
                pass
        text, _ = composable.extra_network_tags(text)
        flat = [text] if negative else [t for t, _ in composable.subprompts(text)]
        texts = [t for prompt in flat for _, t in schedule.schedule(prompt, max(int(steps), 1))]
        with self._lock:
            encoder = self._text_encoder()
            chunker = make_chunker(encoder, self.embedding_database(), self.prompt_options())
            count = max(chunker.split(t).token_count for t in texts)
        return count, max(-(-max(count, 1) // CHUNK) * CHUNK, CHUNK)

    # ---- generation --------------------------------------------------------------------------------
    def submit(self, request, *, kind: str = "txt2img", owner: str | None = None, checkpoint: str | None = None,
               vae: str | None = None, save: bool | None = None, job_id: str | None = None,
               styles: list[str] | None = None, script_args: dict | None = None,
               save_grid: bool | None = None, payload: dict | None = None, resumed: bool = False) -> Job:
        """Queue a generation. ``checkpoint`` / ``vae``: names as listed (None: keep the resident one);
        ``request.refiner_checkpoint``: a listed checkpoint's name or title (A1111's; "None" or empty: none).
        ``save_grid``: None follows the ``grid_save`` option.
        ``save``: None follows the ``samples_save`` option. ``styles``: names in ``styles.csv``, applied to a
        copy of the request. Prompt-language fields left None take the settings. ``script_args``:
        extension title -> its arguments (UI section values or the API's alwayson_scripts). The job's
        result is a ``GenerationOutput``."""
        target = self._resolve_checkpoint(checkpoint) if checkpoint else None
        request, refiner = self._prepare(request, styles, target)
        if vae is not None:
            self.check_vae(vae)
        work = lambda job: self._generate(job, request, kind, target, vae, save, script_args, refiner,  # noqa: E731
                                          save_grid)
        return self.queue.submit(work, kind=kind, owner=owner, job_id=job_id, payload=payload, resumed=resumed)

    def _prepare(self, request, styles: list[str] | None, target) -> tuple:
        """(the request as the engine takes it, the refiner's listed name or None): settings for the fields
        left None, styles applied, the refiner's and hires checkpoint's names resolved to their files;
        ValueError for what is wrong. ``target``: the (name, file) the job loads first, or None."""
        import dataclasses

        from ..engine.sampling import registry
        changes = self._settings_for(request)
        if styles:
            changes["prompt"], changes["negative_prompt"] = self.styles.apply(request.prompt,
                                                                              request.negative_prompt, styles)
        refiner = None
        if request.refiner_checkpoint in ("", "None", "none"):
            changes["refiner_checkpoint"] = None
        elif request.refiner_checkpoint is not None:
            refiner = self.find_checkpoint(request.refiner_checkpoint)
            changes["refiner_checkpoint"] = str(self.checkpoint_path(refiner))
        hires_model = None
        if request.enable_hr and request.hr_checkpoint_name not in (None, "", "None", "Use same checkpoint"):
            hires_model = self.find_checkpoint(request.hr_checkpoint_name)
            changes["hr_checkpoint_name"] = str(self.checkpoint_path(hires_model))
        elif request.hr_checkpoint_name is not None:
            changes["hr_checkpoint_name"] = None
        request = dataclasses.replace(request, **changes)
        for second in (refiner, hires_model):
            if second is not None:
                self._check_refiner(second, (target or self._loaded)[1])
        request.validate()
        registry.resolve(request.sampler_name, request.scheduler)        # unknown names fail now, not queued
        return request, refiner

    def _settings_for(self, request) -> dict:
        """The settings for the prompt-language fields the request left None."""
        from ..engine.pipeline import SETTING_FIELDS
        return {key: self.options[key] for key in SETTING_FIELDS if getattr(request, key) is None}

    def submit_script(self, request, script, options, *, kind: str = "txt2img", owner: str | None = None,
                      checkpoint: str | None = None, vae: str | None = None, save: bool | None = None,
                      save_grid: bool | None = None, job_id: str | None = None, styles: list[str] | None = None,
                      script_args: dict | None = None, payload: dict | None = None, resumed: bool = False) -> Job:
        """Queue a selectable script (``jobs.scripts``: X/Y/Z plot ...) as one job: every run it asks for
        goes through ``_generate`` on the worker thread, then its grids are saved. ``options``: from
        ``script.parse``. Checked now: the request, its styles, checkpoint and VAE, and the options against
        the request (``script.validate``: every planned run). The job's result is a ``GenerationOutput`` of
        the script's images (grids first, ``index_of_first_image``)."""
        import dataclasses

        styles = list(styles or [])
        target = self._resolve_checkpoint(checkpoint) if checkpoint else None
        self._prepare(request, styles, target)                    # the base request must be valid itself
        if vae is not None:
            self.check_vae(vae)
        request = dataclasses.replace(request, **self._settings_for(request))   # styles: per run, by the script
        script.validate(request, options, styles=styles)

        def work(job: Job) -> GenerationOutput:
            def runner(run) -> GenerationOutput:
                run_target = self._resolve_checkpoint(run.checkpoint) if run.checkpoint else target
                prepared, refiner = self._prepare(run.request, run.styles, run_target)
                run_save = False if run.save_samples is False else save
                return self._generate(job, prepared, kind, run_target, run.vae if run.vae is not None else vae,
                                      run_save, script_args, refiner, save_grid if run.save_grid else False,
                                      label=run.label)
            result = script.run(request, options, runner, styles=styles, stop=lambda: job.control.interrupted)
            out = GenerationOutput(result.images, result.infotexts, result.seeds, interrupted=result.interrupted,
                                   model=self._loaded[0], prompts=result.prompts,
                                   negative_prompts=result.negative_prompts, warnings=result.warnings,
                                   index_of_first_image=result.index_of_first_image, model_info=self._model_info)
            saving_on = self.options["samples_save"] if save is None else save
            if result.save_as_grid and (self.options["grid_save"] if save_grid is None else save_grid) and saving_on:
                from .scripts import save_grids
                grids = saving.grid_folder(self.paths.outputs, kind)
                with saving.reporting_write_errors(grids):
                    out.paths = save_grids(result, grids, self.options["samples_format"])
            if result.save_as_samples and saving_on:
                folder = saving.dated_folder(self.paths.outputs, kind, datetime.date.today())
                with saving.reporting_write_errors(folder):
                    out.paths += [saving.save_image(result.images[i], folder, seed=result.seeds[i],
                                                    infotext=result.infotexts[i],
                                                    extension=self.options["samples_format"])
                                  for i in result.save_as_samples]
            return out
        return self.queue.submit(work, kind=kind, owner=owner, job_id=job_id, payload=payload, resumed=resumed)

    def _check_refiner(self, name: str, base: Path | None) -> None:
        """A refiner (or hires fix's checkpoint) must work in the base model's latent space (read from the
        files' keys, nothing loaded)."""
        from ..engine import families
        from ..engine.files import CheckpointError, read_state_dict

        def family(path: Path):
            return families.detect_family(read_state_dict(path), name=path.name, need_vae=False)
        try:
            refiner = family(self.checkpoint_path(name))
            model = family(base) if base is not None else None
        except CheckpointError as exc:
            raise ValueError(f"refiner {name}: {exc}") from None
        if model is not None and refiner.latent_scale != model.latent_scale:
            raise ValueError(f"refiner {name} is a {refiner.label} model; it cannot refine {model.label} images "
                             f"({base.name}): their latent spaces differ")

    def _generate(self, job: Job, request, kind: str, target, vae: str | None, save: bool | None,
                  script_args: dict | None = None, refiner: str | None = None,
                  save_grid: bool | None = None, label: str = "") -> GenerationOutput:
        from .generation import ModelInfo, infotexts

        if target is not None or vae is not None:
            name, path = target if target is not None else self._loaded[:2]
            if name is None:
                raise RuntimeError("no checkpoint is loaded")
            self._ensure_model(name, path, vae if vae is not None else self._loaded[2] or self.options["sd_vae"])
        engine = self._engine
        if engine is None or engine.model is None:
            raise RuntimeError("no checkpoint is loaded" + (f": {self.status.message}" if self.status.message else ""))
        from ..engine.pipeline import JobHooks
        hooks = self.extensions.job_hooks(script_args) if self.extensions is not None else JobHooks()
        result = engine.generate(request, progress=self._progress_callback(job, label), control=job.control,
                                 hooks=hooks)
        before_save = None if self.extensions is None else (
            lambda image, params: self.extensions.before_image_saved(image, params, result.warnings))
        refiner_info = (ModelInfo.of(Path(request.refiner_checkpoint), hash_cache=self.paths.hash_cache)
                        if refiner is not None and result.refiner_switched else None)
        if "Hires checkpoint" in result.extra:          # A1111's short title: name [hash]
            info = ModelInfo.of(Path(request.hr_checkpoint_name), hash_cache=self.paths.hash_cache)
            result.extra["Hires checkpoint"] = f"{info.name} [{info.hash}]"
        texts = infotexts(request, result, self._model_info, before_save, refiner=refiner_info)
        for warning in result.warnings:
            self.log(f"warning: {warning}")
        output = GenerationOutput([g.image for g in result.images], texts, [g.seed for g in result.images],
                                  interrupted=result.interrupted, model=self._loaded[0],
                                  prompts=[g.prompt for g in result.images],
                                  negative_prompts=[g.negative_prompt for g in result.images],
                                  warnings=list(result.warnings), subseeds=[g.subseed for g in result.images],
                                  model_info=self._model_info)
        if self.options["samples_save"] if save is None else save:
            output.paths = self._save(output, kind, save_grid)
        return output

    def _save(self, output: GenerationOutput, kind: str, save_grid: bool | None = None) -> list[Path]:
        """The images (and grid) saved; a full disk or unwritable folder fails the job with a ``SaveError``."""
        today = datetime.date.today()
        ext = self.options["samples_format"]
        folder = saving.dated_folder(self.paths.outputs, kind, today)
        with saving.reporting_write_errors(folder):
            paths = [saving.save_image(img, folder, seed=seed, infotext=text, extension=ext)
                     for img, seed, text in zip(output.images, output.seeds, output.infotexts)]
        if len(output.images) > 1 and (self.options["grid_save"] if save_grid is None else save_grid):
            grids = saving.grid_folder(self.paths.outputs, kind, today)
            with saving.reporting_write_errors(grids):
                paths.append(saving.save_grid(output.images, grids, output.infotexts[0], extension=ext))
        return paths

    # ---- progress and previews ------------------------------------------------------------------
    def _progress_callback(self, job: Job, label: str = ""):
        every = self.options["show_progress_every_n_steps"]
        previews = self.options["live_previews_enable"]
        mode = self.options["show_progress_type"]

        def callback(p) -> None:
            done = p.iteration * p.total + p.step
            job.progress.step, job.progress.total = done, p.total * p.iterations
            batch = f"Batch {p.iteration + 1}/{p.iterations}" if p.iterations > 1 else ""
            job.progress.text = ", ".join(t for t in (label, batch) if t)      # label: a script's "3 out of 9"
            if previews and (p.step % every == 0) and p.step < p.total:
                job.progress.preview = self.preview(p.denoised, mode)
                job.progress.preview_step = done
        return callback

    def preview(self, latents, mode: str) -> Image.Image:
        """A picture of the first latent of a batch (host sync: only every N steps)."""
        import torch.nn.functional as F

        from ..engine import images as im
        from ..engine import preview as pv

        engine = self._engine
        model = engine.model
        x = latents[:1]
        if mode == "Full":
            return im.to_pil(engine.decode_latents(x)[0])
        if mode == "TAESD":
            if self._taesd is None:
                path = pv.find_taesd(self._vae_approx_dir, model.family.name)
                self._taesd = pv.load_taesd(path, engine.device) if path else False
            if self._taesd:
                return im.to_pil(pv.taesd_preview(self._taesd, x)[0])
        factors, bias = pv.latent_rgb(model.family.name, model.metadata)
        rgb = pv.cheap_approximation(x, factors, bias)
        return im.to_pil(F.interpolate(rgb, scale_factor=8, mode="nearest")[0])
