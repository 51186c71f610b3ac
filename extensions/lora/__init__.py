"""LoRA, built on the extension hook (docs/extensions.md).

``<lora:name:weight>`` or ``<lora:name:te_weight:unet_weight>`` (also ``te=``/``unet=`` by name) in a
prompt merges ``models/lora/<name>.safetensors`` into the job's model as weight patches: ``W + m * ΔW``,
restored bit-exactly afterwards, kept merged while the next jobs ask for the same set. Keys that name
nothing in the model are reported to the user. Infotext: ``Lora hashes: "name: sha256[:12], ..."``.
"""
from __future__ import annotations

import threading
import weakref
from pathlib import Path

from webui.hooks.api import WeightPatch, file_identity, file_sha256, files_by_stem, hash_entry, model_folders, \
    read_metadata

EXTENSIONS = (".safetensors", ".pt", ".ckpt")


class LoraLibrary:
    """LoRA files by name (file stem, or the ``ss_output_name`` alias); what was read from each file (header
    metadata, short hash, modules resolved against a model) is kept until the file changes."""

    def __init__(self, paths):
        self.folders = model_folders(paths.lora, "lora")
        self.hash_cache = paths.hash_cache
        self._read: dict[tuple, dict] = {}                               # file identity -> metadata, hash
        self._parsed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # UNet -> identity -> LoraFile
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        return files_by_stem(self.folders, EXTENSIONS)

    def _entry(self, identity: tuple) -> dict:
        with self._lock:
            return self._read.setdefault(identity, {})

    def metadata(self, path: Path) -> dict:
        entry = self._entry(file_identity(path))
        if "metadata" not in entry:
            try:
                entry["metadata"] = read_metadata(path)
            except (ValueError, OSError):
                entry["metadata"] = {}
        return entry["metadata"]

    def short_hash(self, path: Path, identity: tuple) -> str:
        entry = self._entry(identity)
        if "hash" not in entry:
            entry["hash"] = file_sha256(path, self.hash_cache)[:12]
        return entry["hash"]

    def find(self, name: str, files: dict[str, Path]) -> Path | None:
        if name in files:
            return files[name]
        return next((path for path in files.values() if self.metadata(path).get("ss_output_name") == name), None)

    def parsed(self, path: Path, identity: tuple, model):
        """The file's modules resolved against ``model`` (kept per model object, dropped with it)."""
        from .formats import read_lora

        with self._lock:
            per_model = self._parsed.setdefault(model.unet, {})
            if identity not in per_model:
                if len(per_model) >= 16:
                    per_model.pop(next(iter(per_model)))
                per_model[identity] = read_lora(path, model.unet, model.text_models)
            return per_model[identity]

    def listing(self) -> list[dict]:
        """A1111's ``/sdapi/v1/loras`` shape."""
        out = []
        for name, path in self.files().items():
            metadata = self.metadata(path)
            out.append({"name": name, "alias": metadata.get("ss_output_name", name), "path": str(path),
                        "metadata": metadata})
        return out


def multipliers(args: tuple[str, ...]) -> tuple[float, float]:
    """``(te, unet)`` from a tag's arguments after the name: ``w``, ``te:unet``, ``te=..``, ``unet=..``."""
    positional, named = [], {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep:
            named[key.strip()] = float(value)
        else:
            positional.append(float(arg))
    te = named.get("te", positional[0] if positional else 1.0)
    unet = named.get("unet", positional[1] if len(positional) > 1 else te)
    return te, unet


def weight_patches(lora_file, identity: tuple, te: float, unet: float) -> list[WeightPatch]:
    """One patch per module; the key (file identity, module, strength) lets the same set stay merged."""
    patches = []
    for module in lora_file.modules:
        strength = unet if module.target == "unet" else te      # "text", SDXL's "text_2": the text encoders
        if strength == 0:
            continue
        patches.append(WeightPatch(module.target, module.module, module.delta, strength,
                                   key=(identity, module.target, module.module, strength)))
    return patches


def setup(hooks):
    library = LoraLibrary(hooks.paths)

    def handle(tags, ctx):
        hashes = []
        files = library.files()
        for tag in tags:
            name = tag.args[0] if tag.args else ""
            try:
                te, unet = multipliers(tag.args[1:])
            except ValueError:
                ctx.warnings.append(f"{tag.text}: the weights must be numbers; LoRA skipped")
                continue
            path = library.find(name, files)
            if path is None:
                ctx.warnings.append(f"{tag.text}: no LoRA named {name!r} in {library.folders[0]}; "
                                    f"available: {', '.join(files) or 'none'}")
                continue
            identity = file_identity(path)
            lora_file = library.parsed(path, identity, ctx.model)
            made_for = lora_file.trained_for
            widths = [m.config.hidden_size for m in ctx.model.text_models]
            if made_for is not None and made_for.mismatch(ctx.model.unet.config.context_dim, widths):
                ctx.warnings.append(f"LoRA {name}: made for {made_for.label()}, this model is "
                                    f"{ctx.model.family.label}: not applied")
                continue
            ctx.patches.weights.extend(weight_patches(lora_file, identity, te, unet))
            ignored = lora_file.unknown_keys + lora_file.mismatched
            if ignored:
                shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
                ctx.warnings.append(f"LoRA {name}: {len(ignored)} key(s) not applied (nothing in this model "
                                    f"matches them): {shown}")
            hashes.append(hash_entry(name, library.short_hash(path, identity)))
        if hashes:
            ctx.infotext["Lora hashes"] = ", ".join(hashes)

    hooks.extra_network("lora", handle, lister=library.listing)

    @hooks.ui
    def browser(ui):
        from .ui import build_browser
        build_browser(ui, library)
        return {}
