"""Prompt editing and alternation: which text the model sees at each step.

- ``[from:to:when]`` uses ``from`` up to step ``when`` and ``to`` after it; ``[to:when]`` adds ``to`` after
  ``when``; ``[from::when]`` removes ``from`` after ``when``. ``when`` with a decimal point (``0.25``, ``.5``,
  ``1.0``) is a fraction of the steps, a whole number is a step (A1111's rule since 1.6; with
  ``old_scheduling`` any ``when < 1`` is a fraction and anything else a step).
- ``[a|b|c]`` alternates every step (a on step 1, b on step 2, ...); options may be empty.
- Both nest, and ``(...)`` / ``[...]`` emphasis inside them is kept as text for the emphasis parser.

The grammar is A1111's: a bracket group is a schedule, an alternation or an emphasis group when its
content fits one of them; at the top level a bracket that fits nothing is plain text, and a prompt with a
stray ``|`` or a trailing lone backslash is not scheduled at all (A1111's parser rejects it as a whole), nor
is one with brackets nested deeper than ``MAX_DEPTH`` (100) levels.
``schedule(prompt, steps)`` returns ``[(last_step, text), ...]`` like A1111's
``get_learned_conditioning_prompt_schedules``: ``text`` applies to the (1-based) steps up to ``last_step``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))\s*")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
# A prompt with brackets nested deeper than this is not scheduled at all (the parser recurses once per level:
# a prompt of thousands of "[" would otherwise exhaust Python's stack).
MAX_DEPTH = 100


class _NoParse(Exception):
    pass


class _TooDeep(Exception):
    pass


@dataclass
class _Group:            # emphasis group, kept as text: open, parts joined by ":", close
    open: str
    parts: list
    close: str


@dataclass
class _Scheduled:
    before: list
    after: list
    when: str            # the number as written
    step: int = 0


@dataclass
class _Alternate:
    options: list


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.depth = 0

    def top(self) -> list:
        """(prompt | stray brackets)*: a bracket group that does not parse is text."""
        nodes, i, text = [], 0, self.text
        while i < len(text):
            ch = text[i]
            if ch in "([":
                try:
                    node, end = self.group(i)
                    if not (isinstance(node, _Scheduled) and _even_stray_run(text, end)):
                        nodes.append(node)
                        i = end
                        continue
                except _NoParse:
                    pass
            if ch in "[]():":
                nodes.append(ch)
                i += 1
                continue
            m = _PLAIN.match(text, i)
            if m is None:          # '|' outside brackets or a trailing lone backslash
                raise _NoParse
            nodes.append(m.group(0))
            i = m.end()
        return nodes

    def prompt(self, i: int) -> tuple[list, int]:
        """A run of plain text and complete groups; stops before ':', '|', ')', ']' or the end."""
        nodes, text = [], self.text
        while i < len(text):
            ch = text[i]
            if ch in "([":
                node, i = self.group(i)
                nodes.append(node)
            elif ch in ":|)]":
                break
            else:
                m = _PLAIN.match(text, i)
                if m is None:
                    raise _NoParse
                nodes.append(m.group(0))
                i = m.end()
        return nodes, i

    def group(self, i: int) -> tuple[object, int]:
        if self.depth >= MAX_DEPTH:
            raise _TooDeep
        self.depth += 1
        try:
            return self._group(i)
        finally:
            self.depth -= 1

    def _group(self, i: int) -> tuple[object, int]:
        opener, text = self.text[i], self.text
        closer = ")" if opener == "(" else "]"
        parts, seps = [], []
        i += 1
        while True:
            nodes, i = self.prompt(i)
            parts.append(nodes)
            if i >= len(text):
                raise _NoParse
            ch = text[i]
            i += 1
            if ch == closer:
                break
            if ch in ")]":
                raise _NoParse
            seps.append(ch)
        if opener == "(":
            if "|" in seps or len(seps) > 1:
                raise _NoParse
            return _Group("(", parts, ")"), i
        if not seps:
            return _Group("[", parts, "]"), i
        if all(s == "|" for s in seps):
            return _Alternate(parts), i
        if all(s == ":" for s in seps) and len(seps) <= 2:
            last = parts[-1]
            if len(last) == 1 and isinstance(last[0], str) and _NUMBER.fullmatch(last[0]):
                when = _NUMBER.fullmatch(last[0]).group(1)
                before = parts[0] if len(parts) == 3 else None
                return _Scheduled(before, parts[-2], when), i
        raise _NoParse


def _even_stray_run(text: str, i: int) -> bool:
    """A1111's Earley parser reads a top-level schedule followed directly by an even number of stray
    brackets (``[a:b:5]))``) as plain text; so do we, to give the same picture."""
    run = len(text[i:]) - len(text[i:].lstrip("[]():"))
    return run >= 2 and run % 2 == 0


def _when_step(when: str, steps: int, old_scheduling: bool, offsets: tuple[int, float] = (0, 0.0)) -> int:
    value = float(when)                  # may be inf ("1e999"): clamped below, before int()
    if old_scheduling:
        value = value * steps if value < 1 else value
    elif "." in when:
        value = (value - offsets[1]) * steps
    else:
        value = value - offsets[0]
    if math.isnan(value):                # inf * 0 steps
        return 0
    return int(min(steps, max(value, -1)))


def _collect(nodes, steps: int, old_scheduling: bool, found: set[int], offsets: tuple[int, float] = (0, 0.0)) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            node.step = _when_step(node.when, steps, old_scheduling, offsets)
            if node.step >= 1:
                found.add(node.step)
            for side in (node.before or [], node.after):
                _collect(side, steps, old_scheduling, found, offsets)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect(option, steps, old_scheduling, found, offsets)
        elif isinstance(node, _Group):
            for part in node.parts:
                _collect(part, steps, old_scheduling, found, offsets)


def _render(nodes, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            out.append(_render((node.before or []) if step <= node.step else node.after, step))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
        else:
            out.append(node.open + ":".join(_render(p, step) for p in node.parts) + node.close)
    return "".join(out)


def schedule(prompt: str, steps: int, *, old_scheduling: bool = False,
             first_pass_steps: int | None = None) -> list[tuple[int, str]]:
    """``[(last_step, text), ...]`` in step order; the last entry ends at ``steps``.

    ``first_pass_steps``: this is hires fix's second pass (``steps`` of it) after a first pass of that many
    steps; as in A1111, ``when`` then counts on from the first pass: a whole number N is step N - first
    pass steps, a decimal x is the fraction x - 1 of the second pass (``[a:b:1.5]`` switches halfway
    through it), so a prompt can be edited for the second pass alone."""
    try:
        tree = _Parser(prompt).top()
    except (_NoParse, _TooDeep):
        return [(steps, prompt)]
    ends = {steps}
    offsets = (first_pass_steps, 1.0) if first_pass_steps is not None and not old_scheduling else (0, 0.0)
    _collect(tree, steps, old_scheduling, ends, offsets)
    return [(end, _render(tree, end)) for end in sorted(ends)]
