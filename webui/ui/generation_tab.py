"""A generation tab's controls (txt2img or img2img: A1111's layout, labels and element ids), by request field
name, with the Hires. fix, Refiner, Script and extension sections."""
from __future__ import annotations

import math
from dataclasses import dataclass

import gradio as gr

from ..engine import images as im
from ..engine.sampling import registry
from ..jobs.backend import Backend
from ..jobs.queue import QUEUED
from ..jobs.request import fields as mapping
from . import scripts_ui
from .common import escape

POLL_SECONDS = 0.2
SCHEDULER_LABELS = tuple(registry.SCHEDULERS.values())
SAMPLER_NAMES = tuple(spec.name for spec in registry.SAMPLERS)

def token_counter_text(backend: Backend, text: str, steps=20, styles=None, negative: bool = False) -> str:
    """A1111's counter: tokens / the capacity of the chunks they need (75 per chunk), with the emphasis
    syntax, embeddings, styles and the longest scheduled text taken into account."""
    try:
        count, capacity = backend.count_tokens(text or "", int(steps or 20), list(styles or []), negative=negative)
    except (ValueError, TypeError) as exc:
        return f"<div class='token-counter'>? ({escape(str(exc))})</div>"
    chunks = max(1, math.ceil(count / 75))
    title = f"{chunks} chunk{'s' if chunks > 1 else ''} of 75 tokens"
    return f"<div class='token-counter' title='{title}'>{count}/{capacity}</div>"


def progress_html(backend: Backend, job) -> str:
    if job.state == QUEUED:
        ahead = backend.queue.position(job)
        return f"<div class='progress-text'>In queue: {ahead} job{'s' if ahead != 1 else ''} ahead of yours</div>"
    p = job.progress
    if not p.total:
        return "<div class='progress-text'>Starting ...</div>"
    eta = job.eta
    eta_text = f", ETA {eta:.1f} s" if eta is not None else ""
    extra = f" {p.text}" if p.text else ""
    return (f"<div class='progress-text'>Step {p.step}/{p.total}{eta_text}{extra}</div>"
            f"<div class='progress-bar'><div style='width:{100 * p.fraction:.1f}%'></div></div>")


class Tab:
    """The components of one generation tab (txt2img or img2img), by field name."""

    def __init__(self, kind: str):
        self.kind = kind
        self.fields: dict[str, gr.components.Component] = {}
        self.field_names: tuple[str, ...] = (mapping.TXT2IMG_FIELDS + mapping.HIRES_FIELDS if kind == "txt2img"
                                             else mapping.IMG2IMG_FIELDS)


