"""The Gradio page: A1111's tabs, controls and words, over a ``Backend``.

Every generation goes through the backend's one job queue. The Generate handler submits a job owned by
the browser session (``gr.Request.session_hash``) and then streams that job's own progress, preview and
results, so each browser sees only its own; Interrupt and Skip reach only the session's job. Gradio's
own queue runs these handlers without a concurrency limit (they only wait on our queue).
"""
from __future__ import annotations

import html
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from ..engine import images as im
from ..engine.sampling import registry
from ..jobs import saving
from ..jobs.backend import VAE_AUTOMATIC, VAE_NONE, Backend
from ..jobs.queue import DONE, FAILED, QUEUED
from ..options import OPTIONS
from . import extras_tab, mapping, scripts_ui

POLL_SECONDS = 0.2
SCHEDULER_LABELS = tuple(registry.SCHEDULERS.values())
SAMPLER_NAMES = tuple(spec.name for spec in registry.SAMPLERS)

CSS = """
#txt2img_generate, #img2img_generate, #txt2img_interrupt, #img2img_interrupt { min-height: 70px; }
.token-counter { text-align: right; font-size: 0.85em; opacity: 0.7; }
.job-warning { color: #b7791f; }
.progress-text { font-variant-numeric: tabular-nums; }
.progress-bar { height: 8px; background: var(--neutral-200); border-radius: 4px; overflow: hidden; }
.progress-bar > div { height: 100%; background: var(--color-accent); }
.job-error { color: var(--error-text-color, #c00); white-space: pre-wrap; }
"""

# Ctrl+Enter (or Cmd+Enter) clicks the Generate button of the visible tab; an optional forced theme
HEAD = """
<script>
document.addEventListener('keydown', function (e) {
  if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
    for (const id of ['txt2img_generate', 'img2img_generate']) {
      const b = document.getElementById(id);
      if (b && b.offsetParent !== null) { e.preventDefault(); b.click(); return; }
    }
  }
});
</script>
"""


def theme_head(theme: str | None) -> str:
    if theme not in ("light", "dark"):
        return HEAD
    return HEAD + f"""<script>
(function () {{
  const url = new URL(window.location);
  if (url.searchParams.get('__theme') !== '{theme}') {{
    url.searchParams.set('__theme', '{theme}');
    window.location.replace(url.href);
  }}
}})();
</script>"""


def token_counter_text(backend: Backend, text: str, steps=20, styles=None, negative: bool = False) -> str:
    """A1111's counter: tokens / the capacity of the chunks they need (75 per chunk), with the emphasis
    syntax, embeddings, styles and the longest scheduled text taken into account."""
    try:
        count, capacity = backend.count_tokens(text or "", int(steps or 20), list(styles or []), negative=negative)
    except (ValueError, TypeError) as exc:
        return f"<div class='token-counter'>? ({_escape(str(exc))})</div>"
    chunks = max(1, math.ceil(count / 75))
    title = f"{chunks} chunk{'s' if chunks > 1 else ''} of 75 tokens"
    return f"<div class='token-counter' title='{title}'>{count}/{capacity}</div>"


def _progress_html(backend: Backend, job) -> str:
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


def _info_html(text: str | None) -> str:
    if not text:
        return ""
    return "<div class='infotext'>" + "<br>".join(_escape(line) for line in text.split("\n")) + "</div>"


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


