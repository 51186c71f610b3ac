"""A1111's "X/Y/Z plot" (``scripts/xyz_grid.py``, 1.10): one run per combination of up to three axes, a
labelled grid per Z value and one grid of those.

``script_args`` (18, A1111's order; defaults in brackets)::

    0 X type [1 = Seed]   1 X values [""]   2 X values (dropdown list) [[]]
    3 Y type [0 = Nothing] 4 Y values        5 Y values (dropdown)
    6 Z type [0]           7 Z values        8 Z values (dropdown)
    9 Draw legend [true]  10 Include Sub Images [false]  11 Include Sub Grids [false]
    12 Keep -1 for seeds [false]  13/14/15 Vary seeds for X/Y/Z [false]  16 Grid margins (px) [0, 0..500]
    17 Use text inputs instead of dropdowns [false]

Axis types are indices into A1111's axis list *of that tab* (txt2img leaves out the img2img-only axes
and the other way round), so index-based clients mean the same axis here; the label (case-insensitive)
is accepted too. Axes whose setting this server does not have are refused by name when chosen.
Values: CSV (quotes for commas), ranges ``1-5``, ``1-5 (+2)``, ``10-100 [5]`` for number axes; for axes
with a dropdown in A1111 (Sampler, Checkpoint name, Schedule type, VAE, Styles, Refiner checkpoint) the
dropdown list is used unless "Use text inputs" is on -- or the list is empty and the text is not.
Seeds: unless "Keep -1 for seeds", the request's seed and variation seed and every -1 of a Seed / Var. seed
axis become random seeds once for the whole grid ("Fixed X Values" in the grid's infotext).

The list is A1111 1.10's release (``master``); its ``dev`` branch's later "Skip Early CFG" axis is not in it.
Unlike A1111 (which logs and draws a black cell), a run that raises fails the job; values A1111 would
only trip over while running (an unknown sampler, a Prompt S/R text not in the prompt, a bad size) are
refused before anything runs.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ...engine import upscale
from ...engine.request import GenerationRequest
from ...engine.result import ImageRecord
from ...engine.sampling import registry
from .. import infotext as infotext_format
from .base import (
    MAX_SEED,
    Runner,
    Script,
    ScriptArg,
    ScriptEnvironment,
    ScriptResult,
    ScriptRun,
    as_bool,
    as_number,
    as_text,
    check_image_count,
    copy_request,
    fixed_seed,
)
from .grid import GridAnnotation, draw_grid_annotations, image_grid

TITLE = "X/Y/Z plot"


# ---- axis values ------------------------------------------------------------------------------------
def csv_values(text: str) -> list[str]:
    """A1111's ``csv_string_to_list_strip``: CSV rows (every line) flattened, each value stripped."""
    rows = csv.reader(io.StringIO(text or ""), skipinitialspace=True)
    return [value.strip() for value in itertools.chain.from_iterable(rows)]


def csv_text(values: Sequence[str]) -> str:
    """A1111's ``list_to_csv_string`` (what "X Values" records when the dropdown was used)."""
    out = io.StringIO()
    csv.writer(out).writerow(list(values))
    return out.getvalue().strip()


_INT = r"([+-]?\s*\d+)"
_FLOAT = r"([+-]?\s*\d+(?:\.\d*)?)"
_INT_STEP = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\[(\d+)\s*\])?\s*")
_FLOAT_STEP = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\[(\d+)\s*\])?\s*")


def _num(text: str) -> str:
    return text.replace(" ", "")


MAX_AXIS_VALUES = 10_000   # what one axis may expand to: a range like 1-1000000000 is refused before it is built


def _room(value: str, count, out: list) -> None:
    """ValueError when ``count`` more values (a range's length) would make the axis too long."""
    if not len(out) + count <= MAX_AXIS_VALUES:         # also for NaN
        raise ValueError(f"{value!r}: an axis may have at most {MAX_AXIS_VALUES} values")


def _range_length(start: int, stop: int, step: int) -> int:
    try:
        return len(range(start, stop, step))
    except OverflowError:
        return MAX_AXIS_VALUES + 1


