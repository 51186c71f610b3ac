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

Families with several text encoders (SDXL: CLIP-L and OpenCLIP bigG) chunk the text once (the encoders
share the tokenizer) and run every encoder on the same chunks, each with its own padding, layer, textual
inversion vectors and emphasis rescale, as A1111's per-embedder classes do; the outputs are concatenated
along the width. The pooled output of the first chunk feeds the vector conditioning (``vector.py``);
an empty negative prompt is all zeros there (A1111's ``force_zero_negative_prompt`` for SDXL).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..cond import Cond
from ..text import TextEncoder
from ..vector import SizeConditioning, vector as make_vector
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
    """``[(last_step, cond), ...]``: ``cond`` (a ``Cond``: ``[T, D]`` and the vector ``[V]`` or None; a bare
    ``[T, D]`` tensor is taken as a Cond without vector) applies to the model calls up to ``last_step``."""
    entries: list[tuple[int, Cond]]

    def __post_init__(self) -> None:
        self.entries = [(end, c if isinstance(c, Cond) else Cond(c)) for end, c in self.entries]

    def index(self, step: int) -> int:
        for i, (end, _) in enumerate(self.entries):
            if step <= end:
                return i
        return 0                            # past the end: A1111 falls back to the first entry

    def at(self, step: int) -> Cond:
        return self.entries[self.index(step)][1]


@dataclass
class MultiCond:
    """``AND`` parts: ``[(schedule, weight), ...]``."""
    parts: list[tuple[CondSchedule, float]]
    _stacked: dict = field(default_factory=dict, repr=False)   # entry indices -> stacked conds

    def at(self, step: int) -> tuple[Cond, list[float]]:
        """``(Cond [parts, T, D] / [parts, V], weights)``; parts of different lengths are padded by repeating
        their last token vector. The stacked Cond is built once per combination of entries (the same object
        on later calls)."""
        key = tuple(s.index(step) for s, _ in self.parts)
        if key not in self._stacked:
            conds = [s.entries[i][1] for (s, _), i in zip(self.parts, key)]
            longest = max(c.tokens for c in conds)
            conds = [c if c.tokens == longest else
                     Cond(torch.cat([c.crossattn, c.crossattn[-1:].expand(longest - c.tokens, -1)]), c.vector)
                     for c in conds]
            self._stacked[key] = Cond.stack(conds)
        return self._stacked[key], [w for _, w in self.parts]


@dataclass
class PromptEncoder:
    """``text_encoder``: one ``TextEncoder`` or the family's encoders in order (SDXL: CLIP-L, bigG);
    ``vector_kind`` / ``sizes``: the vector conditioning of SDXL-style models (``vector.py``)."""
    text_encoder: TextEncoder | Sequence[TextEncoder]
    embeddings: EmbeddingDatabase | None = None
    options: PromptOptions = field(default_factory=PromptOptions)
    hash_cache: object = None
    used_embeddings: dict[str, Embedding] = field(default_factory=dict)
    emphasis_used: bool = False
    used_hashes: list[tuple[str, str]] = field(default_factory=list)   # (name, short hash), A1111's TI hashes order
    vector_kind: str | None = None
    sizes: SizeConditioning | None = None

    def __post_init__(self) -> None:
        if isinstance(self.text_encoder, TextEncoder):
            self.encoders = [self.text_encoder]
        else:
            self.encoders = list(self.text_encoder)
            self.text_encoder = self.encoders[0]
        if self.vector_kind is not None and not any(e.pooled for e in self.encoders):
            raise ValueError(f"vector conditioning {self.vector_kind!r} needs a text encoder with a pooled output")

    def chunker(self) -> PromptChunker:
        return make_chunker(self.text_encoder, self.embeddings, self.options)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), 77 * chunks, D]``: the cross-attention conditioning (all encoders side by side)."""
        return self.encode_with_pooled(texts)[0]

    @torch.inference_mode()
    def encode_with_pooled(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cross-attention conditioning and the pooled output of the first chunk ``[len(texts), P]``
        (None without a pooled encoder); emphasis does not touch the pooled output (as A1111)."""
        chunker = self.chunker()
        split: dict[str, list] = {}
        for text in texts:
            if text not in split:
                split[text] = chunker.split(text).chunks
        per_text = [split[text] for text in texts]
        used: dict[str, Embedding] = {}
        outputs, pooled = [], None
        for i in range(max(len(c) for c in per_text)):
            batch = [c[i] if i < len(c) else chunker.empty_chunk() for c in per_text]
            for chunk in batch:
                for _, embedding in chunk.fixes:
                    used[embedding.name] = embedding
            parts = []
            for encoder in self.encoders:
                fixes = [[(offset, e.vectors_for(encoder.name)) for offset, e in chunk.fixes] for chunk in batch]
                z, pool = encoder.encode_ids([chunk.tokens for chunk in batch], self.options.clip_skip, fixes=fixes,
                                             with_pooled=True)
                if i == 0 and pool is not None:
                    pooled = pool.float()
                z = z.float()
                parts.append(apply_emphasis(z, torch.tensor([chunk.weights for chunk in batch], device=z.device),
                                            self.options.emphasis))
            outputs.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1))
        self.used_embeddings.update(used)
        if used:
            # as A1111: each encoding call puts its own embeddings in front of those recorded before
            self.used_hashes[:0] = [(name, e.short_hash(self.hash_cache)) for name, e in used.items()]
        if self.options.emphasis != "Original" and any("(" in t or "[" in t for t in texts):
            self.emphasis_used = True
        return torch.cat(outputs, dim=1), pooled

    def schedule(self, prompt: str, steps: int, *, negative: bool = False,
                 first_pass_steps: int | None = None) -> CondSchedule:
        """``negative``: this is the negative prompt (SDXL: an empty one gives zeros, the refiner's aesthetic
        score is the negative one); ``first_pass_steps``: hires fix's second pass (``schedule.schedule``)."""
        entries = sched.schedule(prompt, steps, old_scheduling=self.options.use_old_scheduling,
                                 first_pass_steps=first_pass_steps)
        texts = [text for _, text in entries]
        crossattn, pooled = self.encode_with_pooled(texts)
        if self.vector_kind is None:
            return CondSchedule([(end, Cond(c)) for (end, _), c in zip(entries, crossattn)])
        if negative and all(text == "" for text in texts):
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
        vectors = make_vector(self.vector_kind, pooled, self.sizes, negative=negative)
        return CondSchedule([(end, Cond(c, v)) for (end, _), c, v in zip(entries, crossattn, vectors)])

    def multicond(self, prompt: str, steps: int, *, first_pass_steps: int | None = None) -> MultiCond:
        cache: dict[str, CondSchedule] = {}
        parts = []
        for text, weight in composable.subprompts(prompt):
            if text not in cache:
                cache[text] = self.schedule(text, steps, first_pass_steps=first_pass_steps)
            parts.append((cache[text], weight))
        return MultiCond(parts)


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
