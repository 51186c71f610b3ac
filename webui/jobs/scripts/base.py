"""The script interface: what a script is, what it gets, what it returns.

A script (A1111's "Script" dropdown, the API's ``script_name`` / ``script_args``) turns one request into
several generation runs and combines their results. It never touches the engine: each run goes through a
``runner`` the caller supplies (``runner(ScriptRun) -> GenerationOutput``), which on the real server generates
on the job's worker thread (the whole script is one job).

Lifecycle, for one request:

1. ``options = script.parse(script_args, kind)``: A1111's positional arguments (missing trailing ones take
   the defaults, as A1111's API fills them from the UI's defaults) -> a frozen options object; ValueError
   naming the argument (the API answers 422).
2. ``script.validate(request, options, styles=)``: everything that needs the request too (Prompt S/R text
   present, grid size, each planned run's request valid) -- before the job is queued.
3. ``script.run(request, options, runner, styles=, stop=) -> ScriptResult`` on the worker thread.
"""
from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ...engine.request import GenerationRequest
from ...engine.result import ImageRecord
from ..request.check import check
from ..spec import Limits

KINDS = ("txt2img", "img2img")
MAX_SEED = 4294967294          # A1111's random.randrange(4294967294) for "fixed" random seeds


# ---- what the runner gets and returns ---------------------------------------------------------------
@dataclass
class ScriptRun:
    """One generation a script asks for.

    ``request``: a copy of the job's request with this run's changes. ``checkpoint``: a checkpoint name as
    listed (None: keep the job's model); ``vae``: a VAE choice as listed, "Automatic" or "None" (None: keep).
    ``styles``: style names to apply to this run's prompts (the job's own styles first). ``save_grid``: the
    run may save its own batch grid (A1111: X/Y/Z cells do, prompt matrix and prompts-from-file lines do
    not). ``save_samples``: False when this run's images must not be saved (prompts-from-file's
    ``--do_not_save_samples true``); None: the job's setting. ``index`` / ``total`` / ``label``: progress
    ("3 out of 9", A1111's ``state.job``). ``request.refiner_checkpoint`` holds a listed checkpoint name
    (or None) when an axis set it: the runner resolves it as ``Backend.submit`` does.
    """
    request: GenerationRequest
    checkpoint: str | None = None
    vae: str | None = None
    styles: list[str] = field(default_factory=list)
    save_grid: bool = True
    save_samples: bool | None = None
    index: int = 0
    total: int = 1
    label: str = ""


Runner = Callable[[ScriptRun], Any]     # returns a ``GenerationOutput`` (``images``: one ImageRecord per image)


@dataclass
class ScriptResult:
    """A script's combined output, in A1111's order (grids first where A1111 puts them first): one
    ``ImageRecord`` per image.

    ``index_of_first_image``: A1111's field (1 when a grid leads). ``grid_count``: how many leading images are
    grids. ``save_as_grid``: indices of the images A1111 saves into the grids folder (when the ``grid_save``
    setting is on), named with ``grid_basename`` (``xyz_grid-NNNN``, ``prompt_matrix-NNNN``); the runs' own
    images were already saved by the runner. ``seed``: A1111's ``info["seed"]``.
    """
    images: list[ImageRecord] = field(default_factory=list)
    index_of_first_image: int = 0
    grid_count: int = 0
    save_as_grid: list[int] = field(default_factory=list)
    save_as_samples: list[int] = field(default_factory=list)   # saved as ordinary images (SD upscale's result)
    grid_basename: str = "grid"
    seed: int | None = None
    runs: int = 0
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def pictures(self) -> list[Image.Image]:
        return [r.image for r in self.images]

    @property
    def infotexts(self) -> list[str]:
        return [r.infotext for r in self.images]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.images]

    # what every script's run loop does
    def stopped(self, stop: Callable[[], bool] | None) -> bool:
        """True (and ``interrupted`` set) once a run was interrupted or ``stop()`` says so: no further run
        starts. ``stop`` is not asked once a run reported the interrupt."""
        if self.interrupted or (stop is not None and stop()):
            self.interrupted = True
        return self.interrupted

    def record(self, out: Any) -> list[ImageRecord]:
        """Count one runner result in (its interrupt, its warnings not seen yet); returns its image records."""
        self.runs += 1
        self.interrupted = bool(getattr(out, "interrupted", False))
        self.warnings += [w for w in getattr(out, "warnings", None) or [] if w not in self.warnings]
        return list(getattr(out, "images", None) or [])


