"""A1111's Extras tab on one image: the upscale step (``engine.upscale.ExtrasUpscale``) and the PNG it
gives back: the source's own ``parameters`` kept, the steps' entries in a ``postprocessing`` chunk
(A1111's ``Postprocess upscale by: 2, Postprocess upscaler: Lanczos``)."""
from __future__ import annotations

import io

from PIL import Image, PngImagePlugin

from ..engine.upscale import ExtrasUpscale
from . import infotext


def postprocess(image: Image.Image, upscale: ExtrasUpscale) -> tuple[Image.Image, str]:
    """(the processed image, its postprocessing text)."""
    parameters = image.info.get("parameters")
    result, info = upscale.apply(image.convert("RGB"))
    text = ", ".join(f"{key}: {infotext.quote(infotext.format_value(value))}" for key, value in info.items())
    if parameters:
        result.info["parameters"] = parameters
    return result, text


def png_bytes(image: Image.Image, postprocessing: str) -> bytes:
    """PNG with the source's ``parameters`` (when it had them) and the ``postprocessing`` chunk."""
    chunks = PngImagePlugin.PngInfo()
    if image.info.get("parameters"):
        chunks.add_text("parameters", image.info["parameters"])
    if postprocessing:
        chunks.add_text("postprocessing", postprocessing)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()
