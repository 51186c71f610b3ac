"""Extensions: found under ``extensions/``, loaded when enabled, every call into them guarded.

An extension is a folder with ``extension.toml`` (see ``manifest``) and ``__init__.py`` defining
``setup(hooks)``. It is imported as the package ``extensions.<folder>`` (so its own modules import each
other relatively) when it is enabled (setting ``disabled_extensions``, A1111's name) and its required
modules exist. A folder that fails to load, or an extension that raises later, is recorded in its
``errors`` (shown in the Extensions tab and ``/sdapi/v1/extensions``), logged, and skipped: at run time
the failing piece is left out of that job (the job says so in its warnings) and the job goes on.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.control import Interrupted, Skipped
from ..engine.job_hooks import JobContext, JobHooks
from .manifest import Manifest, ManifestError, read_manifest


class ExtensionHooks:
    """What an extension's ``setup(hooks)`` registers (each method returns the function, so it can be used
    as a decorator). ``paths``, ``options`` and ``log`` are the app's, for reading only."""

    def __init__(self, manifest: Manifest, paths, options, log):
        self.name, self.title, self.folder = manifest.name, manifest.title, manifest.path
        self.paths, self.options, self.log = paths, options, log
        self.job_callbacks: list[Callable] = []
        self.networks: dict[str, Callable] = {}
        self.network_listers: dict[str, Callable] = {}
        self.ui_builders: list[Callable] = []
        self.api_parser: Callable | None = None
        self.routes: list[tuple[str, Callable, tuple[str, ...], bool]] = []
        self.app_started: list[Callable] = []
        self.model_loaded: list[Callable] = []
        self.before_save: list[Callable] = []
        self.scripts: list = []

    def on_job(self, fn: Callable) -> Callable:
        """``fn(ctx: JobContext, args: dict)`` before each generation job: add to ``ctx.patches``,
        ``ctx.infotext``, ``ctx.warnings``. ``args``: this extension's values (UI section or API), {} if none."""
        self.job_callbacks.append(fn)
        return fn

    def extra_network(self, kind: str, handler: Callable, lister: Callable | None = None) -> Callable:
        """``handler(tags, ctx)`` for the prompt's ``<kind:...>`` tags; ``lister()`` -> A1111's list shape."""
        self.networks[kind] = handler
        if lister is not None:
            self.network_listers[kind] = lister
        return handler

    def ui(self, fn: Callable) -> Callable:
        """``fn(section) -> {name: gradio component}`` builds this extension's part of the txt2img / img2img
        tab (``section.kind``; ``section.prompt`` is the prompt box). The values reach ``on_job`` by name."""
        self.ui_builders.append(fn)
        return fn

    def api_args(self, fn: Callable) -> Callable:
        """``fn(args: list) -> dict``: ``alwayson_scripts[title]["args"]`` to the dict ``on_job`` gets
        (ValueError for bad args: the request gets a 422). Without it a list holding one dict is that dict."""
        self.api_parser = fn
        return fn

    def route(self, path: str, fn: Callable, methods: tuple[str, ...] = ("GET",), *, at_root: bool = False) -> Callable:
        """An HTTP route at ``/extensions-api/<name><path>`` (FastAPI signature rules), behind --api-auth.
        ``at_root``: at ``/<name><path>`` instead, where A1111 extensions serve theirs (sd-webui-controlnet's
        ``/controlnet/model_list``); only under the extension's own name, and behind --api-auth too."""
        self.routes.append((path, fn, tuple(methods), at_root))
        return fn

    def on_app_started(self, fn: Callable) -> Callable:
        self.app_started.append(fn)
        return fn

    def on_model_loaded(self, fn: Callable) -> Callable:
        """``fn(model)`` after a checkpoint is loaded (``model.path``, ``model.family``, ``model.unet`` ...)."""
        self.model_loaded.append(fn)
        return fn

    def script(self, script):
        """A selectable script (an instance of a ``webui.jobs.scripts.Script`` subclass): it joins the Script
        dropdown and the API's ``script_name`` / ``GET /sdapi/v1/scripts``; its runs reach the engine only
        through the runner, as the built-in ones do. Returns the script."""
        self.scripts.append(script)
        return script

    def before_image_saved(self, fn: Callable) -> Callable:
        """``fn(image, params)`` for each image before its infotext is written: add keys to ``params``."""
        self.before_save.append(fn)
        return fn


