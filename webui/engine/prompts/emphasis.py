"""Emphasis: ``(text)`` x1.1, ``[text]`` /1.1, ``(text:1.3)``, nesting, ``\\(`` escapes, ``BREAK``.

The result equals A1111's ``parse_prompt_attention``: a list of ``(text, weight)`` pieces, neighbouring
pieces of equal weight merged; ``BREAK`` (a whole word) becomes the piece ``("BREAK", -1.0)``; unclosed
brackets apply to the rest of the prompt; a closing bracket with nothing open is ordinary text.
"""
from __future__ import annotations

import re

ROUND, SQUARE = 1.1, 1 / 1.1
BREAK = ("BREAK", -1.0)

# Scanner, tried in order at each position: escape, lone backslash, openers, ":weight)" closer, closers,
# a run of ordinary characters, a lone colon.
_TOKEN = re.compile(r"""
    \\(?P<escaped>[()\[\]\\])
  | (?P<backslash>\\)
  | (?P<open>[(\[])
  | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+|:)
""", re.VERBOSE)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse(text: str) -> list[tuple[str, float]]:
    """``"a (b:1.3) [c]"`` -> ``[("a ", 1.0), ("b", 1.3), (" ", 1.0), ("c", 0.909...)]``."""
    pieces: list[list] = []                    # [text, weight], mutable while brackets close
    opened: dict[str, list[int]] = {"(": [], "[": []}

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    def add_text(chunk: str) -> None:
        for n, part in enumerate(_BREAK.split(chunk)):
            if n:
                pieces.append(list(BREAK))
            pieces.append([part, 1.0])

    for m in _TOKEN.finditer(text):
        if m["escaped"] is not None:
            pieces.append([m["escaped"], 1.0])
        elif m["backslash"] is not None:
            pieces.append(["", 1.0])            # a lone backslash vanishes (an empty piece, as A1111)
        elif m["open"] is not None:
            opened[m["open"]].append(len(pieces))
        elif m["weight"] is not None and opened["("] and _is_float(m["weight"]):
            scale(opened["("].pop(), float(m["weight"]))
        elif m["close"] == ")" and opened["("]:
            scale(opened["("].pop(), ROUND)
        elif m["close"] == "]" and opened["["]:
            scale(opened["["].pop(), SQUARE)
        else:
            add_text(m.group(0))
    for start in opened["("]:
        scale(start, ROUND)
    for start in opened["["]:
        scale(start, SQUARE)

    if not pieces:
        return [("", 1.0)]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w in merged]


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
