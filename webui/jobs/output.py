"""What a generation job gives back: one ``ImageRecord`` per image (image, infotext, seeds, prompts, saved file),
in A1111's order (a script's grids first), and the job's own facts. ``to_json`` / ``from_json`` carry it across a
process boundary (images as PNG with their infotext)."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..engine.result import ImageRecord
from . import saving


@dataclass
class GenerationOutput:
    images: list[ImageRecord] = field(default_factory=list)
    interrupted: bool = False
    model: str | None = None                      # the checkpoint's listed name
    warnings: list[str] = field(default_factory=list)   # for the user (unknown <kind:...> tags ...)
    index_of_first_image: int = 0                 # a script's leading grids (A1111's field)
    grid_paths: list[Path] = field(default_factory=list)   # a batch's grid, when saved
    model_info: Any = None      # the ``parameters.ModelInfo`` the job ran with (not the one resident later)

    # the records' fields, in order (views, not stored twice)
    @property
    def pictures(self) -> list[Image.Image]:
        return [r.image for r in self.images]

    @property
    def infotexts(self) -> list[str]:
        return [r.infotext for r in self.images]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.images]

    @property
    def subseeds(self) -> list[int]:
        return [r.subseed for r in self.images]

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.images]

    @property
    def negative_prompts(self) -> list[str]:
        return [r.negative_prompt for r in self.images]

    @property
    def paths(self) -> list[Path]:
        """Files written: the images that were saved, then a batch's grid."""
        return [r.path for r in self.images if r.path is not None] + list(self.grid_paths)

    def to_json(self) -> dict:
        def record(r: ImageRecord) -> dict:
            return {"image": base64.b64encode(saving.png_with_infotext(r.image, None)).decode("ascii"),
                    "infotext": r.infotext, "seed": r.seed, "subseed": r.subseed, "prompt": r.prompt,
                    "negative_prompt": r.negative_prompt, "path": None if r.path is None else str(r.path)}
        info = self.model_info
        return {"images": [record(r) for r in self.images], "interrupted": self.interrupted, "model": self.model,
                "warnings": list(self.warnings), "index_of_first_image": self.index_of_first_image,
                "grid_paths": [str(p) for p in self.grid_paths],
                "model_info": None if info is None else {"name": info.name, "hash": info.hash,
                                                         "vae_name": info.vae_name, "vae_hash": info.vae_hash}}

    @classmethod
    def from_json(cls, data: dict) -> "GenerationOutput":
        from .parameters import ModelInfo

        def record(d: dict) -> ImageRecord:
            with Image.open(io.BytesIO(base64.b64decode(d["image"]))) as image:
                image.load()
                picture = image.copy()
            return ImageRecord(picture, d["seed"], d["subseed"], d["prompt"], d["negative_prompt"], d["infotext"],
                               None if d["path"] is None else Path(d["path"]))
        info = data.get("model_info")
        return cls([record(d) for d in data["images"]], data["interrupted"], data["model"], list(data["warnings"]),
                   data["index_of_first_image"], [Path(p) for p in data["grid_paths"]],
                   None if info is None else ModelInfo(**info))
