"""What a generation gives back: one record per image, and the facts of the job as typed values.

The engine states facts (which sampler and schedule type ran, the denoising strength, the hires target, the
mask settings that applied, whether the refiner took over ...); it writes no infotext. ``webui/jobs/
parameters.py`` turns the facts into A1111's keys, in A1111's order. ``ImageRecord`` travels on to the
interfaces: the job layer adds the infotext and, once saved, the file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class ImageRecord:
    """One image and what belongs to it, end to end: from the engine (image, seeds, the prompts as used) through
    the job (``infotext``, and ``path`` once saved) to the UI, the API and the command line."""
    image: Image.Image
    seed: int | None = None
    subseed: int = -1
    prompt: str = ""
    negative_prompt: str = ""
    infotext: str = ""
    path: Path | None = None

    def replace(self, **changes) -> "ImageRecord":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class MaskFacts:
    """The inpainting settings that applied (A1111 writes only those that changed something)."""
    invert: bool = False
    blur: int = 0
    only_masked_padding: int | None = None     # "Only masked" ran, with this padding (None: the whole picture)
    fill: int | None = None                    # masked content (images.MASKED_CONTENT) other than "original"


@dataclass(frozen=True)
class HiresFacts:
    """Hires fix's second pass as it was asked for; ``target``: A1111's key and value of the size
    (``("Hires upscale", 2.0)`` or ``("Hires resize", "1024x1536")``)."""
    denoising_strength: float
    target: tuple[str, Any]
    checkpoint: str | None = None              # the second pass's checkpoint file (None: the same)
    sampler: str | None = None                 # another sampler than the first pass's, as asked
    scheduler: str | None = None               # another schedule type's label
    prompt: str | None = None                  # another prompt than the first pass's
    negative_prompt: str | None = None
    steps: int = 0                             # 0: the first pass's
    upscaler: str | None = None                # None: the default latent mode


@dataclass(frozen=True)
class GenerationFacts:
    """What ran, as values. ``parameters``: the sampler parameters set to non-default values, by request field
    (``eta``, ``s_churn`` ...); ``embeddings``: textual inversions used, ``(name, short hash)`` in A1111's
    order; ``emphasis``: the emphasis mode when it was not "Original" and the prompt had brackets;
    ``extension_params``: what extensions put into ``ctx.infotext`` (their own A1111 keys)."""
    sampler: str
    scheduler: str
    seed: int
    subseed: int = -1
    denoising_strength: float | None = None    # img2img
    mask: MaskFacts | None = None
    noise_multiplier: float | None = None      # img2img, when not 1
    parameters: dict = field(default_factory=dict)
    hires: HiresFacts | None = None
    tiling: bool = False
    extension_params: dict = field(default_factory=dict)
    embeddings: tuple[tuple[str, str], ...] = ()
    emphasis: str | None = None
    refiner_switched: bool = False


@dataclass
class GenerationResult:
    images: list[ImageRecord]
    facts: GenerationFacts
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)   # told to the user (an unknown <kind:...> tag)

    @property
    def seed(self) -> int:
        """The job's first seed (the one reported when -1 was asked)."""
        return self.facts.seed

    @property
    def subseed(self) -> int:
        return self.facts.subseed

    @property
    def sampler_name(self) -> str:
        """A1111's display name, after resolving aliases and legacy names."""
        return self.facts.sampler

    @property
    def scheduler(self) -> str:
        """A1111's label of the schedule type ("Automatic" resolved to the real one)."""
        return self.facts.scheduler

    @property
    def refiner_switched(self) -> bool:
        return self.facts.refiner_switched
