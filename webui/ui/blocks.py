"""The Gradio page: A1111's tabs, controls and words, over a ``Backend``.

Every generation goes through the backend's one job queue. The Generate handler submits a job owned by
the browser session (``gr.Request.session_hash``) and then streams that job's own progress, preview and
results, so each browser sees only its own; Interrupt and Skip reach only the session's job. Gradio's
own queue runs these handlers without a concurrency limit (they only wait on our queue).
"""
from __future__ import annotations

import gradio as gr

from ..jobs import saving
from ..jobs.backend import VAE_AUTOMATIC, VAE_NONE, Backend
from ..jobs.request import fields as mapping
from ..options import OPTIONS
from . import extras_tab
from .common import Files, escape, info_html
from .generate import send_fields_fn, wire_generation, wire_results
from .generation_tab import build_tab

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


def build(backend: Backend, *, theme: str | None = None) -> tuple[gr.Blocks, dict]:
    """The page, and the keyword arguments ``launch`` needs with it (css, head, allowed paths)."""
    files = Files()
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
                t2i = build_tab("txt2img", backend)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = build_tab("img2img", backend)
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
                return f"**Error:** {escape(str(exc))}"
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
            wire_generation(tab, backend, files, checkpoint, vae)
        wire_results(t2i, i2i, tabs)
        wire_results(i2i, i2i, tabs)

        # ---- PNG Info ----
        def on_png(path):
            if not path:
                return "", ""
            text = saving.read_infotext(path)
            if text is None:
                return "<p>No generation parameters found in this image.</p>", ""
            return info_html(text), text

        png_image.change(on_png, [png_image], [png_info, png_text], concurrency_limit=None)
        for button, tab, target in ((png_to_txt2img, t2i, "txt2img"), (png_to_img2img, i2i, "img2img")):
            outputs = [tab.fields[name] for name in tab.field_names] + [checkpoint, tabs]
            button.click(send_fields_fn(backend, tab, target), [png_text], outputs, concurrency_limit=None)

        # ---- Extensions ----
        def apply_extensions(enabled):
            try:
                backend.extensions.set_enabled(list(enabled or []))
            except (ValueError, AttributeError) as exc:
                return _extensions_text(backend), f"**Not changed:** {escape(str(exc))}"
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
                return f"**Not saved:** {escape(str(exc))}"
            where = f" to `{backend.options.path}`" if backend.options.path else ""
            return f"Settings saved{where}."

        settings_apply.click(apply_settings, [*settings_inputs.values(), settings_extensions], [settings_result],
                             concurrency_limit=None)

    launch_kwargs = dict(css=CSS, head=theme_head(theme), allowed_paths=[str(backend.paths.outputs)])
    return demo, launch_kwargs


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
        state = ext.state + ("" if not ext.errors else " — " + escape(ext.errors[-1]).replace("|", "\\|"))
        rows.append(f"| **{escape(ext.title)}** (`{ext.name}`) | {manifest.version if manifest else '?'} | {state} | "
                    f"{escape(manifest.description) if manifest else ''} |")
    return "\n".join(rows)
