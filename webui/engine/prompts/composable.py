"""Composable diffusion (``a cat AND a dog :1.2``) and extra-network tags (``<lora:name:0.8>``).

Both follow A1111: a prompt is split on the word ``AND``; a sub-prompt ending in ``:number`` gets that
weight (also with no ``AND``: ``a cat :1.5`` alone is weighted 1.5). Tags ``<kind:args>`` are removed
from the text before anything else and collected by kind, their arguments split on ``:``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
_TAG = re.compile(r"<(\w+):([^>]+)>")


def subprompts(prompt: str) -> list[tuple[str, float]]:
    """``"a AND b :1.2"`` -> ``[("a", 1.0), ("b", 1.2)]``."""
    out = []
    for part in _AND.split(prompt):
        m = _WEIGHT.search(part)
        text, weight = m.groups() if m is not None else (part, None)
        out.append((text, 1.0 if weight is None else float(weight)))
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
    return _TAG.sub(take, prompt), found
