"""Small pieces the UI modules share: HTML escaping, the infotext as HTML, the gallery's files."""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

from PIL import Image

from ..jobs import saving


def info_html(text: str | None) -> str:
    if not text:
        return ""
    return "<div class='infotext'>" + "<br>".join(escape(line) for line in text.split("\n")) + "</div>"


def escape(text: str) -> str:
    return html.escape(text, quote=False)


class Files:
    """PNG files (with their infotext) the gallery shows and the download button hands out."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="webui-gallery-"))

    def write(self, image: Image.Image, text: str, job_id: str, index: int) -> str:
        path = self.folder / f"{job_id}-{index}.png"
        path.write_bytes(saving.png_with_infotext(image, text))
        return str(path)
