"""Textual-inversion embeddings: files in ``models/embeddings/`` used when their name is in a prompt.

Formats (as A1111 reads them): A1111/original textual inversion (``string_to_param: {"*": [n, D]}``,
with ``step``, ``sd_checkpoint``, ``sd_checkpoint_name``), diffusers concepts (``{"<token>": [D]}``,
one vector), kohya / safetensors ``{"emb_params": [n, D]}`` (any single tensor), and SDXL embeddings
``{"clip_l": [n, 768], "clip_g": [n, 1280]}`` (one set of vectors per text encoder). ``.safetensors`` are
read from the header-checked memory map, ``.pt/.bin`` only with ``weights_only=True``: nothing in an
embedding file is ever run. An embedding is named after its file (``bad-hands-5.pt`` -> ``bad-hands-5``)
and matched in a prompt by the tokens of that name. Embeddings made for other text encoders than the
loaded model's are listed as skipped with the reason (an SD 2.x embedding next to an SD 1.x model, an
SD 1.x one next to an SDXL model).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import files
from ..hashing import file_sha256

EXTENSIONS = (".pt", ".bin", ".safetensors")


class EmbeddingError(ValueError):
    pass


@dataclass
class Embedding:
    """``vectors``: ``(n, D)`` float32 on the CPU (SDXL files: the vectors of the first part); ``parts``: per text
    encoder (``clip_l``, ``clip_g``) for SDXL files, empty for single-tensor files."""
    name: str
    vectors: torch.Tensor
    path: Path
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    _sha256: str | None = field(default=None, repr=False)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.vectors.shape[0]

    @property
    def width(self) -> int:
        """The vectors' width (SDXL files: the parts' widths added, as A1111 reports the shape)."""
        return sum(v.shape[-1] for v in self.parts.values()) if self.parts else self.vectors.shape[-1]

    def vectors_for(self, encoder: str) -> torch.Tensor:
        """The vectors for the text encoder named ``encoder`` (``clip_l``, ``clip_h``, ``clip_g``)."""
        return self.parts.get(encoder, self.vectors) if self.parts else self.vectors

    def describe(self) -> str:
        if self.parts:
            return "an SDXL embedding (" + ", ".join(f"{k} {v.shape[-1]}" for k, v in self.parts.items()) + ")"
        return f"an embedding of width {self.width}"

    def fits(self, widths: dict[str, int]) -> bool:
        """Usable with text encoders ``{name: width}``: SDXL parts for every encoder of a multi-encoder
        model, else one tensor of the single encoder's width."""
        if len(widths) > 1:
            return all(name in self.parts and self.parts[name].shape[-1] == w for name, w in widths.items())
        return not self.parts and self.vectors.shape[-1] == next(iter(widths.values()))

    def short_hash(self, cache_file: Path | None = None) -> str:
        """The first 12 hex digits of the file's SHA-256 (A1111's ``TI hashes`` value)."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path, cache_file)
        return self._sha256[:12]


def _tensor_of(data, path: Path) -> tuple[torch.Tensor, dict]:
    if not isinstance(data, dict) or not data:
        raise EmbeddingError(f"{path}: not an embedding (expected a dict of tensors)")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError(f"{path}: 'string_to_param' must hold exactly one tensor")
        tensor = next(iter(params.values()))
        extra = {k: data.get(k) for k in ("step", "sd_checkpoint", "sd_checkpoint_name")}
    elif "clip_g" in data and "clip_l" in data:
        parts = {}
        for key in ("clip_l", "clip_g"):
            parts[key] = _vectors(data[key], path, key)
        if parts["clip_l"].shape[0] != parts["clip_g"].shape[0]:
            raise EmbeddingError(f"{path}: clip_l has {parts['clip_l'].shape[0]} vectors, clip_g "
                                 f"{parts['clip_g'].shape[0]}; an SDXL embedding has as many of each")
        return parts["clip_l"], {"parts": parts}
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1 or len(data) != 1:
            raise EmbeddingError(f"{path}: holds {len(data)} entries ({', '.join(map(str, list(data)[:4]))}); "
                                 "an embedding file holds one tensor")
        tensor, extra = tensors[0], {}
    return _vectors(tensor, path, "the embedding"), extra


def _vectors(tensor, path: Path, what: str) -> torch.Tensor:
    """``tensor`` as ``(n, D)`` float32 vectors (a copy), or EmbeddingError saying what it is instead."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        raise EmbeddingError(f"{path}: {what} is not a 1-D or 2-D float tensor")
    if tensor.numel() == 0:
        raise EmbeddingError(f"{path}: {what} is empty (shape {tuple(tensor.shape)}); expected at least one vector")
    problem = files.repeats_data(tensor)
    if problem:
        raise EmbeddingError(f"{path}: {what} {tuple(tensor.shape)} {problem}")
    return tensor.detach().reshape(-1, tensor.shape[-1]).to(torch.float32).clone()


