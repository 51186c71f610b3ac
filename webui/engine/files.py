"""Safe reading of model files: safetensors through a memory map, pickles through torch's restricted unpickler.

Nothing in a model file is ever executed. `.safetensors` files are parsed here (8-byte little-endian
header length, JSON header, raw little-endian tensor data) and every header entry is checked before
any tensor is made. `.ckpt/.pt/.pth/.bin` files go only through `torch.load(weights_only=True)`;
the few classes that real Stable Diffusion checkpoints pickle besides tensors are replaced by inert
stubs, and any other global refuses the file before unpickling starts.

Memory map choice: the whole file is mapped with `mmap.ACCESS_COPY` (MAP_PRIVATE, readable and
writable) and each tensor is a `torch.frombuffer` view on it, so no second copy is made: pages are
read from the page cache on demand and count as file-backed, not anonymous, memory. ACCESS_COPY
rather than ACCESS_READ because torch requires a writable buffer (a read-only one gives a warning,
and an in-place op on such a tensor would crash the process); with ACCESS_COPY an in-place op only
makes a private copy of the touched pages and never writes to the file. Each tensor holds a
reference to the map, which is unmapped when the last tensor is freed. As with any memory map,
truncating the file while its tensors are alive makes later reads fail with SIGBUS.
"""

from __future__ import annotations

import collections
import json
import math
import mmap
import os
import pickle
import re
import reprlib
import struct
from pathlib import Path

import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 64

_DTYPES = {
    name: getattr(torch, attr)
    for name, attr in (
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"),
        ("BOOL", "bool"), ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
    )
    if hasattr(torch, attr)
}


class CheckpointError(ValueError):
    """A model file cannot be read safely; the message names the file and what was wrong."""