def expand_ints(values: Sequence[str]) -> list[Any]:
    """``a-b`` (step 1, end included), ``a-b (+s)``, ``a-b [n]`` (n values, linspace truncated) -> ints;
    other values stay (converted later). Empty values are dropped."""
    out: list[Any] = []
    for value in values:
        if value.strip() == "":
            continue
        if m := _INT_STEP.fullmatch(value):
            step = int(m.group(3)) if m.group(3) is not None else 1
            if step == 0:
                raise ValueError(f"{value!r}: the step of a range cannot be 0")
            start, stop = int(_num(m.group(1))), int(_num(m.group(2))) + 1
            _room(value, _range_length(start, stop, step), out)
            out += list(range(start, stop, step))
        elif m := _INT_COUNT.fullmatch(value):
            count = int(m.group(3)) if m.group(3) is not None else 1
            _room(value, count, out)
            out += [int(x) for x in np.linspace(int(_num(m.group(1))), int(_num(m.group(2))), count).tolist()]
        else:
            out.append(value)
    return out


def expand_floats(values: Sequence[str]) -> list[Any]:
    """As ``expand_ints`` for decimals: ``a-b (+s)`` is ``numpy.arange(a, b + s, s)`` (end included)."""
    out: list[Any] = []
    for value in values:
        if value.strip() == "":
            continue
        if m := _FLOAT_STEP.fullmatch(value):
            start, end = float(_num(m.group(1))), float(_num(m.group(2)))
            step = float(m.group(3)) if m.group(3) is not None else 1.0
            if step == 0:
                raise ValueError(f"{value!r}: the step of a range cannot be 0")
            _room(value, max(0.0, (end + step - start) / step), out)
            out += np.arange(start, end + step, step).tolist()
        elif m := _FLOAT_COUNT.fullmatch(value):
            count = int(m.group(3)) if m.group(3) is not None else 1
            _room(value, count, out)
            out += np.linspace(float(_num(m.group(1))), float(_num(m.group(2))), count).tolist()
        else:
            out.append(value)
    return out


# ---- the axes -------------------------------------------------------------------------------------
@dataclass
class Cell:
    """What one run gets, while the axes are applied to it."""
    request: GenerationRequest
    checkpoint: str | None = None
    vae: str | None = None
    styles: list[str] = field(default_factory=list)


Apply = Callable[[Cell, Any, Sequence[Any], ScriptEnvironment], None]
Confirm = Callable[[Sequence[Any], ScriptEnvironment], None]


@dataclass(frozen=True)
class AxisOption:
    """One entry of A1111's axis list. ``type``: int, float, str or permutations (Prompt order).
    ``label_format``: how a value is labelled on the grid -- "label" ("Steps: 20"), "value", "nothing",
    "basename" (file name without folders), "join" (a permutation joined with ", ").
    ``refused``: why this server cannot vary it (the axis is then refused when chosen)."""
    label: str
    type: str = "str"
    kinds: tuple[str, ...] = ("txt2img", "img2img")
    cost: float = 0.0
    label_format: str = "label"
    choices: Callable[[ScriptEnvironment], list[str]] | None = None
    apply: Apply | None = None
    confirm: Confirm | None = None
    refused: str | None = None

    def format(self, value: Any) -> str:
        if isinstance(value, float):
            value = round(value, 8)
        if self.label_format == "nothing":
            return ""
        if self.label_format == "value":
            return str(value)
        if self.label_format == "basename":
            return os.path.basename(str(value))
        if self.label_format == "join":
            return ", ".join(value)
        return f"{self.label}: {value}"


def _field(name: str) -> Apply:
    def apply(cell: Cell, value, values, env) -> None:
        setattr(cell.request, name, value)
    return apply


def _confirm_upscalers(values, env) -> None:
    for value in values:
        upscale.check_upscaler(value)


def _upscaler_names(env) -> list[str]:
    return list(upscale.upscaler_names())


def _nothing(cell, value, values, env) -> None:
    pass


def _prompt_sr(cell: Cell, value: str, values, env) -> None:
    search = values[0]
    request = cell.request
    if search not in request.prompt and search not in request.negative_prompt:
        raise ValueError(f"Prompt S/R did not find {search} in prompt or negative prompt.")
    request.prompt = request.prompt.replace(search, value)
    request.negative_prompt = request.negative_prompt.replace(search, value)


