"""A1111's tile grid (``modules/images.py`` ``split_grid`` / ``combine_grid``): an image cut into overlapping
tiles of the generation size, and the processed tiles joined again with linear blends over the overlaps."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image



@dataclass
class TileGrid:
    """``rows``: ``[y, tile height, [[x, tile width, tile image], ...]]`` as A1111's ``Grid.tiles``."""
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int
    rows: list = field(default_factory=list)

    def tiles(self):
        """(x, y, width, height, row index, column index) of every tile, row by row."""
        for r, (y, h, row) in enumerate(self.rows):
            for c, (x, w, _) in enumerate(row):
                yield x, y, w, h, r, c


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> TileGrid:
    w, h = image.width, image.height
    cols = math.ceil((w - overlap) / (tile_w - overlap))
    rows = math.ceil((h - overlap) / (tile_h - overlap))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = TileGrid(tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        tiles = []
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            tiles.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.rows.append([y, tile_h, tiles])
    return grid


def _ramp(values: np.ndarray, overlap: int) -> Image.Image:
    return Image.fromarray((values * 255 / overlap).astype(np.uint8), "L")


def combine_grid(grid: TileGrid) -> Image.Image:
    overlap = grid.overlap
    mask_w = _ramp(np.arange(overlap, dtype=np.float32).reshape((1, overlap)).repeat(grid.tile_h, axis=0), overlap)
    mask_h = _ramp(np.arange(overlap, dtype=np.float32).reshape((overlap, 1)).repeat(grid.image_w, axis=1), overlap)
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.rows:
        line = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0:
                line.paste(tile, (0, 0))
                continue
            line.paste(tile.crop((0, 0, overlap, h)), (x, 0), mask=mask_w)
            line.paste(tile.crop((overlap, 0, w, h)), (x + overlap, 0))
        if y == 0:
            combined.paste(line, (0, 0))
            continue
        combined.paste(line.crop((0, 0, line.width, overlap)), (0, y), mask=mask_h)
        combined.paste(line.crop((0, overlap, line.width, h)), (0, y + overlap))
    return combined
