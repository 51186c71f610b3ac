"""What extensions see of one job (``JobContext``) and what the engine calls for them (``JobHooks``).

Extensions reach these types through ``webui.hooks.api``; the engine only calls the callbacks it is given.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoint import StableDiffusionModel
from .patches import JobPatches
from .prompts.composable import ExtraNetworkTag
from .request import GenerationRequest


@dataclass
class JobContext:
    """What extensions see of one job, and what they may change (``patches``, ``infotext``, ``warnings``).

    ``script_args``: per-extension arguments by extension title (from its UI section or the API's
    ``alwayson_scripts``); ``steps``: sampler steps of this run; ``size``: (width, height) in pixels;
    ``infotext``: A1111 keys the extensions add to every image's parameters."""
    request: GenerationRequest
    model: StableDiffusionModel
    device: torch.device
    patches: JobPatches
    infotext: dict
    warnings: list[str]
    script_args: Mapping[str, Any]
    steps: int
    size: tuple[int, int]
    batch_size: int


ExtraNetworkHandler = Callable[[list[ExtraNetworkTag], JobContext], None]


@dataclass
class JobHooks:
    """Extension callbacks for one job: ``prepare(ctx)`` each, then the tag handlers by kind."""
    prepare: Sequence[Callable[[JobContext], None]] = ()
    networks: Mapping[str, ExtraNetworkHandler] = field(default_factory=dict)
    script_args: Mapping[str, Any] = field(default_factory=dict)

    def run(self, ctx: JobContext, tags: list[ExtraNetworkTag]) -> None:
        """Every ``prepare``, then each tag kind's handler; tags of a kind nobody handles become a warning (they
        are removed from the prompt all the same)."""
        for prepare in self.prepare:
            prepare(ctx)
        by_kind: dict[str, list[ExtraNetworkTag]] = {}
        for tag in tags:
            by_kind.setdefault(tag.kind, []).append(tag)
        for kind, found in by_kind.items():
            handler = self.networks.get(kind)
            if handler is None:
                known = ", ".join(sorted(self.networks)) or "none"
                ctx.warnings.append(f"{' '.join(t.text for t in found)}: no extension handles <{kind}:...> tags "
                                    f"(known kinds: {known}); removed from the prompt")
                continue
            handler(found, ctx)
