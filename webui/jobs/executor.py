"""Runs a ``JobSpec`` in this process: the queue's worker thread calls ``LocalExecutor.run`` for each job.

For a generation it makes the asked model resident, applies the styles, resolves the model names to files,
builds the extensions' hooks, runs the engine (or a script, whose every run comes back here), writes the
infotexts, saves the images and grids, and reports progress and live previews to the job. The contract is the
value in (``JobSpec``), progress and previews out (``job.report``), a ``GenerationOutput`` back: another process
could run the same spec from its JSON.
"""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engine.request import GenerationRequest
from . import saving
from .catalog import Catalog
from .models import Models
from .output import GenerationOutput
from .parameters import ModelInfo, infotexts
from .previews import Previews
from .request import Requests
from .spec import JobSpec


@dataclass(frozen=True)
class _Run:
    """One generation of a job: the whole job, or one run of its script (``scripts.ScriptRun``). ``save`` /
    ``save_grid``: None follows the settings."""
    request: GenerationRequest
    checkpoint: str | None
    vae: str | None
    styles: tuple | list
    save: bool | None
    save_grid: bool | None
    label: str = ""


class LocalExecutor:
    def __init__(self, models: Models, requests: Requests, log: Callable[[str], None] = print):
        self.models, self.requests, self.log = models, requests, log
        self.catalog: Catalog = requests.catalog
        self.options, self.extensions = requests.options, requests.extensions
        self.previews = Previews(models)

    def run(self, spec: JobSpec, job) -> GenerationOutput | None:
        """``job``: where progress goes (``report``) and what stops it (``control``)."""
        if spec.kind == "load":
            self.models.ensure(spec.checkpoint, spec.vae)
            return None
        if spec.kind == "unload":
            self.models.unload()
            return None
        args = self.requests.extension_script_args(spec.extension_args)     # parsed once per job
        if spec.script is not None:
            return self._script(spec, job, args)
        return self.generate(spec.kind, _Run(spec.request, spec.checkpoint, spec.vae, spec.styles, spec.save,
                                             spec.save_grid), job, args)

    # ---- one generation ---------------------------------------------------------------------------------
    def generate(self, kind: str, run: _Run, job, extension_args: dict) -> GenerationOutput:
        from ..engine.job_hooks import JobHooks

        if run.checkpoint is not None or run.vae is not None:
            name = run.checkpoint if run.checkpoint is not None else self.models.name
            if name is None:
                raise RuntimeError("no checkpoint is loaded")
            vae = run.vae if run.vae is not None else self.models.loaded[2] or self.options["sd_vae"]
            self.models.ensure(name, vae)
        engine = self.models.require()
        request = self._engine_request(run.request, run.styles)
        hooks = self.extensions.job_hooks(extension_args) if self.extensions is not None else JobHooks()
        result = engine.generate(request, progress=self._progress(job, run.label), control=job.control, hooks=hooks)
        before_save = None if self.extensions is None else (
            lambda image, params: self.extensions.before_image_saved(image, params, result.warnings))
        refiner = self._info(request.refiner_checkpoint) if result.refiner_switched else None
        hires = self._info(request.hr_checkpoint_name) if request.enable_hr else None
        texts = infotexts(request, result, self.models.info, before_save, refiner=refiner, hires=hires)
        for warning in result.warnings:
            self.log(f"warning: {warning}")
        output = GenerationOutput([r.replace(infotext=t) for r, t in zip(result.images, texts)], result.interrupted,
                                  self.models.name, list(result.warnings), model_info=self.models.info)
        if self.options["samples_save"] if run.save is None else run.save:
            self._save(output, kind, run.save_grid)
        return output

    def _engine_request(self, request: GenerationRequest, styles) -> GenerationRequest:
        """The request as the engine takes it: styles applied, the refiner's and hires checkpoint's names as files."""
        changes = {}
        if styles:
            changes["prompt"], changes["negative_prompt"] = self.requests.styles.apply(
                request.prompt, request.negative_prompt, list(styles))
        for name in ("refiner_checkpoint", "hr_checkpoint_name"):
            if getattr(request, name) is not None:
                changes[name] = str(self.catalog.checkpoint_path(getattr(request, name)))
        return dataclasses.replace(request, **changes) if changes else request

    def _info(self, path: str | None) -> ModelInfo | None:
        return None if path is None else ModelInfo.of(Path(path), hash_cache=self.catalog.paths.hash_cache)

    def _save(self, output: GenerationOutput, kind: str, save_grid: bool | None) -> None:
        """The images (and a batch's grid) saved; a full disk or unwritable folder fails the job (``SaveError``)."""
        today = datetime.date.today()
        ext = self.options["samples_format"]
        folder = saving.dated_folder(self.catalog.paths.outputs, kind, today)
        with saving.reporting_write_errors(folder):
            output.images = [r.replace(path=saving.save_image(r.image, folder, seed=r.seed, infotext=r.infotext,
                                                              extension=ext)) for r in output.images]
        if len(output.images) > 1 and (self.options["grid_save"] if save_grid is None else save_grid):
            grids = saving.grid_folder(self.catalog.paths.outputs, kind, today)
            with saving.reporting_write_errors(grids):
                output.grid_paths.append(saving.save_grid(output.pictures, grids, output.images[0].infotext,
                                                          extension=ext))

    # ---- a script: several generations in one job ---------------------------------------------------------
    def _script(self, spec: JobSpec, job, extension_args: dict) -> GenerationOutput:
        script, options = self.requests.script(spec)

        def runner(run) -> GenerationOutput:
            checkpoint = run.checkpoint or spec.checkpoint
            request = self.requests.resolved(run.request, checkpoint, spec.limits)
            return self.generate(spec.kind, _Run(request, checkpoint, run.vae if run.vae is not None else spec.vae,
                                                 run.styles, False if run.save_samples is False else spec.save,
                                                 spec.save_grid if run.save_grid else False, run.label),
                                 job, extension_args)
        result = script.run(spec.request, options, runner, styles=list(spec.styles),
                            stop=lambda: job.control.interrupted)
        out = GenerationOutput(list(result.images), result.interrupted, self.models.name, result.warnings,
                               result.index_of_first_image, model_info=self.models.info)
        saving_on = self.options["samples_save"] if spec.save is None else spec.save
        ext = self.options["samples_format"]
        if result.save_as_grid and saving_on and (self.options["grid_save"] if spec.save_grid is None
                                                  else spec.save_grid):
            from .scripts import save_grids
            grids = saving.grid_folder(self.catalog.paths.outputs, spec.kind)
            with saving.reporting_write_errors(grids):
                for i, path in zip(result.save_as_grid, save_grids(result, grids, ext)):
                    out.images[i] = out.images[i].replace(path=path)
        if result.save_as_samples and saving_on:
            folder = saving.dated_folder(self.catalog.paths.outputs, spec.kind, datetime.date.today())
            with saving.reporting_write_errors(folder):
                for i in result.save_as_samples:
                    r = out.images[i]
                    out.images[i] = r.replace(path=saving.save_image(r.image, folder, seed=r.seed, infotext=r.infotext,
                                                                     extension=ext))
        return out

    # ---- progress and previews ------------------------------------------------------------------------------
    def _progress(self, job, label: str = ""):
        every = self.options["show_progress_every_n_steps"]
        previews = self.options["live_previews_enable"]
        mode = self.options["show_progress_type"]

        def callback(p) -> None:
            done = p.iteration * p.total + p.step
            batch = f"Batch {p.iteration + 1}/{p.iterations}" if p.iterations > 1 else ""
            preview = (self.previews.picture(p.denoised, mode)
                       if previews and p.step % every == 0 and p.step < p.total else None)
            job.report(step=done, total=p.total * p.iterations, text=", ".join(t for t in (label, batch) if t),
                       batch=p.iteration, batches=p.iterations, batch_step=p.step, batch_total=p.total,
                       preview=preview)
        return callback