@dataclass
class Extension:
    folder: Path
    manifest: Manifest | None = None
    hooks: ExtensionHooks | None = None
    enabled: bool = True
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.folder.name

    @property
    def title(self) -> str:
        return self.manifest.title if self.manifest else self.folder.name

    @property
    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        return "loaded" if self.hooks is not None else "failed"

    @property
    def active(self) -> bool:
        return self.enabled and self.hooks is not None


class ExtensionManager:
    def __init__(self, folder: Path, paths, options, log: Callable[[str], None] = print):
        self.folder, self.paths, self.options, self.log = folder, paths, options, log
        self.extensions: dict[str, Extension] = {}
        self._lock = threading.Lock()

    # ---- discovery and loading -------------------------------------------------------------------------
    def load(self) -> None:
        disabled = set(self.options["disabled_extensions"])
        folders = sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))) \
            if self.folder.is_dir() else []
        for folder in folders:
            if not (folder / "__init__.py").is_file() and not (folder / "extension.toml").is_file():
                continue                    # not an extension (a plain folder)
            ext = Extension(folder)
            try:
                ext.manifest = read_manifest(folder)
            except ManifestError as exc:
                self.fail(ext, str(exc))
                self.extensions[folder.name] = ext
                continue
            ext.enabled = ext.name not in disabled
            self.extensions[ext.name] = ext
            if ext.enabled:
                self._import(ext)

    def _import(self, ext: Extension) -> None:
        missing = ext.manifest.missing_requirements()
        if missing:
            self.fail(ext, f"needs the Python module(s) {', '.join(missing)} (pip install them)")
            return
        module_name = f"extensions.{ext.folder.name}"
        try:
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, ext.folder / "__init__.py",
                                                              submodule_search_locations=[str(ext.folder)])
                if spec is None or spec.loader is None:
                    raise ImportError(f"no __init__.py in {ext.folder}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(module_name, None)
                    raise
            setup = getattr(module, "setup", None)
            if not callable(setup):
                raise ImportError("its __init__.py has no setup(hooks) function")
            hooks = ExtensionHooks(ext.manifest, self.paths, self.options, self.log)
            setup(hooks)
        except Exception as exc:
            self.fail(ext, f"could not load: {type(exc).__name__}: {exc}", traceback.format_exc())
            return
        ext.hooks = hooks
        self.log(f"extension loaded: {ext.name} {ext.manifest.version}")

    def fail(self, ext: Extension, message: str, details: str | None = None) -> None:
        with self._lock:
            ext.errors.append(message)
            del ext.errors[:-20]
        self.log(f"extension {ext.name}: {message}" + (f"\n{details}" if details else ""))

    def set_enabled(self, names: list[str]) -> None:
        """Enable exactly ``names`` (saved in ``disabled_extensions``); jobs follow at once, UI sections and
        routes at the next start. Newly enabled extensions are imported now."""
        unknown = [n for n in names if n not in self.extensions]
        if unknown:
            raise ValueError(f"unknown extension(s) {', '.join(unknown)}; known: {', '.join(self.extensions)}")
        self.options.update({"disabled_extensions": sorted(set(self.extensions) - set(names))})
        for ext in self.extensions.values():
            ext.enabled = ext.name in names
            if ext.enabled and ext.hooks is None and ext.manifest is not None:
                self._import(ext)

    def active(self) -> list[Extension]:
        return [e for e in self.extensions.values() if e.active]

    def by_title(self, title: str) -> Extension | None:
        wanted = title.lower()
        return next((e for e in self.active() if wanted in (e.title.lower(), e.name.lower())), None)

    # ---- guarded calls -----------------------------------------------------------------------------------
    def guard(self, ext: Extension, fn: Callable, what: str, fallback: Callable | None = None,
              warnings: list[str] | None = None) -> Callable:
        """``fn`` that, when it raises, records the error and returns ``fallback(*args)`` (or None)."""
        failed = False

        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            nonlocal failed
            if failed:                     # failed once: left out for the rest of this job
                return fallback(*args, **kwargs) if fallback is not None else None
            try:
                return fn(*args, **kwargs)
            except (Interrupted, Skipped):
                raise                      # the job's own interrupt / skip, passing through a wrapper
            except Exception as exc:
                failed = True
                message = f"{what} failed: {type(exc).__name__}: {exc}"
                self.fail(ext, message, traceback.format_exc())
                if warnings is not None:
                    warnings.append(f"extension {ext.name}: {message}; left out of this job")
                return fallback(*args, **kwargs) if fallback is not None else None
        return guarded

    # ---- per job -----------------------------------------------------------------------------------------
    def job_hooks(self, script_args: dict[str, dict] | None = None) -> JobHooks:
        """The engine's hooks for one job; ``script_args``: extension title -> its argument dict."""
        script_args = dict(script_args or {})
        prepare, networks = [], {}
        for ext in self.active():
            for callback in ext.hooks.job_callbacks:
                prepare.append(self._job_callback(ext, callback, script_args.get(ext.title, {})))
            for kind, handler in ext.hooks.networks.items():
                networks[kind] = self._network_handler(ext, handler)
        return JobHooks(prepare=prepare, networks=networks, script_args=script_args)

    def _job_callback(self, ext: Extension, callback: Callable, args: dict) -> Callable:
        def prepare(ctx: JobContext) -> None:
            marks = ctx.patches.marks()
            self.guard(ext, callback, "on_job", warnings=ctx.warnings)(ctx, args)
            self._guard_new_patches(ext, ctx, marks)
        return prepare

    def _network_handler(self, ext: Extension, handler: Callable) -> Callable:
        def handle(tags, ctx: JobContext) -> None:
            marks = ctx.patches.marks()
            self.guard(ext, handler, "extra network handler", warnings=ctx.warnings)(tags, ctx)
            self._guard_new_patches(ext, ctx, marks)
        return handle

    def _guard_new_patches(self, ext: Extension, ctx: JobContext, marks: dict) -> None:
        """Wrap what the extension just added to the job's patches (every kind, ``patches.PATCH_KINDS``), so a
        failure at sampling time drops that piece and the job goes on."""
        ctx.patches.guard_since(marks, lambda fn, what, fallback: self.guard(ext, fn, what, fallback, ctx.warnings))

    def api_script_args(self, alwayson: dict[str, Any] | None) -> dict[str, dict]:
        """A1111's ``alwayson_scripts`` -> title -> args dict; an unknown title or bad args: ValueError."""
        out = {}
        for title, entry in (alwayson or {}).items():
            ext = self.by_title(title)
            if ext is None:
                known = ", ".join(e.title for e in self.active()) or "none"
                raise ValueError(f"alwayson_scripts: no extension titled {title!r}; available: {known}")
            args = entry.get("args", []) if isinstance(entry, dict) else entry
            if not isinstance(args, list):
                raise ValueError(f"alwayson_scripts[{title!r}].args must be a list")
            if ext.hooks.api_parser is not None:
                out[ext.title] = ext.hooks.api_parser(args)
            elif len(args) == 1 and isinstance(args[0], dict):
                out[ext.title] = dict(args[0])
            else:
                out[ext.title] = {"args": args}
        return out

    # ---- lifecycle -------------------------------------------------------------------------------------
    def app_started(self, app) -> None:
        for ext in self.active():
            for fn in ext.hooks.app_started:
                self.guard(ext, fn, "on_app_started")(app)

    def model_loaded(self, model) -> None:
        for ext in self.active():
            for fn in ext.hooks.model_loaded:
                self.guard(ext, fn, "on_model_loaded")(model)

    def before_image_saved(self, image, params: dict, warnings: list[str] | None = None) -> None:
        for ext in self.active():
            for fn in ext.hooks.before_save:
                self.guard(ext, fn, "before_image_saved", warnings=warnings)(image, params)

    def lister(self, kind: str) -> Callable | None:
        for ext in self.active():
            if kind in ext.hooks.network_listers:
                return self.guard(ext, ext.hooks.network_listers[kind], f"{kind} list", lambda: [])
        return None


__all__ = ["Extension", "ExtensionHooks", "ExtensionManager"]
