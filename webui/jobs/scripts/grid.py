"""Grids with labels as A1111 draws them (its ``modules/images.py``: ``image_grid``,
``draw_grid_annotations``, ``draw_prompt_matrix``, ``GridAnnotation``), in PIL only.

Colours are A1111's option defaults (``grid_background_color`` #ffffff, ``grid_text_active_color``
#000000, ``grid_text_inactive_color`` #999999). The font is Pillow's built-in scalable one
(``ImageFont.load_default(size)``, Pillow >= 10.1) where A1111 uses Roboto: same sizes and layout, other
glyphs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from ..saving import grid_rows

BACKGROUND = (255, 255, 255)
TEXT_ACTIVE = (0, 0, 0)
TEXT_INACTIVE = (153, 153, 153)


@dataclass
class GridAnnotation:
    """One label of a column or row; an inactive one is drawn grey and struck through (prompt matrix)."""
    text: str = ""
    is_active: bool = True


def image_grid(images: Sequence[Image.Image], rows: int | None = None,
               background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Images row-major in cells the size of the largest (smaller ones centred), A1111's ``image_grid``."""
    if not images:
        raise ValueError("a grid needs at least one image")
    rows = grid_rows(len(images)) if rows is None else max(1, min(int(rows), len(images)))
    cols = math.ceil(len(images) / rows)
    w = max(img.width for img in images)
    h = max(img.height for img in images)
    grid = Image.new("RGB", (cols * w, rows * h), background)
    for i, img in enumerate(images):
        dx, dy = (w - img.width) // 2, (h - img.height) // 2
        grid.paste(img.convert("RGB"), (i % cols * w + dx, i // cols * h + dy))
    return grid


class _Fonts:
    """Fonts by size for one drawing (no module-level cache)."""

    def __init__(self):
        self._fonts: dict[int, ImageFont.ImageFont] = {}

    def __call__(self, size: int):
        size = max(int(size), 1)
        if size not in self._fonts:
            try:
                self._fonts[size] = ImageFont.load_default(size=size)
            except (TypeError, OSError, ImportError):       # old Pillow / no FreeType: the bitmap font
                self._fonts[size] = ImageFont.load_default()
        return self._fonts[size]


@dataclass
class _Line:
    text: str
    is_active: bool
    size: tuple[int, int]
    allowed_width: int


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Words onto lines no wider than ``width`` (a word longer than that gets a line of its own)."""
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _measure(draw, annotations: Sequence[GridAnnotation], font, allowed: int) -> list[_Line]:
    lines = []
    for annotation in annotations:
        for text in _wrap(draw, annotation.text, font, allowed):
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            lines.append(_Line(text, annotation.is_active, (right - left, bottom - top), allowed))
    return lines


def draw_grid_annotations(im: Image.Image, width: int, height: int,
                          hor_texts: Sequence[Sequence[GridAnnotation]],
                          ver_texts: Sequence[Sequence[GridAnnotation]], margin: int = 0) -> Image.Image:
    """A1111's labelled grid: column labels in a band on top, row labels in a band on the left (3/4 of a
    cell wide, only when some row label has text), cells ``margin`` px apart. ``width`` x ``height``: the
    cell size. Font size (width + height) // 25, shrunk per line until the line fits; lines wrap at words."""
    fonts = _Fonts()
    fontsize = (width + height) // 25
    line_spacing = fontsize // 2
    font = fonts(fontsize)
    pad_left = 0 if sum(len(a.text) for col in ver_texts for a in col) == 0 else width * 3 // 4
    cols, rows = im.width // width, im.height // height
    if cols != len(hor_texts) or rows != len(ver_texts):
        raise ValueError(f"a {cols}x{rows} grid needs {cols} column and {rows} row labels "
                         f"(got {len(hor_texts)} and {len(ver_texts)})")

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), BACKGROUND))
    hor_lines = [_measure(measure, texts, font, width) for texts in hor_texts]
    ver_lines = [_measure(measure, texts, font, pad_left) for texts in ver_texts]
    # A1111's sums: a column's block includes the spacing between its lines, a row's block does not
    hor_heights = [sum(line.size[1] + line_spacing for line in lines) - line_spacing for lines in hor_lines]
    ver_heights = [sum(line.size[1] for line in lines) for lines in ver_lines]
    pad_top = 0 if sum(hor_heights) == 0 else max(hor_heights) + line_spacing * 2

    result = Image.new("RGB", (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)),
                       BACKGROUND)
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))

    draw = ImageDraw.Draw(result)

    def draw_lines(x: float, y: float, lines: list[_Line]) -> None:
        for line in lines:
            size, fnt = fontsize, font
            while size > 1 and draw.textlength(line.text, font=fnt) > line.allowed_width:
                size -= 1
                fnt = fonts(size)
            colour = TEXT_ACTIVE if line.is_active else TEXT_INACTIVE
            draw.text((x, y + line.size[1] / 2), line.text, font=fnt, fill=colour, anchor="mm", align="center")
            if not line.is_active:
                half_w, half_h = line.size[0] // 2, line.size[1] // 2
                draw.line((x - half_w, y + half_h, x + half_w, y + half_h), fill=TEXT_INACTIVE, width=4)
            y += line.size[1] + line_spacing

    for col in range(cols):
        draw_lines(pad_left + (width + margin) * col + width / 2, pad_top / 2 - hor_heights[col] / 2, hor_lines[col])
    for row in range(rows):
        draw_lines(pad_left / 2, pad_top + (height + margin) * row + height / 2 - ver_heights[row] / 2,
                   ver_lines[row])
    return result


def prompt_matrix_annotations(parts: Sequence[str]) -> tuple[list[list[GridAnnotation]], list[list[GridAnnotation]]]:
    """A1111's ``draw_prompt_matrix`` labels for ``prompt.split("|")``: the first half of the variable parts
    label the columns, the rest the rows; column/row number ``pos`` has part ``i`` active when bit ``i`` is set."""
    variable = list(parts[1:])
    boundary = math.ceil(len(variable) / 2)
    horizontal, vertical = variable[:boundary], variable[boundary:]
    hor = [[GridAnnotation(text, pos & (1 << i) != 0) for i, text in enumerate(horizontal)]
           for pos in range(1 << len(horizontal))]
    ver = [[GridAnnotation(text, pos & (1 << i) != 0) for i, text in enumerate(vertical)]
           for pos in range(1 << len(vertical))]
    return hor, ver


def draw_prompt_matrix(im: Image.Image, width: int, height: int, parts: Sequence[str], margin: int = 0) -> Image.Image:
    """A1111's ``draw_prompt_matrix`` over a grid of 2^n cells."""
    hor, ver = prompt_matrix_annotations(parts)
    return draw_grid_annotations(im, width, height, hor, ver, margin)
