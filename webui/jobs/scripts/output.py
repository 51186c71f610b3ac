"""Saving a script's grids as A1111 names them: ``<basename>-NNNN-<seed>.<ext>`` in the grids folder
(``xyz_grid-0003-1234.png``, ``prompt_matrix-0000-42.png``), with the infotext embedded; never overwriting."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

from .. import saving
from .base import ScriptResult


def save_grids(result: ScriptResult, folder: str | os.PathLike, extension: str = "png") -> list[Path]:
    """Write ``result.images[i]`` for each ``i`` in ``result.save_as_grid`` into ``folder`` (e.g.
    ``saving.grid_folder(outputs, kind)``); call it when the ``grid_save`` setting (or the request's
    ``do_not_save_grid``) says grids are saved. Returns the paths written."""
    folder = Path(folder)
    ext = extension.lower().lstrip(".")
    paths = []
    for i in result.save_as_grid:
        record = result.images[i]
        tail = f"-{saving._seed_text(record.seed)}" if record.seed is not None else ""
        data = saving.encode_image(record.image, record.infotext, extension)
        start = saving.next_sequence_number(folder, result.grid_basename)
        names = (f"{result.grid_basename}-{n:04}{tail}.{ext}" for n in itertools.count(start))
        paths.append(saving._write_new(folder, names, data))
    return paths