def _prompt_order(cell: Cell, tokens: tuple[str, ...], values, env) -> None:
    """A1111's ``apply_order``: the tokens' places in the prompt, by first appearance, take the tokens in
    this permutation's order."""
    prompt = cell.request.prompt
    missing = [t for t in tokens if t not in prompt]
    if missing:
        raise ValueError(f"Prompt order: {', '.join(map(repr, missing))} not found in the prompt")
    parts = []
    for _, token in sorted((prompt.find(t), t) for t in tokens):
        n = prompt.find(token)
        parts.append(prompt[:n])
        prompt = prompt[n + len(token):]
    cell.request.prompt = "".join(part + tokens[i] for i, part in enumerate(parts)) + prompt


def _confirm_samplers(values, env) -> None:
    for value in values:
        registry.resolve(value)


def _sampler_names(env) -> list[str]:
    return [spec.name for spec in registry.SAMPLERS]


def _confirm_schedulers(values, env) -> None:
    for value in values:
        registry.resolve(registry.SAMPLERS[0].name, value)


def _scheduler_labels(env) -> list[str]:
    return list(registry.SCHEDULERS.values())


def _confirm_checkpoints(values, env) -> None:
    for value in values:
        env.resolve_checkpoint(value)


def _checkpoint(cell: Cell, value, values, env) -> None:
    cell.checkpoint = env.resolve_checkpoint(value)


def _checkpoint_names(env) -> list[str]:
    return sorted(env.checkpoints(), key=str.casefold)


def _is_none(value) -> bool:
    return value in (None, "", "None", "none")


def _confirm_refiners(values, env) -> None:
    for value in values:
        if not _is_none(value):
            env.resolve_checkpoint(value)


def _refiner(cell: Cell, value, values, env) -> None:
    cell.request.refiner_checkpoint = None if _is_none(value) else env.resolve_checkpoint(value)


def _confirm_vaes(values, env) -> None:
    for value in values:
        env.resolve_vae(value)


def _vae(cell: Cell, value, values, env) -> None:
    cell.vae = env.resolve_vae(value)


def _style_names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def _confirm_styles(values, env) -> None:
    for value in values:
        for name in _style_names(value):
            env.resolve_style(name)


def _styles(cell: Cell, value, values, env) -> None:
    cell.styles.extend(_style_names(value))


def parse_size(value: str) -> tuple[int, int]:
    """A1111's Size axis value ``WIDTHxHEIGHT`` -> (width, height)."""
    width, sep, height = str(value).partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width.strip()), int(height.strip())
    except ValueError:
        raise ValueError(f"invalid size {value!r}; expected WIDTHxHEIGHT, e.g. 512x768") from None


def _confirm_sizes(values, env) -> None:
    for value in values:
        parse_size(value)


def _size(cell: Cell, value, values, env) -> None:
    cell.request.width, cell.request.height = parse_size(value)


_T2I, _I2I = ("txt2img",), ("img2img",)
_SEED_AXES = ("Seed", "Var. seed")          # -1 values become random seeds, fixed for the grid
_NO_SETTING = "this server has no such setting"

