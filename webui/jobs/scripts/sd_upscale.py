"""A1111's "SD upscale" (``scripts/sd_upscale.py``), img2img: the init image is upscaled (by an image
upscaler), cut into overlapping tiles of the generation size (``tiles.split_grid``), every tile goes through
img2img with the job's settings, and the tiles are blended back together (``tiles.combine_grid``): more
detail than the model could draw at the full size at once.

``script_args`` (4, A1111's order)::

    0 (the UI's info text, ignored)   1 Tile overlap [64, 0..256]   2 Upscaler [0: an index into the
    upscaler list (None, Lanczos, Nearest, as A1111's first three) or its name]   3 Scale Factor [2.0, 1..4]

Seeds: batch count N makes N upscales from seed, seed + 1, ...; within one, the tiles take A1111's seeds
(batch ``k`` of ``batch size`` tiles starts at seed + k, its images seed + k + i). Each tile is one run of
one image, which A1111's per-image noise makes the same pictures. The tiles are not saved; each whole
upscale is (into the images folder).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from ...engine import images as im
from ...engine.result import ImageRecord
from ...engine.upscale import IMAGE_UPSCALERS, upscale_by
from .. import infotext
from .base import Runner, Script, ScriptArg, ScriptResult, ScriptRun, as_number, check_image_count, copy_request, \
    fixed_seed
from .tiles import combine_grid, split_grid

TITLE = "SD upscale"
UPSCALERS = tuple(IMAGE_UPSCALERS)


@dataclass(frozen=True)
class SDUpscaleOptions:
    overlap: int = 64
    upscaler: str = "None"
    scale: float = 2.0


class SDUpscale(Script):
    title = TITLE
    kinds = ("img2img",)

    def args(self, kind: str = "img2img") -> list[ScriptArg]:
        return [ScriptArg("Info", None), ScriptArg("Tile overlap", 64, minimum=0, maximum=256, step=16),
                ScriptArg("Upscaler", UPSCALERS[0], choices=UPSCALERS),
                ScriptArg("Scale Factor", 2.0, minimum=1.0, maximum=4.0, step=0.05)]

    def parse(self, script_args, kind: str = "img2img") -> SDUpscaleOptions:
        self._kind(kind)
        a = self._positional(script_args, kind)
        upscaler = a[2]
        if isinstance(upscaler, int) and not isinstance(upscaler, bool):
            if not 0 <= upscaler < len(UPSCALERS):
                raise ValueError(f"{self._what(2, kind)}: no upscaler number {upscaler}; available: "
                                 + ", ".join(f"{i} {n}" for i, n in enumerate(UPSCALERS)))
            upscaler = UPSCALERS[upscaler]
        elif not isinstance(upscaler, str) or upscaler.lower() not in [n.lower() for n in UPSCALERS]:
            raise ValueError(f"{self._what(2, kind)}: unknown upscaler {upscaler!r}; available: "
                             f"{', '.join(UPSCALERS)} (upscaler models such as ESRGAN are not available)")
        else:
            upscaler = next(n for n in UPSCALERS if n.lower() == upscaler.lower())
        return SDUpscaleOptions(int(as_number(a[1], self._what(1, kind), 0, 256, integer=True)), upscaler,
                                float(as_number(a[3], self._what(3, kind), 1.0, 4.0)))

    def _plan(self, request, options: SDUpscaleOptions):
        if request.init_image is None:
            raise ValueError(f"{self.title} needs an init image")
        if options.overlap >= min(request.width, request.height):
            raise ValueError(f"{self.title}: the tile overlap ({options.overlap}) must be smaller than the tile "
                             f"({request.width}x{request.height})")
        image = im.flatten(request.init_image)
        if options.upscaler != "None":
            image = upscale_by(image, options.scale, options.upscaler)
        if image.width < request.width or image.height < request.height:
            raise ValueError(f"{self.title}: the upscaled image ({image.width}x{image.height}) is smaller than "
                             f"one tile ({request.width}x{request.height}); raise the scale factor")
        grid = split_grid(image, request.width, request.height, options.overlap)
        count = sum(len(row) for _, _, row in grid.rows)
        check_image_count(self.title, count * request.n_iter, self.env)
        return image, count

    def validate(self, request, options, *, styles: Sequence[str] = ()) -> None:
        self._plan(request, options)
        self.env.check(copy_request(request, batch_size=1, n_iter=1))

    def run(self, request, options: SDUpscaleOptions, runner: Runner, *, styles: Sequence[str] = (),
            stop: Callable[[], bool] | None = None) -> ScriptResult:
        image, count = self._plan(request, options)
        seed = fixed_seed(request.seed, self.env)
        batch = max(1, request.batch_size)
        result = ScriptResult(grid_basename="sd_upscale")
        extra = {"SD upscale overlap": options.overlap, "SD upscale upscaler": options.upscaler}
        total = count * request.n_iter
        for n in range(request.n_iter):
            grid = split_grid(image, request.width, request.height, options.overlap)
            first_text = None
            index = 0
            for y, h, row in grid.rows:
                for tile in row:
                    if result.stopped(stop):
                        tile[2] = Image.new("RGB", (request.width, request.height))
                        continue
                    tile_seed = seed + n + index // batch + index % batch
                    run = ScriptRun(copy_request(request, init_image=tile[2], seed=tile_seed, batch_size=1, n_iter=1),
                                    styles=list(styles), save_grid=False, save_samples=False,
                                    index=n * count + index, total=total,
                                    label=f"Tile {n * count + index + 1} out of {total}")
                    records = result.record(runner(run))
                    tile[2] = records[0].image if records else Image.new("RGB", (request.width, request.height))
                    if first_text is None and records:
                        first_text = records[0].infotext
                    index += 1
            result.images.append(ImageRecord(combine_grid(grid), seed + n, prompt=request.prompt,
                                             negative_prompt=request.negative_prompt,
                                             infotext=infotext.insert_params(first_text or "", extra)))
            if result.interrupted:
                break
        result.seed = seed
        result.save_as_samples = list(range(len(result.images)))
        return result