def build_tab(kind: str, backend: Backend) -> Tab:
    tab = Tab(kind)
    f = tab.fields
    with gr.Row():
        with gr.Column(scale=6):
            f["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id=f"{kind}_prompt",
                                     placeholder="Prompt (press Ctrl+Enter to generate)")
            tab.prompt_tokens = gr.HTML(token_counter_text(backend, ""), elem_id=f"{kind}_token_counter")
            f["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{kind}_neg_prompt",
                                              placeholder="Negative prompt (press Ctrl+Enter to generate)")
            tab.negative_tokens = gr.HTML(token_counter_text(backend, ""), elem_id=f"{kind}_negative_token_counter")
        with gr.Column(scale=1, min_width=160):
            tab.generate = gr.Button("Generate", variant="primary", elem_id=f"{kind}_generate")
            with gr.Row():
                tab.interrupt = gr.Button("Interrupt", visible=False, elem_id=f"{kind}_interrupt", min_width=60)
                tab.skip = gr.Button("Skip", visible=False, elem_id=f"{kind}_skip", min_width=60)
            with gr.Row():
                tab.styles = gr.Dropdown(list(backend.styles.styles), value=[], multiselect=True, label="Styles",
                                         elem_id=f"{kind}_styles", scale=4)
                tab.styles_refresh = gr.Button("⟳", elem_id=f"{kind}_styles_refresh", scale=0, min_width=40)
                tab.styles_apply = gr.Button("✎", elem_id=f"{kind}_style_apply", scale=0, min_width=40)
    with gr.Row():
        with gr.Column(scale=1):
            if kind == "img2img":
                with gr.Tabs(elem_id="mode_img2img") as tab.modes:
                    with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as mode_plain:
                        tab.init_image = gr.Image(type="pil", label="Image for img2img", elem_id="img2img_image",
                                                  sources=["upload", "clipboard"], image_mode="RGBA", height=360)
                    with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as mode_inpaint:
                        tab.sketch = gr.ImageEditor(type="pil", label="Image for inpainting with mask",
                                                    elem_id="img2img_inpaint_editor", sources=["upload", "clipboard"],
                                                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                                    transforms=(), layers=False, height=360, image_mode="RGBA")
                    with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as mode_upload:
                        tab.upload_image = gr.Image(type="pil", label="Image", elem_id="img2img_inpaint_base",
                                                    sources=["upload", "clipboard"], image_mode="RGBA", height=260)
                        tab.upload_mask = gr.Image(type="pil", label="Mask (white = repaint)",
                                                   elem_id="img2img_inpaint_mask", sources=["upload", "clipboard"],
                                                   image_mode="RGBA", height=260)
                tab.mode = gr.State("img2img")
                mode_plain.select(lambda: "img2img", None, [tab.mode], concurrency_limit=None)
                mode_inpaint.select(lambda: "inpaint", None, [tab.mode], concurrency_limit=None)
                mode_upload.select(lambda: "inpaint_upload", None, [tab.mode], concurrency_limit=None)
                f["resize_mode"] = gr.Radio(list(im.RESIZE_MODES), value=im.RESIZE_MODES[0], label="Resize mode",
                                            elem_id="img2img_resize_mode")
                with gr.Accordion("Inpaint options", open=True, elem_id="img2img_inpaint_options"):
                    f["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                    f["inpainting_mask_invert"] = gr.Radio(list(mapping.MASK_MODES), value=mapping.MASK_MODES[0],
                                                           label="Mask mode", elem_id="img2img_mask_mode")
                    f["inpainting_fill"] = gr.Radio(list(im.MASKED_CONTENT), value="original", label="Masked content",
                                                    elem_id="img2img_inpainting_fill")
                    f["inpaint_full_res"] = gr.Radio(list(mapping.INPAINT_AREAS), value=mapping.INPAINT_AREAS[0],
                                                     label="Inpaint area", elem_id="img2img_inpaint_full_res")
                    f["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4,
                                                              label="Only masked padding, pixels",
                                                              elem_id="img2img_inpaint_full_res_padding")
            with gr.Row():
                f["sampler_name"] = gr.Dropdown(list(SAMPLER_NAMES), value="Euler", label="Sampling method",
                                                elem_id=f"{kind}_sampling")
                f["scheduler"] = gr.Dropdown(list(SCHEDULER_LABELS), value="Automatic", label="Schedule type",
                                             elem_id=f"{kind}_scheduler")
                f["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{kind}_steps")
            size = backend.native_size or backend.native_size_of(backend.default_checkpoint_name())
            with gr.Row():
                with gr.Column(scale=4):
                    f["width"] = gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id=f"{kind}_width")
                    f["height"] = gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id=f"{kind}_height")
                tab.swap = gr.Button("⇅", elem_id=f"{kind}_res_switch_btn", scale=0, min_width=40)
                with gr.Column(scale=1):
                    f["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{kind}_batch_count")
                    f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{kind}_batch_size")
            with gr.Row():
                f["cfg_scale"] = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale",
                                           elem_id=f"{kind}_cfg_scale", scale=3)
                f["clip_skip"] = gr.Slider(1, 12, value=backend.options["CLIP_stop_at_last_layers"], step=1,
                                           label="Clip skip", elem_id=f"{kind}_clip_skip", scale=1)
                f["tiling"] = gr.Checkbox(False, label="Tiling", elem_id=f"{kind}_tiling", scale=0, min_width=80)
            if kind == "img2img":
                f["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                                    elem_id="img2img_denoising_strength")
            else:
                _hires_section(backend, f)
            with gr.Row():
                f["seed"] = gr.Number(value=-1, label="Seed", precision=0, elem_id=f"{kind}_seed", scale=4)
                tab.random_seed = gr.Button("⚄", elem_id=f"{kind}_random_seed", scale=0, min_width=40)
                tab.reuse_seed = gr.Button("♻", elem_id=f"{kind}_reuse_seed", scale=0, min_width=40)
                extra = gr.Checkbox(False, label="Extra", elem_id=f"{kind}_subseed_show", scale=0, min_width=80)
            with gr.Group(visible=False, elem_id=f"{kind}_seed_extras") as seed_extras:
                with gr.Row():
                    f["subseed"] = gr.Number(value=-1, label="Variation seed", precision=0, elem_id=f"{kind}_subseed")
                    f["subseed_strength"] = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                                      elem_id=f"{kind}_subseed_strength")
                with gr.Row():
                    f["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                                        elem_id=f"{kind}_seed_resize_from_w")
                    f["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                                        elem_id=f"{kind}_seed_resize_from_h")
            extra.change(lambda shown: gr.update(visible=shown), [extra], [seed_extras], concurrency_limit=None)
            with gr.Accordion("Refiner", open=False, elem_id=f"{kind}_refiner"):
                with gr.Row():
                    f["refiner_checkpoint"] = gr.Dropdown([mapping.NO_REFINER, *backend.checkpoints()],
                                                          value=mapping.NO_REFINER, label="Checkpoint",
                                                          elem_id=f"{kind}_refiner_checkpoint", scale=3)
                    f["refiner_switch_at"] = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                                       elem_id=f"{kind}_refiner_switch_at", scale=2)
            tab.scripts = scripts_ui.build(backend.scripts, kind)
            tab.ext_inputs = _extension_sections(backend, tab)
        with gr.Column(scale=1):
            tab.progress = gr.HTML(elem_id=f"{kind}_progress")
            tab.preview = gr.Image(label="Preview", visible=False, elem_id=f"{kind}_preview", interactive=False,
                                   height=256)
            tab.gallery = gr.Gallery(label="Output", elem_id=f"{kind}_gallery", columns=4, height=420,
                                     object_fit="contain", interactive=False, buttons=["download", "fullscreen"])
            with gr.Row():
                tab.send_img2img = gr.Button("Send to img2img", elem_id=f"{kind}_send_to_img2img")
                tab.send_inpaint = gr.Button("Send to inpaint", elem_id=f"{kind}_send_to_inpaint")
            tab.info = gr.HTML(elem_id=f"html_info_{kind}")
            tab.error = gr.HTML(elem_id=f"{kind}_error")
    tab.seeds = gr.State([])
    tab.texts = gr.State([])
    tab.selected = gr.State(0)
    return tab


def _hires_section(backend: Backend, f: dict) -> None:
    """A1111's "Hires. fix" section of txt2img (its labels and element ids)."""
    from ..engine.upscale import upscaler_names

    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        f["enable_hr"] = gr.Checkbox(False, label="Hires. fix", elem_id="txt2img_enable_hr")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown(upscaler_names(), value="Latent", label="Upscaler",
                                           elem_id="txt2img_hr_upscaler")
            f["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                  elem_id="txt2img_hires_steps")
            f["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                                elem_id="txt2img_denoising_strength")
        with gr.Row():
            f["hr_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            f["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                         elem_id="txt2img_hr_resize_x")
            f["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                         elem_id="txt2img_hr_resize_y")
        with gr.Row():
            f["hr_checkpoint_name"] = gr.Dropdown([mapping.SAME_CHECKPOINT, *backend.checkpoints()],
                                                  value=mapping.SAME_CHECKPOINT, label="Hires checkpoint",
                                                  elem_id="hr_checkpoint")
            f["hr_sampler_name"] = gr.Dropdown([mapping.SAME_SAMPLER, *SAMPLER_NAMES], value=mapping.SAME_SAMPLER,
                                               label="Hires sampling method", elem_id="hr_sampler")
            f["hr_scheduler"] = gr.Dropdown([mapping.SAME_SCHEDULER, *SCHEDULER_LABELS],
                                            value=mapping.SAME_SCHEDULER, label="Hires schedule type",
                                            elem_id="hr_scheduler")
        f["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id="hires_prompt",
                                    placeholder="Prompt for hires fix pass. Leave empty to use the same prompt.")
        f["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2, elem_id="hires_neg_prompt",
                                             placeholder="Leave empty to use the same negative prompt.")


@dataclass
class UISection:
    """What an extension's UI builder gets: the tab kind and the prompt boxes (to insert text into)."""
    kind: str
    prompt: gr.components.Component
    negative_prompt: gr.components.Component


def _extension_sections(backend: Backend, tab: Tab) -> list[tuple[str, str, gr.components.Component]]:
    """Each active extension's section (an accordion); returns (title, value name, component) in order."""
    manager = backend.extensions
    found = []
    for ext in manager.active() if manager is not None else []:
        for build in ext.hooks.ui_builders:
            with gr.Accordion(ext.title, open=False, elem_id=f"{tab.kind}_ext_{ext.name}"):
                section = UISection(tab.kind, tab.fields["prompt"], tab.fields["negative_prompt"])
                components = manager.guard(ext, build, "ui")(section) or {}
                found += [(ext.title, name, c) for name, c in components.items()
                          if isinstance(c, gr.components.Component)]
    return found