# A1111 1.10's axis_options, in its order (so indices mean the same axis), with kinds as A1111 filters them.
AXIS_OPTIONS: tuple[AxisOption, ...] = (
    AxisOption("Nothing", "str", label_format="nothing", apply=_nothing),
    AxisOption("Seed", "int", apply=_field("seed")),
    AxisOption("Var. seed", "int", apply=_field("subseed")),
    AxisOption("Var. strength", "float", apply=_field("subseed_strength")),
    AxisOption("Steps", "int", apply=_field("steps")),
    AxisOption("Hires steps", "int", kinds=_T2I, apply=_field("hr_second_pass_steps")),
    AxisOption("CFG Scale", "float", apply=_field("cfg_scale")),
    AxisOption("Image CFG Scale", "float", kinds=_I2I, refused="it applies to InstructPix2Pix models, "
                                                                  "which are not supported"),
    AxisOption("Prompt S/R", "str", label_format="value", apply=_prompt_sr),
    AxisOption("Prompt order", "permutations", label_format="join", apply=_prompt_order),
    AxisOption("Sampler", "str", kinds=_T2I, label_format="value", choices=_sampler_names,
               apply=_field("sampler_name"), confirm=_confirm_samplers),
    AxisOption("Hires sampler", "str", kinds=_T2I, choices=_sampler_names, apply=_field("hr_sampler_name"),
               confirm=_confirm_samplers),
    AxisOption("Sampler", "str", kinds=_I2I, label_format="value", choices=_sampler_names,
               apply=_field("sampler_name"), confirm=_confirm_samplers),
    AxisOption("Checkpoint name", "str", cost=1.0, label_format="basename", choices=_checkpoint_names,
               apply=_checkpoint, confirm=_confirm_checkpoints),
    AxisOption("Negative Guidance minimum sigma", "float", refused=_NO_SETTING),
    AxisOption("Sigma Churn", "float", apply=_field("s_churn")),
    AxisOption("Sigma min", "float", apply=_field("s_tmin")),
    AxisOption("Sigma max", "float", apply=_field("s_tmax")),
    AxisOption("Sigma noise", "float", apply=_field("s_noise")),
    AxisOption("Schedule type", "str", choices=_scheduler_labels, apply=_field("scheduler"),
               confirm=_confirm_schedulers),
    AxisOption("Schedule min sigma", "float", refused=_NO_SETTING),
    AxisOption("Schedule max sigma", "float", refused=_NO_SETTING),
    AxisOption("Schedule rho", "float", refused=_NO_SETTING),
    AxisOption("Beta schedule alpha", "float", refused="the Beta schedule type is not available"),
    AxisOption("Beta schedule beta", "float", refused="the Beta schedule type is not available"),
    AxisOption("Eta", "float", apply=_field("eta")),
    AxisOption("Clip skip", "int", apply=_field("clip_skip")),
    AxisOption("Denoising", "float", apply=_field("denoising_strength")),
    AxisOption("Initial noise multiplier", "float", apply=_field("initial_noise_multiplier")),
    AxisOption("Extra noise", "float", refused=_NO_SETTING),
    AxisOption("Hires upscaler", "str", kinds=_T2I, choices=_upscaler_names, apply=_field("hr_upscaler"),
               confirm=_confirm_upscalers),
    AxisOption("Cond. Image Mask Weight", "float", kinds=_I2I, refused=_NO_SETTING),
    AxisOption("VAE", "str", cost=0.7, choices=lambda env: ["Automatic", "None", *env.vaes()], apply=_vae,
               confirm=_confirm_vaes),
    AxisOption("Styles", "str", choices=lambda env: list(env.styles()), apply=_styles, confirm=_confirm_styles),
    AxisOption("UniPC Order", "int", cost=0.5, refused=_NO_SETTING),
    AxisOption("Face restore", "str", label_format="value", refused="face restoration is not supported"),
    AxisOption("Token merging ratio", "float", refused=_NO_SETTING),
    AxisOption("Token merging ratio high-res", "float", refused=_NO_SETTING),
    AxisOption("Always discard next-to-last sigma", "str", choices=lambda env: ["False", "True"],
               refused=_NO_SETTING),
    AxisOption("SGM noise multiplier", "str", choices=lambda env: ["False", "True"], refused=_NO_SETTING),
    AxisOption("Refiner checkpoint", "str", cost=1.0, label_format="basename",
               choices=lambda env: ["None", *_checkpoint_names(env)], apply=_refiner, confirm=_confirm_refiners),
    AxisOption("Refiner switch at", "float", apply=_field("refiner_switch_at")),
    AxisOption("RNG source", "str", choices=lambda env: ["GPU", "CPU", "NV"],
               refused="noise is always drawn as A1111's RNG source CPU"),
    AxisOption("FP8 mode", "str", cost=0.9, choices=lambda env: ["Disable", "Enable for SDXL", "Enable"],
               refused=_NO_SETTING),
    AxisOption("Size", "str", apply=_size, confirm=_confirm_sizes),
)


def axis_options(kind: str = "txt2img") -> list[AxisOption]:
    """The axis list of one tab, as A1111's ``current_axis_options`` (the indices clients send)."""
    return [option for option in AXIS_OPTIONS if kind in option.kinds]


# ---- options --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    option: AxisOption
    values: tuple[Any, ...]       # typed (ints, floats, strings, token tuples)
    text: str                     # what the infotext records ("X Values")

    @property
    def label(self) -> str:
        return self.option.label


@dataclass(frozen=True)
class XYZOptions:
    kind: str
    x: Axis
    y: Axis
    z: Axis
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds_x: bool = False
    vary_seeds_y: bool = False
    vary_seeds_z: bool = False
    margin_size: int = 0
    csv_mode: bool = False