# ---- what the caller tells the scripts about the server -------------------------------------------------
def _no_names() -> list[str]:
    return []


def _random_seed() -> int:
    return random.randrange(MAX_SEED)


@dataclass(frozen=True)
class ScriptEnvironment:
    """The server's lists and limits, as callables (lists change while the server runs).

    ``checkpoints()`` / ``vaes()`` / ``styles()``: names as listed. ``find_checkpoint(title) -> name``
    (e.g. ``Backend.find_checkpoint``: a name, ``name [hash]`` or a file stem; ValueError listing them);
    without it names are matched the same way here. ``limits``: the job's (``jobs.spec.Limits``: the API's max
    size / steps ...); every planned run passes the one request check with them (``jobs.request.check``), then
    ``check_request(request)`` when given (a caller's own rule). ``max_images``: most images one script job may
    generate (None: no limit).
    ``max_grid_megapixels``: A1111's ``img_max_size_mp`` (200). ``new_seed()``: the random seed A1111 fixes
    for a grid (``random.randrange(4294967294)``).
    """
    checkpoints: Callable[[], Sequence[str]] = _no_names
    find_checkpoint: Callable[[str], str] | None = None
    vaes: Callable[[], Sequence[str]] = _no_names
    styles: Callable[[], Sequence[str]] = _no_names
    limits: Limits = field(default_factory=Limits.none)
    check_request: Callable[[GenerationRequest], None] | None = None
    max_images: int | None = None
    max_grid_megapixels: float = 200.0
    new_seed: Callable[[], int] = _random_seed

    def resolve_checkpoint(self, title: str) -> str:
        """A listed checkpoint name for what A1111 calls a checkpoint (name, ``name [hash]``, file stem)."""
        if self.find_checkpoint is not None:
            return self.find_checkpoint(title)
        names = list(self.checkpoints())
        bare = str(title).split(" [", 1)[0].strip()
        for name in names:
            base = name.rsplit("/", 1)[-1]
            if bare in (name, name.rsplit(".", 1)[0], base, base.rsplit(".", 1)[0]):
                return name
        raise ValueError(f"unknown checkpoint {title!r}; available: {', '.join(names) or 'none'}")

    def resolve_vae(self, choice: str) -> str:
        """A1111's VAE axis names: auto/automatic, none, or a listed VAE (name, file name or stem)."""
        key = str(choice).strip()
        if key.lower() in ("auto", "automatic"):
            return "Automatic"
        if key.lower() == "none":
            return "None"
        names = list(self.vaes())
        for name in names:
            base = name.rsplit("/", 1)[-1]
            if key.lower() in (name.lower(), base.lower(), base.rsplit(".", 1)[0].lower()):
                return name
        raise ValueError(f"unknown VAE {choice!r}; available: {', '.join(['Automatic', 'None', *names])}")

    def resolve_style(self, name: str) -> str:
        names = list(self.styles())
        if name in names:
            return name
        raise ValueError(f"unknown style {name!r}; available: {', '.join(names) or 'none'}")

    def check(self, request: GenerationRequest) -> None:
        """A planned run's request: ValueError with the message for the user."""
        check(request, self.limits)
        if self.check_request is not None:
            self.check_request(request)


# ---- argument descriptions and coercion ---------------------------------------------------------------
@dataclass(frozen=True)
class ScriptArg:
    """One positional argument as A1111's ``/sdapi/v1/script-info`` describes it (its ``ScriptArg``)."""
    label: str
    value: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "value": list(self.value) if isinstance(self.value, tuple) else self.value,
                "minimum": self.minimum, "maximum": self.maximum, "step": self.step,
                "choices": list(self.choices) if self.choices is not None else None}


def as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{what} must be true or false (got {value!r})")


def as_number(value: Any, what: str, minimum: float | None = None, maximum: float | None = None,
              integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} must be a number (got {value!r})")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number (got {value!r})") from None
    if integer:
        if not number.is_integer():
            raise ValueError(f"{what} must be a whole number (got {value!r})")
        number = int(number)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{what} must be within {minimum:g}..{maximum:g} (got {value!r})")
    return number


