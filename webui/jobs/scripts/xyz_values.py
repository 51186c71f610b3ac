"""X/Y/Z plot axis values: A1111's CSV parsing of an axis's text and the expansion of number ranges
(``1-5``, ``1-5 (+2)``, ``10-100 [5]``), with the limit on how many values one axis may have."""
from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np


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
