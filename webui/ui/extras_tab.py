"""The Extras tab (A1111's words and element ids): upscale one image by a factor or to a size, with a second
upscaler blended in. Works on the image alone: no model, no queue."""
from __future__ import annotations

import html
import uuid
from pathlib import Path

import gradio as gr

from ..engine.upscale import IMAGE_UPSCALERS, ExtrasUpscale
from ..jobs import extras

RESIZE_TABS = ("Scale by", "Scale to")


def build(folder: Path) -> None:
    """The tab's components and their event, inside an open ``gr.Tab``; results are written to ``folder``
    (the page's own temporary folder, which gradio serves)."""
    names = list(IMAGE_UPSCALERS)
    with gr.Row():
        with gr.Column():
            source = gr.Image(type="pil", label="Source", elem_id="extras_image", image_mode=None,
                              sources=["upload", "clipboard"])
            mode = gr.Radio(list(RESIZE_TABS), value=RESIZE_TABS[0], label="Resize", elem_id="extras_resize_mode")
            with gr.Row():
                scale = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                width = gr.Slider(64, 8192, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w")
                height = gr.Slider(64, 8192, value=512, step=8, label="Height", elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value="Lanczos", label="Upscaler 1", elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            result = gr.Image(type="filepath", label="Result", elem_id="extras_result", interactive=False)
            info = gr.HTML(elem_id="html_info_extras")

    def process(image, mode_label, scale_by, to_w, to_h, crop_to, first, second, second_visibility):
        if image is None:
            return None, "<p class='job-error'>Drop an image first.</p>"
        upscale = ExtrasUpscale(mode=RESIZE_TABS.index(mode_label), scale=float(scale_by), width=int(to_w),
                                height=int(to_h), crop=bool(crop_to), upscaler_1=first, upscaler_2=second,
                                visibility=float(second_visibility))
        try:
            out, text = extras.postprocess(image, upscale)
        except ValueError as exc:
            return None, f"<p class='job-error'>{html.escape(str(exc))}</p>"
        path = folder / f"extras-{uuid.uuid4().hex}.png"
        path.write_bytes(extras.png_bytes(out, text))
        return str(path), f"<p>{html.escape(text)}</p><p>{out.width}x{out.height}</p>"

    run.click(process, [source, mode, scale, width, height, crop, upscaler_1, upscaler_2, visibility],
              [result, info], concurrency_limit=None)
