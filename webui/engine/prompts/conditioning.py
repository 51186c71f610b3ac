"""Prompts -> CLIP conditioning as A1111 builds it, and the per-step choice during sampling.

``PromptEncoder.encode(texts)`` is A1111's ``FrozenCLIPEmbedderWithCustomWords.forward``: the texts are
chunked (``chunks``), shorter ones padded with empty chunks to the longest, and each chunk index is
encoded as one batch; embeddings are written over their placeholder tokens' input vectors; emphasis
multiplies each token's output vector by its weight and ("Original") rescales the batch so its mean is
unchanged. The chunks' outputs are concatenated: ``[len(texts), 77 * chunks, D]``.

A prompt with edits or alternation is encoded as one batch of its distinct texts (``schedule``); ``AND``
parts are encoded separately and weighted (``multicond``). During sampling the denoiser asks each
schedule for the conditioning of its current model call (A1111 counts calls: the schedule of a
second-order sampler spans twice the steps).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..text import TextEncoder
from . import composable, schedule as sched
from .chunks import PromptChunker
from .embeddings import Embedding, EmbeddingDatabase


@dataclass
class PromptOptions:
    """A1111's settings of the same names; ``clip_skip`` is ``CLIP_stop_at_last_layers``."""
    clip_skip: int = 1
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    use_old_scheduling: bool = False


PROMPT_SETTINGS = ("emphasis", "comma_padding_backtrack", "use_old_scheduling")   # settings = request fields


@dataclass
class CondSchedule:
    """``[(last_step, cond [T, D]), ...]``: ``cond`` applies to the model calls up to ``last_step``."""
    entries: list[tuple[int, torch.Tensor]]

    def index(self, step: int) -> int:
        for i, (end, _) in enumerate(self.entries):
            if step <= end:
                return i
        return 0                            # past the end: A1111 falls back to the first entry

    def at(self, step: int) -> torch.Tensor:
        return self.entries[self.index(step)][1]


@dataclass
class MultiCond:
    """``AND`` parts: ``[(schedule, weight), ...]``."""
    parts: list[tuple[CondSchedule, float]]
    _stacked: dict = field(default_factory=dict, repr=False)   # entry indices -> stacked conds

    def at(self, step: int) -> tuple[torch.Tensor, list[float]]:
        """``([parts, T, D], weights)``; parts of different lengths are padded by repeating their last vector.
        The stacked tensor is built once per combination of entries (the same object on later calls)."""
        key = tuple(s.index(step) for s, _ in self.parts)
        if key not in self._stacked:
            conds = [s.entries[i][1] for (s, _), i in zip(self.parts, key)]
            longest = max(c.shape[0] for c in conds)
            conds = [c if c.shape[0] == longest else torch.cat([c, c[-1:].expand(longest - c.shape[0], -1)])
                     for c in conds]
            self._stacked[key] = torch.stack(conds)
        return self._stacked[key], [w for _, w in self.parts]


@dataclass
class PromptEncoder:
    text_encoder: TextEncoder
    embeddings: EmbeddingDatabase | None = None
    options: PromptOptions = field(default_factory=PromptOptions)
    hash_cache: object = None
    used_embeddings: dict[str, Embedding] = field(default_factory=dict)
    emphasis_used: bool = False
    ti_hashes: str = ""

    def chunker(self) -> PromptChunker:
        return make_chunker(self.text_encoder, self.embeddings, self.options)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        chunker = self.chunker()
        split: dict[str, list] = {}
        for text in texts:
            if text not in split:
                split[text] = chunker.split(text).chunks
        per_text = [split[text] for text in texts]
        used: dict[str, Embedding] = {}
        outputs = []
        for i in range(max(len(c) for c in per_text)):
            batch = [c[i] if i < len(c) else chunker.empty_chunk() for c in per_text]
            fixes = [chunk.fixes for chunk in batch]
            for row in fixes:
                for _, embedding in row:
                    used[embedding.name] = embedding
            z = self.text_encoder.encode_ids([chunk.tokens for chunk in batch], self.options.clip_skip,
                                             fixes=fixes).float()
            outputs.append(apply_emphasis(z, torch.tensor([chunk.weights for chunk in batch], device=z.device),
                                          self.options.emphasis))
        self.used_embeddings.update(used)
        if used:
            # as A1111: each encoding call puts its own embeddings in front of those recorded before
            hashes = [infotext_hash(name, e.short_hash(self.hash_cache)) for name, e in used.items()]
            self.ti_hashes = ", ".join(hashes + ([self.ti_hashes] if self.ti_hashes else []))
        if self.options.emphasis != "Original" and any("(" in t or "[" in t for t in texts):
            self.emphasis_used = True
        return torch.cat(outputs, dim=1)

    def schedule(self, prompt: str, steps: int) -> CondSchedule:
        entries = sched.schedule(prompt, steps, old_scheduling=self.options.use_old_scheduling)
        conds = self.encode([text for _, text in entries])
        return CondSchedule([(end, cond) for (end, _), cond in zip(entries, conds)])

    def multicond(self, prompt: str, steps: int) -> MultiCond:
        cache: dict[str, CondSchedule] = {}
        parts = []
        for text, weight in composable.subprompts(prompt):
            if text not in cache:
                cache[text] = self.schedule(text, steps)
            parts.append((cache[text], weight))
        return MultiCond(parts)

    def infotext(self) -> dict:
        """``TI hashes`` and ``Emphasis`` for the images made with what was encoded so far."""
        params = {}
        if self.ti_hashes:
            params["TI hashes"] = self.ti_hashes
        if self.emphasis_used:
            params["Emphasis"] = self.options.emphasis
        return params


def infotext_hash(name: str, short_hash: str) -> str:
    """One ``name: hash`` entry of A1111's ``TI hashes`` / ``Lora hashes`` (``:`` and ``,`` dropped from the name)."""
    return f"{name.replace(':', '').replace(',', '')}: {short_hash}"


def make_chunker(text_encoder: TextEncoder, embeddings: EmbeddingDatabase | None,
                 options: PromptOptions) -> PromptChunker:
    return PromptChunker(text_encoder.tokenize, text_encoder.bos_id, text_encoder.eos_id, text_encoder.comma_id,
                         embeddings, emphasis=options.emphasis, comma_backtrack=options.comma_padding_backtrack)


def apply_emphasis(z: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """``z`` [B, 77, D] scaled per token. "Original": then rescaled so the batch mean is unchanged."""
    if mode in ("None", "Ignore"):
        return z
    weighted = z * weights.to(z.dtype)[..., None]
    if mode == "No norm":
        return weighted
    return weighted * (z.mean() / weighted.mean())