@dataclass
class _PlannedCell:
    ix: int
    iy: int
    iz: int
    run: ScriptRun


@dataclass
class _Plan:
    xs: list
    ys: list
    zs: list
    cells: list[_PlannedCell]     # in processing order


def _number_text(value):
    """A number sent where A1111 takes text (``20`` for ``"20"``) is taken as its text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class XYZPlot(Script):
    title = TITLE

    def args(self, kind: str = "txt2img") -> list[ScriptArg]:
        labels = tuple(option.label for option in axis_options(kind))
        out = []
        for letter, default in (("X", labels[1]), ("Y", labels[0]), ("Z", labels[0])):
            out += [ScriptArg(f"{letter} type", default, choices=labels), ScriptArg(f"{letter} values", ""),
                    ScriptArg(f"{letter} values", ())]
        return out + [
            ScriptArg("Draw legend", True), ScriptArg("Include Sub Images", False),
            ScriptArg("Include Sub Grids", False), ScriptArg("Keep -1 for seeds", False),
            ScriptArg("Vary seeds for X", False), ScriptArg("Vary seeds for Y", False),
            ScriptArg("Vary seeds for Z", False),
            ScriptArg("Grid margins (px)", 0, minimum=0, maximum=500, step=2),
            ScriptArg("Use text inputs instead of dropdowns", False),
        ]

    # ---- parsing ----
    def parse(self, script_args, kind: str = "txt2img") -> XYZOptions:
        self._kind(kind)
        a = self._positional(script_args, kind)
        csv_mode = as_bool(a[17], self._what(17, kind))
        axes = []
        for n, letter in enumerate("XYZ"):
            option = self._axis_type(a[3 * n], kind, 3 * n)
            axes.append(self._axis(letter, option, a[3 * n + 1], a[3 * n + 2], csv_mode, kind, 3 * n + 1))
        flags = [as_bool(a[i], self._what(i, kind)) for i in range(9, 16)]
        margin = as_number(a[16], self._what(16, kind), 0, 500, integer=True)
        return XYZOptions(kind, *axes, *flags, margin_size=int(margin), csv_mode=csv_mode)

    def _axis_type(self, value, kind: str, index: int) -> AxisOption:
        options = axis_options(kind)
        what = self._what(index, kind)
        if value is None:
            return options[0]
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            for option in options:
                if option.label.lower() == value.strip().lower():
                    break
            else:
                raise ValueError(f"{what}: unknown axis type {value!r}; {kind} has: "
                                 + ", ".join(o.label for o in options))
        else:
            i = as_number(value, what, integer=True)
            if not 0 <= i < len(options):
                raise ValueError(f"{what}: axis type index {i} is out of range 0..{len(options) - 1} for {kind}")
            option = options[int(i)]
        if option.refused:
            raise ValueError(f"{what}: the {option.label!r} axis is not supported: {option.refused}")
        return option

    def _axis(self, letter: str, option: AxisOption, text, dropdown, csv_mode: bool, kind: str, index: int) -> Axis:
        what = f"{self.title}: {letter} values"
        text = as_text(_number_text(text), self._what(index, kind))
        if dropdown is None:
            dropdown = []
        if isinstance(dropdown, str) or not isinstance(dropdown, Sequence):
            raise ValueError(f"{self._what(index + 1, kind)} must be a list of values (got {dropdown!r})")
        dropdown = [as_text(_number_text(v), self._what(index + 1, kind)) for v in dropdown]
        if option.label == "Nothing":
            return Axis(option, (0,), "")
        if option.choices is not None and not csv_mode and dropdown:
            raw, text = list(dropdown), csv_text(dropdown)
        else:
            raw = csv_values(text)
        try:
            if option.type == "int":
                expanded = expand_ints(raw)
                values = [self._convert(v, int, "a whole number") for v in expanded]
            elif option.type == "float":
                expanded = expand_floats(raw)
                values = [self._convert(v, float, "a number") for v in expanded]
            elif option.type == "permutations":
                if math.factorial(min(len(raw), 20)) > MAX_AXIS_VALUES:
                    raise ValueError(f"{len(raw)} values make too many orders; an axis may have at most "
                                     f"{MAX_AXIS_VALUES} values")
                values = list(itertools.permutations(raw))
            else:
                values = list(raw)
            if not values or (option.type == "str" and all(v == "" for v in values)):
                raise ValueError(f"no values given for the {option.label} axis")
            if option.label == "Prompt S/R" and values[0] == "":
                raise ValueError("the first Prompt S/R value (the text to search for) is empty")
            if option.confirm is not None:
                option.confirm(values, self.env)
        except ValueError as exc:
            raise ValueError(f"{what} ({option.label}): {exc}") from None
        return Axis(option, tuple(values), text)

    @staticmethod
    def _convert(value, kind, words: str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return kind(value)
        try:
            return kind(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not {words}") from None

    # ---- planning ----
    def _order(self, options: XYZOptions) -> tuple[str, str, str]:
        """A1111's loop nesting: the costliest axis (checkpoint, VAE) outermost; by default z, y, x."""
        cx, cy, cz = options.x.option.cost, options.y.option.cost, options.z.option.cost
        first, second = "z", "y"
        if cx > cy and cx > cz:
            first, second = "x", ("y" if cy > cz else "z")
        elif cy > cx and cy > cz:
            first, second = "y", ("x" if cx > cz else "z")
        elif cz > cx and cz > cy:
            first, second = "z", ("x" if cx > cy else "y")
        third = next(a for a in "xyz" if a not in (first, second))
        return first, second, third

    def _plan(self, request: GenerationRequest, options: XYZOptions, styles: Sequence[str]) -> _Plan:
        env = self.env
        base = copy_request(request)
        axes = {"x": options.x, "y": options.y, "z": options.z}
        values = {}
        for name, axis in axes.items():
            vals = list(axis.values)
            if not options.no_fixed_seeds and axis.label in _SEED_AXES:
                vals = [int(env.new_seed()) if v in (None, "", -1) else v for v in vals]
            values[name] = vals
        xs, ys, zs = values["x"], values["y"], values["z"]
        if not options.no_fixed_seeds:                  # A1111's fix_seed: the seed and the variation seed
            base.seed = fixed_seed(base.seed, env)
            base.subseed = fixed_seed(base.subseed, env)
        total = len(xs) * len(ys) * len(zs)
        grid_mp = round(total * base.width * base.height / 1_000_000)
        if grid_mp >= env.max_grid_megapixels:
            raise ValueError(f"{self.title}: the grid would be too large ({grid_mp} megapixels; "
                             f"the limit is {env.max_grid_megapixels:g})")
        check_image_count(self.title, total * base.batch_size * base.n_iter, env)

        ranges = {"x": range(len(xs)), "y": range(len(ys)), "z": range(len(zs))}
        first, second, third = self._order(options)
        cells = []
        for i1 in ranges[first]:
            for i2 in ranges[second]:
                for i3 in ranges[third]:
                    at = {first: i1, second: i2, third: i3}
                    ix, iy, iz = at["x"], at["y"], at["z"]
                    cell = Cell(copy_request(base), styles=list(styles))
                    try:
                        options.x.option.apply(cell, xs[ix], xs, env)
                        options.y.option.apply(cell, ys[iy], ys, env)
                        options.z.option.apply(cell, zs[iz], zs, env)
                        seed_offset = 0
                        xdim = len(xs) if options.vary_seeds_x else 1
                        ydim = len(ys) if options.vary_seeds_y else 1
                        if options.vary_seeds_x:
                            seed_offset += ix
                        if options.vary_seeds_y:
                            seed_offset += iy * xdim
                        if options.vary_seeds_z:
                            seed_offset += iz * xdim * ydim
                        cell.request.seed += seed_offset
                        env.check(cell.request)
                    except ValueError as exc:
                        raise ValueError(f"{self.title}: {exc}") from None
                    index = ix + iy * len(xs) + iz * len(xs) * len(ys)
                    run = ScriptRun(cell.request, cell.checkpoint, cell.vae, cell.styles, save_grid=True,
                                    index=len(cells), total=total, label=f"{index + 1} out of {total}")
                    cells.append(_PlannedCell(ix, iy, iz, run))
        return _Plan(xs, ys, zs, cells)

    def validate(self, request: GenerationRequest, options: XYZOptions, *, styles: Sequence[str] = ()) -> None:
        self._plan(request, options, styles)

    # ---- running ----
    def run(self, request: GenerationRequest, options: XYZOptions, runner: Runner, *, styles: Sequence[str] = (),
            stop: Callable[[], bool] | None = None) -> ScriptResult:
        plan = self._plan(request, options, styles)
        xs, ys, zs = plan.xs, plan.ys, plan.zs
        nx, ny, nz = len(xs), len(ys), len(zs)
        size = nx * ny * nz
        cells: list[ImageRecord | None] = [None] * size
        result = ScriptResult(grid_basename="xyz_grid")
        first_seed = None
        for planned in plan.cells:
            if result.stopped(stop):
                break
            records = result.record(runner(planned.run))
            if not records:
                continue
            idx = planned.ix + planned.iy * nx + planned.iz * nx * ny
            # A1111's cell is the run's first image; for several images, the run's grid (opts.return_grid)
            first = records[0]
            cells[idx] = first if len(records) == 1 else first.replace(image=image_grid([r.image for r in records]))
            if first_seed is None:
                first_seed = first.seed
        if not any(cell is not None for cell in cells):
            return result

        cell_size = next(cell for cell in cells if cell is not None).image.size
        for i, cell in enumerate(cells):
            if cell is None:                 # a run that failed or was not started: a black cell, as A1111
                cells[i] = ImageRecord(Image.new("RGB", cell_size), None)
        images = [cell.image for cell in cells]

        hor = [[GridAnnotation(options.x.option.format(x))] for x in xs]
        ver = [[GridAnnotation(options.y.option.format(y))] for y in ys]
        titles = [[GridAnnotation(options.z.option.format(z))] for z in zs]
        sub_grids = []
        for iz in range(nz):
            grid_cells = images[iz * nx * ny:(iz + 1) * nx * ny]
            grid = image_grid(grid_cells, rows=ny)
            if options.draw_legend:
                grid = draw_grid_annotations(grid, max(c.width for c in grid_cells), max(c.height for c in grid_cells),
                                             hor, ver, options.margin_size)
            sub_grids.append(grid)
        main = image_grid(sub_grids, rows=1)
        if options.draw_legend:
            main = draw_grid_annotations(main, max(g.width for g in sub_grids), max(g.height for g in sub_grids),
                                         titles, [[GridAnnotation()]])

        def grid_record(image, cell: ImageRecord, with_z: bool) -> ImageRecord:
            text = self._grid_infotext(cell.infotext, options, with_z=with_z, xs=xs, ys=ys, zs=zs)
            return cell.replace(image=image, infotext=text, path=None)

        result.images.append(grid_record(main, cells[0], True))
        if options.include_sub_grids:
            result.images += [grid_record(grid, cells[iz * nx * ny], False) for iz, grid in enumerate(sub_grids)]
        result.grid_count = len(result.images)
        if options.include_lone_images:
            result.images += cells
        result.index_of_first_image = 1
        # A1111 saves the main grid, and the sub-grids too with "Include Sub Grids" when there are several
        result.save_as_grid = list(range(1 + nz)) if options.include_sub_grids and nz > 1 else [0]
        result.seed = first_seed
        return result

    def _grid_infotext(self, text: str | None, options: XYZOptions, *, with_z: bool, xs, ys, zs) -> str:
        """The cell's infotext with A1111's ``Script`` / ``X Type`` / ``X Values`` / ``Fixed X Values`` ...
        parameters (before ``Version``)."""
        if not text:
            return ""
        extra: dict[str, str] = {"Script": self.title}
        fixed = not options.no_fixed_seeds
        axes = [("X", options.x, xs), ("Y", options.y, ys)] + ([("Z", options.z, zs)] if with_z else [])
        for letter, axis, vals in axes:
            if axis.label == "Nothing":
                continue
            extra[f"{letter} Type"] = axis.label
            extra[f"{letter} Values"] = axis.text
            if axis.label in _SEED_AXES and fixed:
                extra[f"Fixed {letter} Values"] = ", ".join(str(v) for v in vals)
        return infotext_format.with_params(text, extra)


__all__ = [
    "AXIS_OPTIONS",
    "MAX_SEED",
    "Axis",
    "AxisOption",
    "XYZOptions",
    "XYZPlot",
    "axis_options",
    "csv_values",
    "expand_floats",
    "expand_ints",
    "parse_size",
]