def load_embedding(path: str | os.PathLike) -> Embedding:
    """Read one embedding file (CheckpointError / EmbeddingError name the file and the problem)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        data = dict(files.read_state_dict(path))
    else:
        data = files.read_pickle(path)
    vectors, extra = _tensor_of(data, path)
    step = extra.get("step")
    return Embedding(path.stem, vectors, path, step=step if isinstance(step, int) else None,
                     sd_checkpoint=_str_or_none(extra.get("sd_checkpoint")),
                     sd_checkpoint_name=_str_or_none(extra.get("sd_checkpoint_name")), parts=extra.get("parts", {}))


def _str_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def _model_widths(widths: dict[str, int]) -> str:
    named = ", ".join(f"{name} {width}" if name else f"width {width}" for name, width in widths.items())
    return f"not for this model's text encoder{'s' if len(widths) > 1 else ''} ({named})"


class EmbeddingDatabase:
    """The embeddings of one folder, for the text encoders ``width``: ``{name: width}`` (an int: one encoder of
    that width, or -1 to accept every file unchecked).

    ``refresh()`` rereads the folder when its files changed (cheap: one directory walk of stats).
    ``loaded``: name -> Embedding usable with this model; ``skipped``: name -> Embedding made for other text
    encoders, ``skip_reasons``: name -> why; ``errors``: file -> message for files that could not be read.
    ``find(tokens, i)`` -> the embedding whose name's tokens start at ``tokens[i]`` (longest first) and how many prompt tokens it covers.
    """

    def __init__(self, folder: Path | None, width: int | dict[str, int], tokenize, log=None):
        self.folder, self._tokenize, self._log = folder, tokenize, log
        self.widths = width if isinstance(width, dict) else None if width == -1 else {"": width}
        self.width = sum(self.widths.values()) if self.widths else -1
        self.loaded: dict[str, Embedding] = {}
        self.skipped: dict[str, Embedding] = {}
        self.errors: dict[str, str] = {}
        self.skip_reasons: dict[str, str] = {}     # skipped name -> why (made for other text encoders)
        self._signature = None
        self._lock = threading.Lock()
        self._by_first_token: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}

    def _scan(self) -> list[tuple[Path, int, int]]:
        if self.folder is None or not self.folder.is_dir():
            return []
        found = []
        base = self.folder.resolve()
        for root, dirs, names in os.walk(self.folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(root) / name
                # a symlink leaving the folder is not read (as paths.list_files)
                if (path.suffix.lower() in EXTENSIONS and not name.startswith(".") and path.is_file()
                        and path.resolve().is_relative_to(base)):
                    stat = path.stat()
                    found.append((path, stat.st_size, stat.st_mtime_ns))
        return found

    def refresh(self, force: bool = False) -> None:
        """Reread the folder if its files changed. Thread-safe: the lists are swapped in whole, so a reader
        on another thread (the UI's token counter) sees either the old set or the new one."""
        with self._lock:
            scanned = self._scan()
            if not force and scanned == self._signature:
                return
            loaded, skipped, errors, by_first, reasons = {}, {}, {}, {}, {}
            for path, _, _ in scanned:
                try:
                    embedding = load_embedding(path)
                except (EmbeddingError, files.CheckpointError, OSError) as exc:
                    errors[str(path)] = str(exc)
                    if self._log:
                        self._log(f"embedding {path.name} skipped: {exc}")
                    continue
                if embedding.name in loaded or embedding.name in skipped:
                    errors[str(path)] = f"{path}: another embedding is already named {embedding.name!r}"
                elif self.widths is not None and not embedding.fits(self.widths):
                    skipped[embedding.name] = embedding
                    reasons[embedding.name] = f"{path.name}: {embedding.describe()}, {_model_widths(self.widths)}"
                else:
                    loaded[embedding.name] = embedding
                    ids = tuple(self._tokenize(embedding.name))
                    if ids:
                        by_first.setdefault(ids[0], []).append((ids, embedding))
            for entries in by_first.values():
                entries.sort(key=lambda entry: -len(entry[0]))
            self.loaded, self.skipped, self.errors, self._by_first_token = loaded, skipped, errors, by_first
            self.skip_reasons = reasons
            self._signature = scanned

    def find(self, tokens: list[int], i: int) -> tuple[Embedding | None, int]:
        for ids, embedding in self._by_first_token.get(tokens[i], ()):
            if tuple(tokens[i:i + len(ids)]) == ids:
                return embedding, len(ids)
        return None, 0