class _Files:
    """PNG files (with their infotext) the gallery shows and the download button hands out."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="webui-gallery-"))

    def write(self, image: Image.Image, text: str, job_id: str, index: int) -> str:
        path = self.folder / f"{job_id}-{index}.png"
        path.write_bytes(saving.png_with_infotext(image, text))
        return str(path)


def build(backend: Backend, *, theme: str | None = None) -> tuple[gr.Blocks, dict]:
    """The page, and the keyword arguments ``launch`` needs with it (css, head, allowed paths)."""
    files = _Files()
    checkpoints = list(backend.checkpoints())
    vae_choices = [VAE_AUTOMATIC, VAE_NONE, *backend.vaes()]

    with gr.Blocks(title="Stable Diffusion web UI", analytics_enabled=False) as demo:
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(checkpoints, value=backend.default_checkpoint_name(),
                                     label="Stable Diffusion checkpoint", elem_id="sd_model_checkpoint", scale=3)
            refresh = gr.Button("⟳", elem_id="refresh_checkpoints", scale=0, min_width=50)
            vae = gr.Dropdown(vae_choices, value=backend.options["sd_vae"] if backend.options["sd_vae"] in vae_choices
                              else VAE_AUTOMATIC, label="SD VAE", elem_id="sd_vae", scale=2)
            status = gr.Markdown(backend.status.describe(), elem_id="model_status")

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = _generation_tab("txt2img", backend)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = _generation_tab("img2img", backend)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras_tab.build(files.folder)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                with gr.Row():
                    png_image = gr.Image(type="filepath", label="Source", elem_id="pnginfo_image", image_mode=None,
                                         sources=["upload", "clipboard"])
                    with gr.Column():
                        png_info = gr.HTML(elem_id="pnginfo_html")
                        png_text = gr.Textbox(visible=False, elem_id="pnginfo_generation_info")
                        with gr.Row():
                            png_to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                            png_to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img")
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_inputs = _settings_tab(backend)
                manager = backend.extensions
                ext_names = list(manager.extensions) if manager is not None else []
                settings_extensions = gr.CheckboxGroup(
                    ext_names, value=[n for n in ext_names if manager.extensions[n].enabled],
                    label="Enabled extensions (also in the Extensions tab)", elem_id="setting_enabled_extensions")
                settings_apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
                settings_result = gr.Markdown(elem_id="settings_result")
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                ext_list = gr.Markdown(_extensions_text(backend), elem_id="extensions_list")
                manager = backend.extensions
                names = list(manager.extensions) if manager is not None else []
                ext_enabled = gr.CheckboxGroup(names, value=[n for n in names if manager.extensions[n].enabled],
                                               label="Enabled extensions", elem_id="extensions_enabled")
                ext_apply = gr.Button("Apply", elem_id="extensions_apply")
                ext_result = gr.Markdown(elem_id="extensions_result")

        timer = gr.Timer(1.0)

        # ---- quick settings ----
        def on_checkpoint(name, vae_choice):
            if not name:
                return backend.status.describe()
            try:
                backend.load(name, vae_choice)
                backend.options.update({"sd_model_checkpoint": name, "sd_vae": vae_choice or VAE_AUTOMATIC})
            except ValueError as exc:
                return f"**Error:** {_escape(str(exc))}"
            return backend.status.describe()

        refiners = [t2i.fields["refiner_checkpoint"], i2i.fields["refiner_checkpoint"]]

        def on_refresh(current, *refiner_choices):
            names = list(backend.checkpoints())
            vaes = [VAE_AUTOMATIC, VAE_NONE, *backend.vaes()]
            refiner_updates = [gr.update(choices=[mapping.NO_REFINER, *names],
                                         value=r if r in names else mapping.NO_REFINER) for r in refiner_choices]
            return (gr.update(choices=names, value=current if current in names else None), gr.update(choices=vaes),
                    *refiner_updates)

        checkpoint.input(on_checkpoint, [checkpoint, vae], [status], concurrency_limit=None)
        vae.input(on_checkpoint, [checkpoint, vae], [status], concurrency_limit=None)
        refresh.click(on_refresh, [checkpoint, *refiners], [checkpoint, vae, *refiners], concurrency_limit=None)
        timer.tick(lambda: backend.status.describe(), None, [status], show_progress="hidden",
                   concurrency_limit=None)

        for tab in (t2i, i2i):
            _wire_generation(tab, backend, files, checkpoint, vae)
        _wire_results(t2i, i2i, tabs)
        _wire_results(i2i, i2i, tabs)

        # ---- PNG Info ----
        def on_png(path):
            if not path:
                return "", ""
            text = saving.read_infotext(path)
            if text is None:
                return "<p>No generation parameters found in this image.</p>", ""
            return _info_html(text), text

        png_image.change(on_png, [png_image], [png_info, png_text], concurrency_limit=None)
        for button, tab, target in ((png_to_txt2img, t2i, "txt2img"), (png_to_img2img, i2i, "img2img")):
            outputs = [tab.fields[name] for name in tab.field_names] + [checkpoint, tabs]
            button.click(_send_fields_fn(backend, tab, target), [png_text], outputs, concurrency_limit=None)

        # ---- Extensions ----
        def apply_extensions(enabled):
            try:
                backend.extensions.set_enabled(list(enabled or []))
            except (ValueError, AttributeError) as exc:
                return _extensions_text(backend), f"**Not changed:** {_escape(str(exc))}"
            return _extensions_text(backend), ("Saved. Generation follows at once; extension sections in the "
                                               "tabs and extension routes change at the next start.")

        ext_apply.click(apply_extensions, [ext_enabled], [ext_list, ext_result], concurrency_limit=None)

        # ---- Settings ----
        def apply_settings(*values):
            changes = dict(zip(settings_inputs, values[:-1]))
            try:
                backend.options.update(changes)
                if backend.extensions is not None:
                    backend.extensions.set_enabled(list(values[-1] or []))
            except ValueError as exc:
                return f"**Not saved:** {_escape(str(exc))}"
            where = f" to `{backend.options.path}`" if backend.options.path else ""
            return f"Settings saved{where}."

        settings_apply.click(apply_settings, [*settings_inputs.values(), settings_extensions], [settings_result],
                             concurrency_limit=None)

    launch_kwargs = dict(css=CSS, head=theme_head(theme), allowed_paths=[str(backend.paths.outputs)])
    return demo, launch_kwargs


class _Tab:
    """The components of one generation tab (txt2img or img2img), by field name."""

    def __init__(self, kind: str):
        self.kind = kind
        self.fields: dict[str, gr.components.Component] = {}
        self.field_names: tuple[str, ...] = (mapping.TXT2IMG_FIELDS + mapping.HIRES_FIELDS if kind == "txt2img"
                                             else mapping.IMG2IMG_FIELDS)


def _generation_tab(kind: str, backend: Backend) -> _Tab:
    tab = _Tab(kind)
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


def _extension_sections(backend: Backend, tab: _Tab) -> list[tuple[str, str, gr.components.Component]]:
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


def _wire_generation(tab: _Tab, backend: Backend, files: _Files, checkpoint, vae) -> None:
    names = tab.field_names
    inputs = [tab.fields[n] for n in names] + [checkpoint, vae, tab.styles]
    n_ext = len(tab.ext_inputs)
    inputs += [c for _, _, c in tab.ext_inputs]
    script_components = [tab.scripts.choice, *tab.scripts.components]
    inputs += script_components
    if tab.kind == "img2img":
        inputs += [tab.mode, tab.init_image, tab.sketch, tab.upload_image, tab.upload_mask]
    outputs = [tab.gallery, tab.info, tab.progress, tab.preview, tab.generate, tab.interrupt, tab.skip,
               tab.seeds, tab.texts, tab.selected, tab.error]

    def finish(updates: dict) -> dict:
        base = {tab.generate: gr.update(visible=True), tab.interrupt: gr.update(visible=False),
                tab.skip: gr.update(visible=False), tab.preview: gr.update(visible=False)}
        base.update(updates)
        return base

    def generate(request: gr.Request, *values):
        values = list(values)
        fields = dict(zip(names, values[:len(names)]))
        ckpt, vae_choice, styles = values[len(names):len(names) + 3]
        script_args: dict[str, dict] = {}
        for (title, name, _), value in zip(tab.ext_inputs, values[len(names) + 3:len(names) + 3 + n_ext]):
            script_args.setdefault(title, {})[name] = value
        start = len(names) + 3 + n_ext
        picked = scripts_ui.chosen(tab.scripts, values[start], values[start + 1:start + len(script_components)])
        try:
            req = mapping.request_from_fields(fields)
            if tab.kind == "img2img":
                _attach_images(req, *values[start + len(script_components):])
            common = dict(kind=tab.kind, owner=request.session_hash if request else None, checkpoint=ckpt or None,
                          vae=vae_choice or None, styles=list(styles or []), script_args=script_args)
            if picked is not None:
                script, options = backend.scripts.parse(picked[0], picked[1], tab.kind)
                job = backend.submit_script(req, script, options, **common)
            else:
                job = backend.submit(req, **common)
        except (ValueError, KeyError) as exc:
            yield finish({tab.error: f"<div class='job-error'>{_escape(str(exc))}</div>", tab.progress: ""})
            return
        yield {tab.generate: gr.update(visible=False), tab.interrupt: gr.update(visible=True),
               tab.skip: gr.update(visible=True), tab.error: "", tab.progress: _progress_html(backend, job)}
        shown = -1
        while not job.wait(POLL_SECONDS):
            update = {tab.progress: _progress_html(backend, job)}
            p = job.progress
            if p.preview is not None and p.preview_step != shown:
                shown = p.preview_step
                update[tab.preview] = gr.update(value=p.preview, visible=True)
            yield update
        if job.state != DONE:
            message = job.error if job.state == FAILED else "Cancelled."
            yield finish({tab.error: f"<div class='job-error'>{_escape(message or 'failed')}</div>",
                            tab.progress: ""})
            return
        out = job.result
        if out.paths and len(out.paths) >= len(out.images):      # saved: the files themselves
            gallery = [(str(path), None) for path in out.paths[:len(out.images)]]
        else:
            gallery = [(files.write(img, text, job.id, i), None)
                       for i, (img, text) in enumerate(zip(out.images, out.infotexts))]
        note = " (interrupted)" if out.interrupted else ""
        warnings = "".join(f"<p class='job-warning'>{_escape(w)}</p>" for w in out.warnings)
        seconds = (job.finished or time.time()) - (job.started or job.created)
        yield finish({tab.gallery: gallery, tab.info: _info_html(out.infotexts[0] if out.infotexts else "")
                        + f"<p class='time-taken'>Time taken: {seconds:.2f} s{note}</p>" + warnings,
                        tab.progress: "", tab.seeds: out.seeds, tab.texts: out.infotexts, tab.selected: 0})

    tab.generate.click(generate, inputs, outputs, concurrency_limit=None, show_progress="hidden")

    def session_jobs(request: gr.Request | None):
        owner = request.session_hash if request else None
        return [job for job in (backend.queue.jobs_of(owner) if owner else []) if job.kind == tab.kind]

    def interrupt(request: gr.Request):
        for job in session_jobs(request):
            backend.queue.interrupt(job.id)

    def skip(request: gr.Request):
        for job in session_jobs(request):
            backend.queue.skip(job.id)

    tab.interrupt.click(interrupt, None, None, concurrency_limit=None)
    tab.skip.click(skip, None, None, concurrency_limit=None)

    for key, counter in (("prompt", tab.prompt_tokens), ("negative_prompt", tab.negative_tokens)):
        def count(text, steps, styles, negative=key == "negative_prompt"):
            return token_counter_text(backend, text, steps, styles, negative=negative)
        for trigger in (tab.fields[key], tab.styles):
            trigger.change(count, [tab.fields[key], tab.fields["steps"], tab.styles], [counter],
                           concurrency_limit=None, show_progress="hidden")

    def apply_styles(prompt, negative, styles):
        try:
            prompt, negative = backend.styles.apply(prompt or "", negative or "", list(styles or []))
        except ValueError as exc:
            return gr.update(), gr.update(), gr.update(), f"<div class='job-error'>{_escape(str(exc))}</div>"
        return prompt, negative, [], ""

    tab.styles_apply.click(apply_styles, [tab.fields["prompt"], tab.fields["negative_prompt"], tab.styles],
                           [tab.fields["prompt"], tab.fields["negative_prompt"], tab.styles, tab.error],
                           concurrency_limit=None)
    tab.styles_refresh.click(lambda current: gr.update(choices=list(backend.styles.styles),
                                                       value=[s for s in current or [] if s in backend.styles.styles]),
                             [tab.styles], [tab.styles], concurrency_limit=None)
    tab.swap.click(lambda w, h: (h, w), [tab.fields["width"], tab.fields["height"]],
                   [tab.fields["width"], tab.fields["height"]], concurrency_limit=None)
    tab.random_seed.click(lambda: -1, None, [tab.fields["seed"]], concurrency_limit=None)
    tab.reuse_seed.click(lambda seeds, i, current: seeds[i] if seeds and i < len(seeds) else current,
                         [tab.seeds, tab.selected, tab.fields["seed"]], [tab.fields["seed"]], concurrency_limit=None)

    def on_select(texts, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return index, _info_html(texts[index] if index < len(texts) else "")

    tab.gallery.select(on_select, [tab.texts], [tab.selected, tab.info], concurrency_limit=None)


def _attach_images(req, mode, init_image, sketch, upload_image, upload_mask) -> None:
    if mode == "inpaint":
        if not sketch or sketch.get("background") is None:
            raise ValueError("inpaint: upload an image and paint the area to change")
        image = sketch["background"]
        req.init_image = image
        req.mask = mapping.mask_from_layers(sketch.get("layers") or [], image.size)
        if req.mask is None:
            raise ValueError("inpaint: paint a mask over the area to change (the brush)")
    elif mode == "inpaint_upload":
        if upload_image is None or upload_mask is None:
            raise ValueError("inpaint upload: both the image and the mask are needed")
        req.init_image, req.mask = upload_image, mapping.uploaded_mask(upload_mask)
    else:
        if init_image is None:
            raise ValueError("img2img: upload an image first")
        req.init_image = init_image
    req.validate()


def _wire_results(source: _Tab, i2i: _Tab, tabs) -> None:
    """"Send to img2img" / "Send to inpaint": the selected image (and its prompt) to the img2img tab."""

    def selected_image(gallery, index):
        if not gallery:
            raise gr.Error("Generate an image first")
        item = gallery[min(index or 0, len(gallery) - 1)]
        path = item[0] if isinstance(item, (tuple, list)) else item
        with Image.open(path) as img:
            return img.convert("RGB")

    def to_img2img(gallery, index, prompt, negative):
        return selected_image(gallery, index), prompt, negative

    def to_inpaint(gallery, index, prompt, negative):
        image = selected_image(gallery, index)
        return {"background": image, "layers": [], "composite": image}, prompt, negative

    def show(mode: str):
        # the tab is switched first: an image editor that is not on screen does not take a new value
        return lambda: (gr.Tabs(selected="img2img"), gr.Tabs(selected=mode), mode)

    common = [source.gallery, source.selected, source.fields["prompt"], source.fields["negative_prompt"]]
    texts = [i2i.fields["prompt"], i2i.fields["negative_prompt"]]
    source.send_img2img.click(show("img2img"), None, [tabs, i2i.modes, i2i.mode], concurrency_limit=None).then(
        to_img2img, common, [i2i.init_image, *texts], concurrency_limit=None)
    source.send_inpaint.click(show("inpaint"), None, [tabs, i2i.modes, i2i.mode], concurrency_limit=None).then(
        to_inpaint, common, [i2i.sketch, *texts], concurrency_limit=None)


def _send_fields_fn(backend: Backend, tab: _Tab, target: str):
    def send(text):
        values = mapping.fields_from_infotext(text) if text else {}
        if values.get("refiner_checkpoint", mapping.NO_REFINER) != mapping.NO_REFINER:
            try:
                values["refiner_checkpoint"] = backend.find_checkpoint(values["refiner_checkpoint"])
            except ValueError:
                values["refiner_checkpoint"] = mapping.NO_REFINER      # a refiner this box does not have
        updates = [gr.update(value=values[n]) if n in values else gr.update() for n in tab.field_names]
        try:
            match = backend.find_checkpoint(values["checkpoint"]) if values.get("checkpoint") else None
        except ValueError:
            match = None      # a model this box does not have: keep the current one
        return [*updates, gr.update(value=match) if match else gr.update(), gr.Tabs(selected=target)]
    return send


def _settings_tab(backend: Backend) -> dict[str, gr.components.Component]:
    inputs = {}
    values = backend.options.as_dict()
    for key, option in OPTIONS.items():
        if key in ("sd_model_checkpoint", "sd_vae") or isinstance(option.default, list):
            continue            # set from the pickers at the top / the Extensions tab
        value = values[key]
        if isinstance(option.default, bool):
            inputs[key] = gr.Checkbox(value=value, label=option.label, elem_id=f"setting_{key}")
        elif option.choices:
            inputs[key] = gr.Radio(list(option.choices), value=value, label=option.label, elem_id=f"setting_{key}")
        elif isinstance(option.default, int):
            inputs[key] = gr.Slider(option.minimum, option.maximum, value=value, step=1, label=option.label,
                                    elem_id=f"setting_{key}")
        else:
            inputs[key] = gr.Textbox(value=value, label=option.label, elem_id=f"setting_{key}")
    return inputs


def _extensions_text(backend: Backend) -> str:
    manager = backend.extensions
    if manager is None or not manager.extensions:
        where = f" (folder `{manager.folder}`)" if manager is not None else ""
        return f"No extensions installed{where}. See docs/extensions.md to write one."
    rows = ["| extension | version | state | description |", "|---|---|---|---|"]
    for ext in manager.extensions.values():
        manifest = ext.manifest
        state = ext.state + ("" if not ext.errors else " — " + _escape(ext.errors[-1]).replace("|", "\\|"))
        rows.append(f"| **{_escape(ext.title)}** (`{ext.name}`) | {manifest.version if manifest else '?'} | {state} | "
                    f"{_escape(manifest.description) if manifest else ''} |")
    return "\n".join(rows)