class _InertStub:
    """Stands in for a class pickled in real checkpoints: keeps what it is given, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert stub for {type(self).__name__}>"


# Globals seen in real-world SD checkpoints besides tensors and plain containers (torch already allows
# collections.OrderedDict, builtins.set, _codecs.encode). Each maps to its own inert stub class.
_STUB_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
)
_SAFE_STUBS = tuple((type(name.rsplit(".", 1)[1], (_InertStub,), {}), name) for name in _STUB_NAMES)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors (CPU, original key names) without running anything from the file."""
    file = _checked_file(path)
    if file.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path, file)
    return _read_pickle(path, file)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors `__metadata__` table; an empty dict for pickled checkpoints."""
    file = _checked_file(path)
    if file.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    with open(file, "rb") as f:
        metadata, _, _ = _parse_header(path, f, os.fstat(f.fileno()).st_size)
    return metadata


def _checked_file(path) -> Path:
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"{path}: file not found")
    if not file.is_file():
        raise CheckpointError(f"{path}: expected a model file, found a directory or special file")
    known = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
    if file.suffix.lower() not in known:
        raise CheckpointError(f"{path}: unknown extension {file.suffix!r}; expected one of {', '.join(known)}")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes)")
    return file


def _reject_duplicates(pairs):
    result = dict(pairs)
    if len(result) != len(pairs):       # (counted once: keys.count() per key took quadratic time)
        counts = collections.Counter(key for key, _ in pairs)
        raise ValueError(f"duplicate keys {sorted(key for key, n in counts.items() if n > 1)[:10]}")
    return result


def _parse_header(path, f, size: int):
    """Validate a safetensors header. Returns (metadata, {name: (dtype, shape, begin, end)}, data start)."""
    if size < 8:
        raise CheckpointError(f"{path}: file has {size} bytes, expected at least 8 (safetensors header length)")
    (length,) = struct.unpack("<Q", f.read(8))
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: header length field says {length} bytes, expected under {MAX_HEADER_BYTES} "
                              "(not a safetensors file?)")
    if 8 + length > size:
        raise CheckpointError(f"{path}: header length field says {length} bytes, but the file has only "
                              f"{size - 8} bytes after it")
    try:
        header = json.loads(f.read(length).decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e}); expected a JSON object") from None
    except RecursionError:
        raise CheckpointError(f"{path}: header is JSON nested too deeply; expected an object of tensor "
                              "entries") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is a JSON {type(header).__name__}, expected an object")

    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path}: __metadata__ is {_short(metadata)}, expected an object of strings")

    entries, data_size = {}, size - 8 - length
    for name, info in header.items():
        info = info if isinstance(info, dict) else {}
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {_short(dtype)}, expected one of "
                                  f"{', '.join(_DTYPES)}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {_short(shape)}, expected a list of "
                                  "non-negative ints")
        # torch computes sizes in int64: a shape with a zero in it holds no data but still has to fit
        if len(shape) > MAX_DIMS or math.prod(max(d, 1) for d in shape) * _DTYPES[dtype].itemsize >= 2**63:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {_short(shape)}, more than a tensor can "
                                  f"have (at most {MAX_DIMS} dimensions, under 2**63 bytes)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {_short(offsets)}, expected "
                                  "[begin, end] with 0 <= begin <= end")
        begin, end = offsets
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} ({dtype}, shape {shape}) needs {nbytes} bytes, "
                                  f"but its data_offsets span {end - begin}")
        entries[name] = (_DTYPES[dtype], shape, begin, end)

    needed = max((end for _, _, _, end in entries.values()), default=0)
    if needed > data_size:
        raise CheckpointError(f"{path}: truncated: header says {needed} bytes of tensor data, file has {data_size}")
    previous_name, previous_end = None, 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin < previous_end:
            raise CheckpointError(f"{path}: tensors {previous_name!r} and {name!r} overlap "
                                  f"(one ends at byte {previous_end}, the other starts at {begin})")
        previous_name, previous_end = name, max(previous_end, end)
    return metadata, entries, 8 + length


def _short(value, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (values from a header can be megabytes long)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    text = short.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_safetensors(path, file: Path) -> dict[str, torch.Tensor]:
    with open(file, "rb") as f:
        _, entries, data_start = _parse_header(path, f, os.fstat(f.fileno()).st_size)
        if not any(end > begin for _, _, begin, end in entries.values()):
            return {name: torch.empty(shape, dtype=dtype) for name, (dtype, shape, _, _) in entries.items()}
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # stays valid after the file is closed
    tensors = MappedStateDict(mapped)
    for name, (dtype, shape, begin, end) in entries.items():
        if end == begin:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            count = (end - begin) // dtype.itemsize
            tensors[name] = torch.frombuffer(mapped, dtype=dtype, count=count, offset=data_start + begin).view(shape)
    return tensors


class MappedStateDict(dict):
    """``read_state_dict``'s result for ``.safetensors``: a plain dict of tensors viewing one memory map.

    ``release_pages(tensor)`` lets a loader that has copied a tensor give its mapped pages back right away
    (otherwise every page read stays resident, and counted in the process's RSS, until the map is freed).
    """

    def __init__(self, mapped: mmap.mmap) -> None:
        super().__init__()
        self._map = mapped
        self._base = torch.frombuffer(mapped, dtype=torch.uint8, count=1).data_ptr()

    def release_pages(self, tensor: torch.Tensor) -> None:
        """Drop the mapped pages lying wholly inside ``tensor``'s bytes (``madvise(MADV_DONTNEED)``).

        The tensor stays valid: its pages are read again from the file if it is used later. The pages are
        private copy-on-write file pages, so dropping them loses nothing unless the tensor was changed in
        place (such changes would be lost). Tensors that are not views of this map are left alone.
        """
        if not hasattr(mmap, "MADV_DONTNEED") or tensor.device.type != "cpu":
            return
        start = tensor.data_ptr() - self._base
        end = start + tensor.numel() * tensor.element_size()
        if start < 0 or end > len(self._map):
            return
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, end // page * page
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)


def read_pickle(path: str | os.PathLike):
    """The object in a ``.pt/.ckpt/.bin`` file, loaded with ``weights_only=True`` (tensors, plain containers,
    numbers and strings; anything else is refused by name without being run)."""
    return _load_pickle(path, _checked_file(path))


def _read_pickle(path, file: Path) -> dict[str, torch.Tensor]:
    obj = _load_pickle(path, file)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors "
                              "(optionally under 'state_dict')")
    tensors = {key: value.detach() if isinstance(value, torch.nn.Parameter) else value
               for key, value in obj.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}
    for key, value in tensors.items():
        problem = repeats_data(value)
        if problem:
            raise CheckpointError(f"{path}: tensor {key!r} {tuple(value.shape)} {problem}")
    return tensors


def repeats_data(tensor: torch.Tensor) -> str | None:
    """What is wrong when ``tensor`` has more elements than its storage holds (a view that repeats its data,
    as ``expand`` makes: a pickle of a few bytes can describe terabytes, which any copy would allocate);
    None for an ordinary tensor."""
    storage = tensor.untyped_storage().nbytes()
    if tensor.numel() * tensor.element_size() <= storage:
        return None
    return (f"has {tensor.numel()} values but its data is {storage} bytes (a view that repeats its data, "
            "refused: a copy would need more memory than the file holds)")


def _load_pickle(path, file: Path):
    with open(file, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's zip format; older files are plain pickles
    with torch.serialization.safe_globals(list(_SAFE_STUBS)):
        if is_zip:  # list every global before unpickling anything (a static scan of the pickle opcodes)
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
            except Exception as e:
                raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
            if unsafe:
                raise CheckpointError(_refusal(path, sorted(unsafe)))
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError as e:
            found = re.findall(r"GLOBAL (\S+)", str(e))
            if found:
                raise CheckpointError(_refusal(path, found)) from None
            detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise CheckpointError(f"{path}: not a valid torch checkpoint ({detail})") from None
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    return obj


def _refusal(path, names) -> str:
    return (f"{path}: refused to load: the pickle references {', '.join(names)}, expected only tensors, "
            "plain containers and known inert classes (nothing from the file was run)")
