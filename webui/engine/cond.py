"""What the UNet is conditioned on: cross-attention tokens and, for SDXL-style models, a vector.

``Cond(crossattn, vector)`` travels from the prompt encoder through the prompt schedules, the CFG
denoiser, the extension hook's wrappers and into the UNet (``context`` and ``y``). ``crossattn`` is
``[..., T, D]`` (the text encoders' hidden states, SDXL: CLIP-L and OpenCLIP bigG concatenated);
``vector`` is ``[..., V]`` or None (SDXL: the pooled text embedding and the size / crop / target or
aesthetic-score embeddings, see ``vector.py``). Models without a vector input (SD 1.x, SD 2.x) carry
``vector=None`` and see exactly the tensors they saw before the type existed.

Both tensors share their leading (batch) dimensions; the helpers below keep them in step.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Cond:
    crossattn: torch.Tensor
    vector: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Cond":
        """``fn`` applied to both tensors (for batch-wise operations: indexing, repeat, expand, to)."""
        return Cond(fn(self.crossattn), None if self.vector is None else fn(self.vector))

    def repeat_batch(self, n: int) -> "Cond":
        """The batch repeated ``n`` times (``torch.Tensor.repeat`` along dim 0)."""
        return Cond(self.crossattn.repeat(n, *([1] * (self.crossattn.ndim - 1))),
                    None if self.vector is None else self.vector.repeat(n, *([1] * (self.vector.ndim - 1))))

    def expand_batch(self, n: int) -> "Cond":
        """One unbatched cond (``[T, D]`` / ``[V]``) as a batch of ``n`` (a view)."""
        return Cond(self.crossattn.expand(n, *self.crossattn.shape),
                    None if self.vector is None else self.vector.expand(n, *self.vector.shape))

    def to(self, *args, **kwargs) -> "Cond":
        return self.map(lambda t: t.to(*args, **kwargs))

    @property
    def tokens(self) -> int:
        """Length of the cross-attention sequence (``T``)."""
        return self.crossattn.shape[-2]

    @staticmethod
    def cat(conds: Sequence["Cond"]) -> "Cond":
        """Batches joined along dim 0 (all with a vector or all without)."""
        return _join(conds, torch.cat)

    @staticmethod
    def stack(conds: Sequence["Cond"]) -> "Cond":
        """Unbatched conds stacked into a batch."""
        return _join(conds, torch.stack)


def _join(conds: Sequence[Cond], op) -> Cond:
    vectors = [c.vector for c in conds]
    if any(v is None for v in vectors) and not all(v is None for v in vectors):
        raise ValueError("cannot batch conds with and without a vector")
    return Cond(op([c.crossattn for c in conds]), None if vectors[0] is None else op(vectors))
