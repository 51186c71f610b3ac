"""SDXL's vector conditioning (the UNet's ``y``): pooled text embedding + size / crop / target embeddings.

As sgm's ``GeneralConditioner`` builds it (Podell et al. 2023, "SDXL", sec. 2.2): each number is embedded
with the sinusoidal timestep embedding of width 256 (``ConcatTimestepEmbedderND``), pairs side by side, and
the pieces are concatenated after the pooled, projected OpenCLIP bigG output:

- base / inpainting (``"sdxl"``, 2816 = 1280 + 6 x 256): pooled, original size (h, w), crop top-left
  (top, left), target size (h, w);
- refiner (``"sdxl_refiner"``, 2560 = 1280 + 5 x 256): pooled, original size, crop top-left, aesthetic score.

A1111's defaults: original and target size = the image size, crop (0, 0), aesthetic score 6 for the
prompt and 2.5 for the negative prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .unet import timestep_embedding

EMBED_DIM = 256
VECTOR_KINDS = ("sdxl", "sdxl_refiner")
AESTHETIC_POSITIVE, AESTHETIC_NEGATIVE = 6.0, 2.5   # A1111's sdxl_refiner_high/low_aesthetic_score


@dataclass(frozen=True)
class SizeConditioning:
    """The numbers embedded next to the pooled text: (height, width) pairs and the crop's (top, left)."""
    original_size: tuple[int, int]
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None      # None: the original size
    aesthetic_score: float = AESTHETIC_POSITIVE

    @classmethod
    def for_image(cls, width: int, height: int, *, original_size=None, crops_coords_top_left=None,
                  target_size=None) -> "SizeConditioning":
        """A1111's values for an image of ``width`` x ``height`` unless given."""
        size = (height, width)
        return cls(tuple(original_size or size), tuple(crops_coords_top_left or (0, 0)), tuple(target_size or size))

    def numbers(self, kind: str, negative: bool = False) -> list[float]:
        if kind == "sdxl":
            return [*self.original_size, *self.crops_coords_top_left, *(self.target_size or self.original_size)]
        if kind == "sdxl_refiner":
            score = AESTHETIC_NEGATIVE if negative else self.aesthetic_score
            return [*self.original_size, *self.crops_coords_top_left, score]
        raise ValueError(f"unknown vector kind {kind!r}; known: {', '.join(VECTOR_KINDS)}")


def embed_numbers(numbers: list[float], device=None) -> torch.Tensor:
    """``[len(numbers) * 256]``: each number's sinusoidal embedding, side by side (float32)."""
    values = torch.tensor(numbers, dtype=torch.float32, device=device)
    return timestep_embedding(values, EMBED_DIM).reshape(-1)


def vector(kind: str, pooled: torch.Tensor, sizes: SizeConditioning, *, negative: bool = False) -> torch.Tensor:
    """``[..., V]``: ``pooled`` ``[..., P]`` followed by the embedded numbers (the same for every row)."""
    numbers = embed_numbers(sizes.numbers(kind, negative), pooled.device).to(pooled.dtype)
    return torch.cat([pooled, numbers.expand(*pooled.shape[:-1], -1)], dim=-1)
