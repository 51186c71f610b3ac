"""The ControlNet section of the txt2img / img2img tabs: 3 units, each with a preview of its hint."""
from __future__ import annotations

import gradio as gr

from . import preprocessors as pp
from .units import CONTROL_MODES, MAX_UNITS, RESIZE_MODES, pixel_perfect_resolution


def build_units(ui, nets) -> dict:
    """Components by ``unit{n}_{field}`` name (the names ``units_from_ui`` reads)."""
    found: dict = {}
    modules = pp.labels()
    models = ["None", *nets.titles()]
    with gr.Tabs():
        for n in range(MAX_UNITS):
            with gr.Tab(f"ControlNet Unit {n}", elem_id=f"{ui.kind}_controlnet_unit{n}"):
                found.update(_unit(ui.kind, n, nets, modules, models))
    return found


def _unit(kind: str, n: int, nets, modules: list[str], models: list[str]) -> dict:
    eid = f"{kind}_controlnet_{n}"
    with gr.Row():
        image = gr.Image(type="numpy", label="Control image", sources=["upload", "clipboard"], image_mode="RGB",
                         height=220, elem_id=f"{eid}_image")
        preview = gr.Image(type="numpy", label="Preprocessor preview", interactive=False, height=220,
                           elem_id=f"{eid}_preview")
    with gr.Row():
        enabled = gr.Checkbox(False, label="Enable", elem_id=f"{eid}_enabled")
        pixel_perfect = gr.Checkbox(False, label="Pixel Perfect", elem_id=f"{eid}_pixel_perfect")
    with gr.Row():
        module = gr.Dropdown(modules, value="none", label="Preprocessor", elem_id=f"{eid}_module")
        model = gr.Dropdown(models, value="None", label="Model",
                            elem_id=f"{eid}_model")
        refresh = gr.Button("⟳", scale=0, min_width=40, elem_id=f"{eid}_refresh")
        run = gr.Button("Preview", scale=0, min_width=80, elem_id=f"{eid}_run_preview")
    with gr.Row():
        weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{eid}_weight")
        start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step", elem_id=f"{eid}_start")
        end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{eid}_end")
    with gr.Row():
        resolution = gr.Slider(64, 2048, value=512, step=8, label="Preprocessor Resolution", elem_id=f"{eid}_res")
        threshold_a = gr.Slider(0, 256, value=100, step=1, label="Threshold A", elem_id=f"{eid}_threshold_a")
        threshold_b = gr.Slider(0, 256, value=200, step=1, label="Threshold B", elem_id=f"{eid}_threshold_b")
    control_mode = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control Mode",
                            elem_id=f"{eid}_control_mode")
    resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[1], label="Resize Mode",
                           elem_id=f"{eid}_resize_mode")

    def on_module(name):
        module = pp.resolve(name)
        sliders = pp.PREPROCESSORS[module][1]

        def slider(i):     # threshold A / B: shown with the preprocessor's own label and range, or hidden
            if i >= len(sliders):
                return gr.update(visible=False)
            s = sliders[i]
            return gr.update(visible=True, label=s.label, minimum=s.minimum, maximum=s.maximum, value=s.default)
        return [gr.update(visible=module not in pp.NO_RESOLUTION), slider(0), slider(1)]

    def on_preview(img, name, res, a, b, perfect, resize):
        if img is None:
            return None
        if perfect:
            res = pixel_perfect_resolution(img, 512, 512, RESIZE_MODES.index(resize))
        return pp.run_preprocessor(name, img, int(res), a, b)

    module.change(on_module, [module], [resolution, threshold_a, threshold_b], concurrency_limit=None)
    run.click(on_preview, [image, module, resolution, threshold_a, threshold_b, pixel_perfect, resize_mode],
              [preview], concurrency_limit=None)
    refresh.click(lambda current: gr.update(choices=["None", *nets.titles()],
                                            value=current), [model], [model], concurrency_limit=None)
    return {f"unit{n}_enabled": enabled, f"unit{n}_image": image, f"unit{n}_module": module,
            f"unit{n}_model": model, f"unit{n}_weight": weight, f"unit{n}_guidance_start": start,
            f"unit{n}_guidance_end": end, f"unit{n}_processor_res": resolution, f"unit{n}_threshold_a": threshold_a,
            f"unit{n}_threshold_b": threshold_b, f"unit{n}_control_mode": control_mode,
            f"unit{n}_resize_mode": resize_mode, f"unit{n}_pixel_perfect": pixel_perfect}
