"""Composable diffusion (``a cat AND a dog :1.2``) and extra-network tags (``<lora:name:0.8>``).

Both follow A1111: a prompt is split on the word ``AND``; a sub-prompt ending in ``:number`` gets that
weight (also with no ``AND``: ``a cat :1.5`` alone is weighted 1.5). Tags ``<kind:args>`` are removed
from the text before anything else and collected by kind, their arguments split on ``:``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_AND = re.compile(r"\bAND\b")
# A1111 matches each part with ``^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$``; that regex takes
# quadratic time on long runs of spaces, so the same split is done here from the part's end: the weight is
# what follows the last ':' when that is a number alone (spaces around it allowed).
_WEIGHT = re.compile(r"\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*")
_TAG = re.compile(r"<(\w+):([^>]+)>")


def subprompts(prompt: str) -> list[tuple[str, float]]:
    """``"a AND b :1.2"`` -> ``[("a", 1.0), ("b", 1.2)]``."""
    out = []
    for part in _AND.split(prompt):
        head, colon, tail = part.rpartition(":")
        m = _WEIGHT.fullmatch(tail) if colon else None
        if m is not None:
            out.append((head.rstrip(), float(m.group(1))))
        else:
            out.append((part.rstrip(), 1.0))
    return out


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One ``<kind:args>`` tag: ``kind`` ("lora"), ``args`` (["name", "0.8"]), ``text`` as written."""
    kind: str
    args: tuple[str, ...]
    text: str


def extra_network_tags(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """The prompt without its tags, and the tags in order."""
    found: list[ExtraNetworkTag] = []

    def take(m: re.Match) -> str:
        found.append(ExtraNetworkTag(m.group(1), tuple(m.group(2).split(":")), m.group(0)))
        return ""
    # A tag never spans a '>', so each piece up to a '>' is searched on its own (the same matches as one
    # search of the whole prompt); the rest after the last '>' holds no tag. Searching the whole prompt
    # takes quadratic time on many "<a:" with no '>' after them.
    pieces = prompt.split(">")
    out = [_TAG.sub(take, piece + ">") for piece in pieces[:-1]]
    return "".join(out) + pieces[-1], found