def as_choice(value: Any, what: str, choices: Sequence[str]) -> str:
    if isinstance(value, str):
        for choice in choices:
            if value.strip().lower() == choice.lower():
                return choice
    raise ValueError(f"{what} must be one of {', '.join(choices)} (got {value!r})")


def as_text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text (got {value!r})")
    return value


# ---- the interface ----------------------------------------------------------------------------------
class Script:
    """A selectable script. Subclasses set ``title`` (A1111's title: the API's ``script_name``, matched
    case-insensitively) and ``kinds``, and implement ``args``, ``parse`` and ``run``."""

    title: str = ""
    kinds: tuple[str, ...] = KINDS

    def __init__(self, env: ScriptEnvironment | None = None):
        self.env = env or ScriptEnvironment()

    def with_env(self, env: ScriptEnvironment) -> "Script":
        """This script bound to other lists / limits (e.g. the API's ``check_request`` and ``max_images``)."""
        clone = copy.copy(self)
        clone.env = env
        return clone

    @property
    def name(self) -> str:
        """A1111's ``script.name``: the lower-cased title (``GET /sdapi/v1/scripts`` lists these)."""
        return self.title.lower()

    def args(self, kind: str = "txt2img") -> list[ScriptArg]:
        """The positional arguments, in A1111's order, with A1111's defaults."""
        raise NotImplementedError

    def api_info(self, kind: str = "txt2img") -> dict:
        """A1111's ``ScriptInfo`` for ``GET /sdapi/v1/script-info`` (one entry per tab)."""
        return {"name": self.name, "is_img2img": kind == "img2img", "is_alwayson": False,
                "args": [a.to_dict() for a in self.args(kind)]}

    def parse(self, script_args: Sequence[Any] | None, kind: str = "txt2img"):
        """A1111's positional ``script_args`` -> options (ValueError naming the bad argument)."""
        raise NotImplementedError

    def validate(self, request: GenerationRequest, options, *, styles: Sequence[str] = ()) -> None:
        """Checks that need the request (before queueing); ValueError. Default: nothing more."""

    def run(self, request: GenerationRequest, options, runner: Runner, *, styles: Sequence[str] = (),
            stop: Callable[[], bool] | None = None) -> ScriptResult:
        """Run the script. ``styles``: the job's style names (each run gets them, A1111's ``p.styles``).
        ``stop()``: True once the job was interrupted (no further runs start)."""
        raise NotImplementedError

    # helpers for subclasses
    def _kind(self, kind: str) -> str:
        if kind not in self.kinds:
            raise ValueError(f"{self.title} is not available for {kind} (only {', '.join(self.kinds)})")
        return kind

    def _positional(self, script_args: Sequence[Any] | None, kind: str) -> list[Any]:
        """The arguments with A1111's defaults for the missing trailing ones; too many are refused."""
        spec = self.args(kind)
        if script_args is None:
            script_args = []
        if isinstance(script_args, (str, bytes, dict)) or not isinstance(script_args, Sequence):
            raise ValueError(f"{self.title}: script_args must be a list (got {type(script_args).__name__})")
        if len(script_args) > len(spec):
            raise ValueError(f"{self.title} takes at most {len(spec)} script_args "
                             f"({', '.join(a.label for a in spec)}); got {len(script_args)}")
        return list(script_args) + [a.value for a in spec[len(script_args):]]

    def _what(self, index: int, kind: str) -> str:
        return f"{self.title}: script_args[{index}] ({self.args(kind)[index].label})"


def copy_request(request: GenerationRequest, **changes) -> GenerationRequest:
    """A shallow copy (images are shared, never modified) with ``changes``."""
    return dataclasses.replace(request, **changes)


def fixed_seed(seed: int | None, env: ScriptEnvironment) -> int:
    """A1111's ``get_fixed_seed``: -1 / None / "" -> a random seed drawn once."""
    if seed is None or seed == "" or int(seed) == -1:
        return int(env.new_seed())
    return int(seed)


def check_image_count(title: str, count: int, env: ScriptEnvironment) -> None:
    if env.max_images is not None and count > env.max_images:
        raise ValueError(f"{title} would generate {count} images; at most {env.max_images} are allowed")
