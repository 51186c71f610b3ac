"""Every interface's input becomes a validated job here, and only here.

One parser per interface -- ``api.py`` (an A1111 request body: the HTTP API and ``--request FILE.json``),
``fields.py`` (the UI's values by field name), ``cli.py`` (the command line's arguments) -- builds a
``GenerationRequest`` and hands it to ``Requests.job``, the one path every request takes: prompt settings
filled in from the settings, A1111's sentinel strings cleaned ("None", "Use same checkpoint"), checkpoint, VAE,
refiner and hires checkpoint names resolved against the lists, the interface's limits, the sampler names and
the engine's invariants checked (``check.py``), the styles, the extensions' arguments and the script checked.
What comes out is a ``JobSpec`` the queue can run; anything wrong is a ValueError whose message names the field.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ...engine.request import SETTING_FIELDS, GenerationRequest
from ..catalog import NO_CHECKPOINT, Catalog
from ..spec import ExtensionArgs, JobSpec, Limits, ScriptChoice
from .check import check

# A1111's words that mean "none" / "the first pass's" (the UI's dropdowns show them, clients send them)
NO_REFINER = "None"
SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER = "Use same checkpoint", "Use same sampler", "Use same scheduler"
SENTINELS = {"refiner_checkpoint": (*NO_CHECKPOINT, NO_REFINER),
             "hr_checkpoint_name": (*NO_CHECKPOINT, SAME_CHECKPOINT),
             "hr_sampler_name": ("", SAME_SAMPLER), "hr_scheduler": ("", SAME_SCHEDULER)}

__all__ = ["Requests", "check", "NO_REFINER", "SAME_CHECKPOINT", "SAME_SAMPLER", "SAME_SCHEDULER"]


class Requests:
    """What the parsers need of the server: the model lists (``catalog``), the settings, the styles, the
    selectable scripts, the extensions (None: none loaded) and the checkpoint resident now (``loaded()``: its
    listed name, for the refiner's latent-space check when a job keeps the resident model)."""

    def __init__(self, catalog: Catalog, options, styles, scripts, extensions=None,
                 loaded: Callable[[], str | None] = lambda: None):
        self.catalog, self.options, self.styles, self.scripts = catalog, options, styles, scripts
        self.extensions, self.loaded = extensions, loaded

    def job(self, request: GenerationRequest, kind: str, *, checkpoint: str | None = None, vae: str | None = None,
            styles: Sequence[str] = (), script: ScriptChoice | None = None,
            extension_args: ExtensionArgs | None = None, save: bool | None = None, save_grid: bool | None = None,
            owner: str | None = None, limits: Limits | None = None, resumable: bool = False) -> JobSpec:
        """The one validation path: ``request`` as an interface built it -> a ``JobSpec``; ValueError for what is
        wrong. ``checkpoint``: a checkpoint title (name, ``name [hash]``, stem); ``vae``: Automatic, None or a
        listed VAE; ``styles``: names in styles.csv; ``script``: a selectable script and its A1111 arguments."""
        limits = limits or Limits.none()
        checkpoint = self.catalog.find_checkpoint(checkpoint) if checkpoint else None
        if vae is not None:
            self.catalog.check_vae(vae)
        request = self.resolved(request, checkpoint, limits)
        styles = tuple(styles)
        self.styles.apply(request.prompt, request.negative_prompt, list(styles))       # unknown names: ValueError
        extension_args = extension_args or ExtensionArgs()
        self.extension_script_args(extension_args)
        spec = JobSpec(kind, request, checkpoint, vae, styles, script, extension_args, save, save_grid, owner, limits,
                       resumable)
        if script is not None:
            found, options = self.script(spec)
            found.validate(request, options, styles=styles)             # every planned run
        return spec

    def resolved(self, request: GenerationRequest, checkpoint: str | None, limits: Limits) -> GenerationRequest:
        """``request`` with the settings for the prompt-language fields it left None, A1111's sentinel words as
        None (``SENTINELS``), the refiner's and hires checkpoint's titles as listed names, checked. A script's
        runs come here too."""
        changes = {key: self.options[key] for key in SETTING_FIELDS if getattr(request, key) is None}
        changes.update({key: None for key, words in SENTINELS.items() if getattr(request, key) in words})
        request = dataclasses.replace(request, **changes)
        refiner, hires = request.refiner_checkpoint, request.hr_checkpoint_name if request.enable_hr else None
        request = dataclasses.replace(
            request, refiner_checkpoint=None if refiner is None else self.catalog.find_checkpoint(refiner),
            hr_checkpoint_name=None if hires is None else self.catalog.find_checkpoint(hires))
        base = checkpoint or self.loaded()
        for second in (request.refiner_checkpoint, request.hr_checkpoint_name):
            if second is not None:
                self.catalog.check_second_model(second, base)
        check(request, limits)
        return request

    def extension_script_args(self, args: ExtensionArgs) -> dict:
        """The extensions' arguments for ``JobHooks``: title -> args dict (the API's parsed by each extension's
        ``api_args``); ValueError for an unknown title or bad arguments."""
        if not args.api:
            return dict(args.ui)
        if self.extensions is None:
            raise ValueError("no extensions are loaded; got alwayson_scripts " + ", ".join(map(repr, args.api)))
        return {**args.ui, **self.extensions.api_script_args(args.api)}

    def script(self, spec: JobSpec):
        """(the job's script bound to its limits, its parsed options); ValueError naming what is wrong."""
        found = self.scripts.find(spec.script.name, spec.kind)
        env = dataclasses.replace(found.env, limits=spec.limits, max_images=spec.limits.max_script_images)
        found = found.with_env(env)
        return found, found.parse(list(spec.script.args), spec.kind)
