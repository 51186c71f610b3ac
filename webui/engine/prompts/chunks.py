"""A prompt -> 77-token chunks with per-token weights and textual-inversion positions (A1111's rules).

Each piece of text from the emphasis parser is tokenized on its own. Tokens fill chunks of 75; a chunk is
closed early by ``BREAK``, and when a chunk is full and a comma lies within the last
``comma_backtrack`` tokens, the tokens after that comma move to the next chunk. Every chunk is then
``BOS + 75 tokens (padded with EOS) + EOS``. An embedding takes as many positions as it has vectors and
is never split across chunks. The token count is what A1111's counter shows: 75 per full chunk plus the
tokens of the last one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import emphasis as em
from .embeddings import Embedding

CHUNK = 75
EMPHASIS_MODES = ("None", "Ignore", "Original", "No norm")


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)            # 77 ids once closed
    weights: list[float] = field(default_factory=list)         # one per token
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)   # (offset after BOS, embedding)


@dataclass
class ChunkedPrompt:
    chunks: list[Chunk]
    token_count: int


class PromptChunker:
    """``tokenize(texts) -> ids`` (no BOS/EOS), ``bos``/``eos``/``comma`` ids, an embedding lookup."""

    def __init__(self, tokenize, bos: int, eos: int, comma: int | None, embeddings=None, *,
                 emphasis: str = "Original", comma_backtrack: int = 20):
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis must be one of {', '.join(EMPHASIS_MODES)} (got {emphasis!r})")
        self.tokenize, self.bos, self.eos, self.comma = tokenize, bos, eos, comma
        self.embeddings, self.emphasis, self.comma_backtrack = embeddings, emphasis, comma_backtrack

    def empty_chunk(self) -> Chunk:
        return Chunk([self.bos] + [self.eos] * (CHUNK + 1), [1.0] * (CHUNK + 2))

    def split(self, text: str) -> ChunkedPrompt:
        pieces = em.parse(text) if self.emphasis != "None" else [(text, 1.0)]
        token_lists = self.tokenize([t for t, _ in pieces])
        chunks: list[Chunk] = []
        chunk = Chunk()
        count = 0
        last_comma = -1

        def close(last: bool = False) -> None:
            nonlocal chunk, count, last_comma
            count += len(chunk.tokens) if last else CHUNK
            pad = CHUNK - len(chunk.tokens)
            chunk.tokens = [self.bos] + chunk.tokens + [self.eos] * max(pad, 0) + [self.eos]
            chunk.weights = [1.0] + chunk.weights + [1.0] * max(pad, 0) + [1.0]
            chunks.append(chunk)
            chunk, last_comma = Chunk(), -1

        for tokens, (piece, weight) in zip(token_lists, pieces):
            if (piece, weight) == em.BREAK:
                close()
                continue
            i = 0
            while i < len(tokens):
                token = tokens[i]
                if token == self.comma:
                    last_comma = len(chunk.tokens)
                elif (self.comma_backtrack and len(chunk.tokens) == CHUNK and last_comma != -1
                      and len(chunk.tokens) - last_comma <= self.comma_backtrack):
                    cut = last_comma + 1
                    moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                    chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                    close()
                    chunk.tokens, chunk.weights = moved_tokens, moved_weights
                if len(chunk.tokens) == CHUNK:
                    close()
                embedding, covered = (self.embeddings.find(tokens, i) if self.embeddings is not None
                                      else (None, 0))
                if embedding is None:
                    chunk.tokens.append(token)
                    chunk.weights.append(weight)
                    i += 1
                    continue
                if len(chunk.tokens) + embedding.count > CHUNK:
                    close()
                chunk.fixes.append((len(chunk.tokens), embedding))
                chunk.tokens += [0] * embedding.count
                chunk.weights += [weight] * embedding.count
                i += covered
        if chunk.tokens or not chunks:
            close(last=True)
        return ChunkedPrompt(chunks, count)
