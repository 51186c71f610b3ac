"""A job is a value: ``JobSpec`` says what to run -- its kind, the validated request, the model to run it on, the
owner, the script and its arguments, the extensions' arguments, what to save and the limits it ran under. The
queue holds it, the task store keeps it (``to_json``), and an executor runs it (``executor.py``; another
process could run the same value from its JSON and send back progress, previews and the result).

Images inside it (an init image, a mask, an extension's control image) travel as base64 PNG (TIFF for modes
PNG cannot hold) and numpy arrays as base64 with their dtype and shape: ``to_json`` is plain JSON.
"""
from __future__ import annotations

import base64
import dataclasses
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..engine.request import GenerationRequest

GENERATION_KINDS = ("txt2img", "img2img")
KINDS = (*GENERATION_KINDS, "load", "unload")
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the API's; the UI and the command line have none of these bounds). A
    field that is None is not bounded."""
    max_size: int | None = 2048              # width / height, hires fix's result too
    max_steps: int | None = 150              # also hires steps
    max_images: int | None = 64              # batch_size x n_iter
    max_script_images: int | None = 400      # every image one script (X/Y/Z plot, prompt matrix ...) generates
    max_batch_size: int | None = 16
    max_prompt_chars: int | None = 20_000
    max_cfg_scale: float | None = 100.0
    max_mask_blur: int | None = 64            # A1111's "Mask blur" slider
    max_body_bytes: int = 64 * 2**20          # the whole request
    max_image_pixels: int = 4096 * 4096

    @classmethod
    def none(cls) -> "Limits":
        """No bounds beyond the engine's own checks (the UI, whose controls bound themselves, and the CLI)."""
        return cls(None, None, None, None, None, None, None, None)


@dataclass(frozen=True)
class ScriptChoice:
    """A selectable script by title (A1111's ``script_name``) with A1111's positional ``script_args``."""
    name: str
    args: tuple = ()


@dataclass(frozen=True)
class ExtensionArgs:
    """The extensions' arguments as the interface got them: ``ui``: title -> {name: value} from their UI
    sections; ``api``: A1111's ``alwayson_scripts`` as sent. Parsed by the extensions when the job runs (and
    once when it is submitted, so that bad ones are refused then)."""
    ui: dict = field(default_factory=dict)
    api: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ui or self.api)


@dataclass(frozen=True)
class JobSpec:
    """What the queue runs. ``request``: validated, prompt settings filled in, styles not yet applied (they are
    applied when it runs, per script run); its ``refiner_checkpoint`` / ``hr_checkpoint_name`` are listed
    checkpoint names. ``checkpoint`` / ``vae``: names as listed (None: keep the resident ones). ``save`` /
    ``save_grid``: None follows the settings. ``resumable``: an API task, run again after a restart (its
    client is gone then: its images are saved)."""
    kind: str
    request: GenerationRequest | None = None
    checkpoint: str | None = None
    vae: str | None = None
    styles: tuple[str, ...] = ()
    script: ScriptChoice | None = None
    extension_args: ExtensionArgs = field(default_factory=ExtensionArgs)
    save: bool | None = None
    save_grid: bool | None = None
    owner: str | None = None
    limits: Limits = field(default_factory=Limits.none)
    resumable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown job kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    def replace(self, **changes) -> "JobSpec":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return {
            "kind": self.kind, "request": None if self.request is None else _request_json(self.request),
            "checkpoint": self.checkpoint, "vae": self.vae, "styles": list(self.styles),
            "script": None if self.script is None else {"name": self.script.name, "args": encode(self.script.args)},
            "extension_args": {"ui": encode(self.extension_args.ui), "api": encode(self.extension_args.api)},
            "save": self.save, "save_grid": self.save_grid, "owner": self.owner,
            "limits": dataclasses.asdict(self.limits), "resumable": self.resumable,
        }

    @classmethod
    def from_json(cls, data: dict) -> "JobSpec":
        script = data.get("script")
        ext = data.get("extension_args") or {}
        return cls(kind=data["kind"], request=None if data.get("request") is None else _request_value(data["request"]),
                   checkpoint=data.get("checkpoint"), vae=data.get("vae"), styles=tuple(data.get("styles") or ()),
                   script=None if script is None else ScriptChoice(script["name"], tuple(decode(script["args"]))),
                   extension_args=ExtensionArgs(decode(ext.get("ui") or {}), decode(ext.get("api") or {})),
                   save=data.get("save"), save_grid=data.get("save_grid"), owner=data.get("owner"),
                   limits=Limits(**data.get("limits", {})), resumable=bool(data.get("resumable")))


def _request_json(request: GenerationRequest) -> dict:
    return {f.name: encode(getattr(request, f.name)) for f in dataclasses.fields(request)}


def _request_value(data: dict) -> GenerationRequest:
    known = {f.name for f in dataclasses.fields(GenerationRequest)}
    values = {k: decode(v) for k, v in data.items() if k in known}
    for name in ("original_size", "crops_coords_top_left", "target_size"):   # JSON has lists, the request tuples
        if isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    return GenerationRequest(**values)


# ---- values inside a job: JSON with images and arrays -------------------------------------------------------
def encode(value: Any) -> Any:
    """``value`` as plain JSON: dicts, lists, strings, numbers, booleans and None as they are; PIL images and
    numpy arrays as tagged objects (``{"$image": ...}``, ``{"$array": ...}``). TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        fmt = "PNG" if value.mode in _PNG_MODES else "TIFF"
        value.save(buffer, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
        return {"$image": base64.b64encode(buffer.getvalue()).decode("ascii")}
    if isinstance(value, np.ndarray):
        return {"$array": {"dtype": value.dtype.str, "shape": list(value.shape),
                           "data": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")}}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a job cannot carry a {type(value).__name__} (not JSON, an image or an array)")


def decode(value: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$image"}:
            with Image.open(io.BytesIO(base64.b64decode(value["$image"]))) as image:
                image.load()
                return image.copy()
        if set(value) == {"$array"}:
            spec = value["$array"]
            data = base64.b64decode(spec["data"])
            return np.frombuffer(data, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
        return {k: decode(v) for k, v in value.items()}
    return value
