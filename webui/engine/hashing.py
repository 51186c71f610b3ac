"""SHA-256 of model files with an optional on-disk cache, and A1111's short "Model hash".

The cache is a JSON object keyed by absolute path: {"sha256": hex, "size": bytes, "mtime_ns": int}.
An entry is used only while the file's size and mtime_ns are unchanged. The cache is rewritten
atomically (temporary file in the same folder, then os.replace); an unreadable or corrupt cache is
treated as empty, and a cache that cannot be written is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

CHUNK_BYTES = 1024 * 1024

log = logging.getLogger(__name__)


def file_sha256(path: str | os.PathLike, cache_file: str | os.PathLike | None = None) -> str:
    """Full hex SHA-256 of the file at `path`, cached in `cache_file` when given."""
    key = os.path.abspath(path)
    stat = os.stat(key)
    if cache_file is None:
        return _hash_file(key)

    entry = _load_cache(cache_file).get(key)
    if (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
        return entry["sha256"]

    digest = _hash_file(key)
    cache = _load_cache(cache_file)  # re-read: another process may have added entries meanwhile
    cache[key] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _save_cache(cache_file, cache)
    return digest


def model_hash(path: str | os.PathLike, cache_file: str | os.PathLike | None = None) -> str:
    """A1111's "Model hash": the first 10 hex characters of the file's SHA-256."""
    return file_sha256(path, cache_file)[:10]


def _hash_file(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            sha.update(chunk)
    return sha.hexdigest()


def _load_cache(cache_file) -> dict:
    try:
        with open(cache_file, encoding="utf-8") as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _save_cache(cache_file, cache: dict) -> None:
    folder = os.path.dirname(os.path.abspath(cache_file))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, prefix=".hashes-",
                                         suffix=".tmp", delete=False) as f:
            tmp = f.name
            json.dump(cache, f, indent=1, sort_keys=True)
        os.replace(tmp, cache_file)
    except OSError as e:
        log.warning("could not write hash cache %s: %s", cache_file, e)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
