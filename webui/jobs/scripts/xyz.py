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

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ...engine.request import GenerationRequest
from ...engine.result import ImageRecord
from .. import infotext as infotext_format
from .base import (
    MAX_SEED,
    Runner,
    Script,
    ScriptArg,
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
from .xyz_axes import AXIS_OPTIONS, AxisOption, Cell, axis_options, parse_size
from .xyz_values import MAX_AXIS_VALUES, csv_text, csv_values, expand_floats, expand_ints

TITLE = "X/Y/Z plot"

_SEED_AXES = ("Seed", "Var. seed")          # -1 values become random seeds, fixed for the grid


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
