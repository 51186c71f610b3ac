"""The resident model as the job layer knows it: which checkpoint (by listed name) and VAE choice are loaded, the
status line the UI shows, the names and hashes infotext writes (``ModelInfo``), and the engine itself. Loads
run on the queue's worker thread (``Models.ensure``); a failed load leaves the previous model usable.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .catalog import Catalog
from .parameters import ModelInfo


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


class Models:
    """The engine (made at the first load) and what is loaded in it. ``engine_args``: ``Engine``'s keyword
    arguments (device, precision, memory mode ...); ``vae_decode``: "full" or "taesd" (``--vae-decode``, TAESD
    from ``vae_approx_dir``; without its file the server logs it and decodes with the VAE, while with
    ``taesd_required`` -- the command line -- the load fails); ``model_loaded(model)``: called after each load
    (the extensions' hook)."""

    def __init__(self, catalog: Catalog, options, *, engine_args: dict | None = None, vae_decode: str = "full",
                 vae_approx_dir: Path | None = None, log: Callable[[str], None] = print,
                 model_loaded: Callable | None = None, taesd_required: bool = False):
        self.catalog, self.options, self.log = catalog, options, log
        self.engine_args = dict(engine_args or {})
        self.vae_decode = vae_decode
        self.vae_approx_dir = vae_approx_dir or catalog.paths.root / "models" / "vae_approx"
        self.model_loaded, self.taesd_required = model_loaded, taesd_required
        self.status = ModelStatus()
        self.engine = None
        self.info: ModelInfo | None = None
        self.loaded: tuple[str | None, Path | None, str | None] = (None, None, None)   # name, file, VAE choice

    @property
    def name(self) -> str | None:
        return self.loaded[0]

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.model is not None

    def ensure(self, name: str, vae_choice: str | None = None) -> None:
        """On the worker thread: make (``name``, VAE) resident (``vae_choice`` None: the ``sd_vae`` setting); a
        failure leaves the previous model usable and says so in the status."""
        from ..engine.files import CheckpointError
        from ..engine.residency import Engine

        path = self.catalog.checkpoint_path(name)
        vae_choice = vae_choice if vae_choice is not None else self.options["sd_vae"]
        vae_path = self.catalog.vae_path(vae_choice, path)
        if self.loaded == (name, path, vae_choice) and self.ready:
            return
        if self.engine is None:
            self.engine = Engine(**self.engine_args)
            self.engine.embeddings_dir = self.catalog.paths.embeddings
            self.engine.hash_cache = self.catalog.paths.hash_cache
        self.engine.checkpoints_limit = self.options["sd_checkpoints_limit"]
        self.engine.keep_in_cpu = self.options["sd_checkpoints_keep_in_cpu"]
        previous = self.status
        self.status = ModelStatus("loading", name)
        try:
            if self.loaded[1] != path or self.engine.model is None:
                self.engine.load(path, vae_path=vae_path)
            else:
                self.engine.set_vae(vae_path)
            if self.vae_decode == "taesd":
                try:
                    self.engine.set_fast_decoder(self.vae_approx_dir)
                except ValueError as exc:        # the model works; its own VAE decodes
                    if self.taesd_required:
                        raise
                    self.log(f"warning: {exc}; decoding with the model's VAE")
            self.info = ModelInfo.of(path, vae_path, self.catalog.paths.hash_cache)
        except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
            loaded = self.engine.model is not None
            self.status = (ModelStatus("ready", self.loaded[0], "", previous.detail)
                           if loaded and previous.state == "ready" else ModelStatus("error", name, str(exc)))
            raise
        self.loaded = (name, path, vae_choice)
        self.status = ModelStatus("ready", name, detail=self.engine.model.describe())
        if self.model_loaded is not None:
            self.model_loaded(self.engine.model)
        self.log(f"model loaded: {name} ({self.engine.model.describe()})"
                 + (f" with VAE {vae_path.name}" if vae_path else ""))

    def require(self):
        """The engine with a model in it (RuntimeError naming why there is none)."""
        if not self.ready:
            raise RuntimeError("no checkpoint is loaded" + (f": {self.status.message}" if self.status.message else ""))
        return self.engine

    def unload(self) -> None:
        """On the worker thread: free the resident model."""
        if self.engine is not None:
            self.engine.unload()
        self.loaded, self.info = (None, None, None), None
        self.status = ModelStatus("none", None, "unloaded")

    @property
    def native_size(self) -> int | None:
        return self.engine.model.native_size if self.ready else None
