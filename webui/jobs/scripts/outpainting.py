"""A1111's "Poor man's outpainting" (``scripts/poor_mans_outpainting.py``), img2img: the canvas grows by
``pixels`` in the chosen directions (to multiples of 64), the new border is inpainted tile by tile with the
job's prompt (only the tiles that touch it), and the tiles are blended into one picture.

``script_args`` (5, A1111's order)::

    0 (the UI's info text, ignored)   1 Pixels to expand [128, 8..256]   2 Mask blur [4, 0..64]
    3 Masked content ["fill" | "original" | "latent noise" | "latent nothing", or 0..3]
    4 Outpainting direction [a list of "left", "right", "up", "down"; all four]

Each tile is inpainted at the generation size with A1111's masks: the mask blurred by twice the given blur,
the latent blend by a mask shrunk by half of it, "inpaint area" whole picture; tile k takes seed + k.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from ...engine import images as im
from ...engine.result import ImageRecord
from .base import Runner, Script, ScriptArg, ScriptResult, ScriptRun, as_choice, as_number, check_image_count, \
    copy_request, fixed_seed
from .tiles import combine_grid, split_grid

TITLE = "Poor man's outpainting"
DIRECTIONS = ("left", "right", "up", "down")
FILLS = tuple(im.MASKED_CONTENT)


@dataclass(frozen=True)
class OutpaintingOptions:
    pixels: int = 128
    mask_blur: int = 4
    inpainting_fill: int = 1
    directions: tuple[str, ...] = DIRECTIONS


@dataclass
class _Canvas:
    image: Image.Image
    mask: Image.Image
    latent_mask: Image.Image
    left: int
    right: int
    up: int
    down: int

    def inside(self, x: int, y: int, w: int, h: int) -> bool:
        return x >= self.left and x + w <= self.image.width - self.right and y >= self.up and \
            y + h <= self.image.height - self.down


def canvas(init: Image.Image, options: OutpaintingOptions) -> _Canvas:
    """A1111's expanded picture, its inpainting mask and its latent mask."""
    p, blur, d = options.pixels, options.mask_blur, options.directions
    left, right = (p if "left" in d else 0), (p if "right" in d else 0)
    up, down = (p if "up" in d else 0), (p if "down" in d else 0)
    target_w = math.ceil((init.width + left + right) / 64) * 64
    target_h = math.ceil((init.height + up + down) / 64) * 64
    if left > 0:
        left = left * (target_w - init.width) // (left + right)
    if right > 0:
        right = target_w - init.width - left
    if up > 0:
        up = up * (target_h - init.height) // (up + down)
    if down > 0:
        down = target_h - init.height - up
    image = Image.new("RGB", (target_w, target_h))
    image.paste(init, (left, up))

    def mask_with(margin: int) -> Image.Image:
        mask = Image.new("L", (target_w, target_h), "white")
        ImageDraw.Draw(mask).rectangle((left + (margin if left > 0 else 0), up + (margin if up > 0 else 0),
                                        target_w - right - (margin if right > 0 else 0),
                                        target_h - down - (margin if down > 0 else 0)), fill="black")
        return mask
    return _Canvas(image, mask_with(blur * 2), mask_with(blur // 2), left, right, up, down)


class PoorMansOutpainting(Script):
    title = TITLE
    kinds = ("img2img",)

    def args(self, kind: str = "img2img") -> list[ScriptArg]:
        return [ScriptArg("Info", None), ScriptArg("Pixels to expand", 128, minimum=8, maximum=256, step=8),
                ScriptArg("Mask blur", 4, minimum=0, maximum=64, step=1),
                ScriptArg("Masked content", "fill", choices=FILLS),
                ScriptArg("Outpainting direction", list(DIRECTIONS), choices=DIRECTIONS)]

    def parse(self, script_args, kind: str = "img2img") -> OutpaintingOptions:
        self._kind(kind)
        a = self._positional(script_args, kind)
        fill = a[3]
        if isinstance(fill, int) and not isinstance(fill, bool):
            if not 0 <= fill < len(FILLS):
                raise ValueError(f"{self._what(3, kind)} must be 0..{len(FILLS) - 1} or one of {', '.join(FILLS)}")
        else:
            fill = FILLS.index(as_choice(fill, self._what(3, kind), FILLS))
        directions = a[4]
        if isinstance(directions, str) or not isinstance(directions, (list, tuple)) or not directions or \
                any(not isinstance(x, str) or x.lower() not in DIRECTIONS for x in directions):
            raise ValueError(f"{self._what(4, kind)} must be a list of {', '.join(DIRECTIONS)} (got {directions!r})")
        return OutpaintingOptions(int(as_number(a[1], self._what(1, kind), 8, 256, integer=True)),
                                  int(as_number(a[2], self._what(2, kind), 0, 64, integer=True)), fill,
                                  tuple(x.lower() for x in directions))

    def _plan(self, request, options: OutpaintingOptions):
        if request.init_image is None:
            raise ValueError(f"{self.title} needs an init image")
        if options.pixels >= min(request.width, request.height):
            raise ValueError(f"{self.title}: the pixels to expand ({options.pixels}) must be smaller than the "
                             f"tile ({request.width}x{request.height})")
        c = canvas(im.flatten(request.init_image), options)
        if c.image.width < request.width or c.image.height < request.height:
            raise ValueError(f"{self.title}: the expanded picture ({c.image.width}x{c.image.height}) is smaller "
                             f"than one tile ({request.width}x{request.height})")
        grids = [split_grid(x, request.width, request.height, options.pixels) for x in (c.image, c.mask, c.latent_mask)]
        work = [(r, col) for x, y, w, h, r, col in grids[0].tiles() if not c.inside(x, y, w, h)]
        check_image_count(self.title, len(work), self.env)
        return c, grids, work

    def validate(self, request, options, *, styles: Sequence[str] = ()) -> None:
        self._plan(request, options)
        self.env.check(copy_request(request, batch_size=1, n_iter=1))

    def run(self, request, options: OutpaintingOptions, runner: Runner, *, styles: Sequence[str] = (),
            stop: Callable[[], bool] | None = None) -> ScriptResult:
        c, (grid, grid_mask, grid_latent), work = self._plan(request, options)
        seed = fixed_seed(request.seed, self.env)
        result = ScriptResult(grid_basename="outpainting")
        first_text = None
        for k, (r, col) in enumerate(work):
            tile = grid.rows[r][2][col]
            if result.stopped(stop):
                tile[2] = Image.new("RGB", (request.width, request.height))
                continue
            changes = dict(init_image=tile[2], mask=grid_mask.rows[r][2][col][2],
                           latent_mask=grid_latent.rows[r][2][col][2], mask_blur=options.mask_blur * 2,
                           inpainting_fill=options.inpainting_fill, inpaint_full_res=False, seed=seed + k,
                           batch_size=1, n_iter=1)
            out = runner(ScriptRun(copy_request(request, **changes), styles=list(styles), save_grid=False,
                                   save_samples=False, index=k, total=len(work),
                                   label=f"Batch {k + 1} out of {len(work)}"))
            records = result.record(out)
            tile[2] = records[0].image if records else Image.new("RGB", (request.width, request.height))
            if first_text is None and records:
                first_text = records[0].infotext
        result.images.append(ImageRecord(combine_grid(grid), seed, prompt=request.prompt,        # A1111: the first
                                         negative_prompt=request.negative_prompt, infotext=first_text or ""))  # tile's
        result.seed = seed
        result.save_as_samples = [0]
        return result
