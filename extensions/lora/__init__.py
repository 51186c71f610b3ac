"""LoRA, built on the extension hook (docs/extensions.md).

``<lora:name:weight>`` or ``<lora:name:te_weight:unet_weight>`` (also ``te=``/``unet=`` by name) in a
prompt merges ``models/lora/<name>.safetensors`` into the job's model as weight patches: ``W + m * ΔW``,
restored bit-exactly afterwards, kept merged while the next jobs ask for the same set. Keys that name
nothing in the model are reported to the user. Infotext: ``Lora hashes: "name: sha256[:12], ..."``.
"""
from __future__ import annotations

import threading
from pathlib import Path

from webui.engine.files import read_metadata
from webui.engine.hashing import file_sha256
from webui.engine.patches import WeightPatch
from webui.paths import PROJECT_ROOT, list_files

EXTENSIONS = (".safetensors", ".pt", ".ckpt")


class LoraLibrary:
    """LoRA files by name (file stem, or the ``ss_output_name`` alias), and their parsed modules."""

    def __init__(self, paths):
        self.folders = [paths.lora]
        shipped = PROJECT_ROOT / "models" / "lora"
        if shipped.resolve() != Path(paths.lora).resolve():
            self.folders.append(shipped)
        self.hash_cache = paths.hash_cache
        self._parsed: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders:
            for path in list_files(Path(folder), EXTENSIONS):
                found.setdefault(path.stem, path)
        return found

    def metadata(self, path: Path) -> dict:
        try:
            return read_metadata(path)
        except (ValueError, OSError):
            return {}

    def find(self, name: str) -> Path | None:
        files = self.files()
        if name in files:
            return files[name]
        for path in files.values():
            if self.metadata(path).get("ss_output_name") == name:
                return path
        return None

    def parsed(self, path: Path, model):
        from .formats import read_lora

        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, id(model.unet), id(model.text_model))
        with self._lock:
            if key not in self._parsed:
                if len(self._parsed) > 16:
                    self._parsed.pop(next(iter(self._parsed)))
                self._parsed[key] = read_lora(path, model.unet, model.text_model)
            return self._parsed[key]

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


def weight_patches(lora_file, path: Path, te: float, unet: float) -> list[WeightPatch]:
    stat = path.stat()
    identity = (str(path), stat.st_mtime_ns, stat.st_size)
    patches = []
    for module in lora_file.modules:
        strength = te if module.target == "text" else unet
        if strength == 0:
            continue
        patches.append(WeightPatch(module.target, module.module, module.delta, strength,
                                   key=(identity, module.target, module.module, strength)))
    return patches


def setup(hooks):
    library = LoraLibrary(hooks.paths)

    def handle(tags, ctx):
        hashes = []
        for tag in tags:
            name = tag.args[0] if tag.args else ""
            try:
                te, unet = multipliers(tag.args[1:])
            except ValueError:
                ctx.warnings.append(f"{tag.text}: the weights must be numbers; LoRA skipped")
                continue
            path = library.find(name)
            if path is None:
                ctx.warnings.append(f"{tag.text}: no LoRA named {name!r} in {library.folders[0]}; "
                                    f"available: {', '.join(library.files()) or 'none'}")
                continue
            lora_file = library.parsed(path, ctx.model)
            ctx.patches.weights.extend(weight_patches(lora_file, path, te, unet))
            ignored = lora_file.unknown_keys + lora_file.mismatched
            if ignored:
                shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
                ctx.warnings.append(f"LoRA {name}: {len(ignored)} key(s) not applied (nothing in this model "
                                    f"matches them): {shown}")
            hashes.append(f"{name.replace(':', '').replace(',', '')}: {file_sha256(path, library.hash_cache)[:12]}")
        if hashes:
            ctx.infotext["Lora hashes"] = ", ".join(hashes)

    hooks.extra_network("lora", handle, lister=library.listing)

    @hooks.ui
    def browser(ui):
        from .ui import build_browser
        build_browser(ui, library)
        return {}
