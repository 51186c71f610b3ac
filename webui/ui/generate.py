"""The Generate button and what follows: the tab's values become a job (``jobs/request/fields.py``), the job is
submitted as the browser session's own and streamed (progress, live preview, queue place), the results shown;
Interrupt / Skip reach only the session's job. Also "Send to img2img / inpaint" and PNG Info's "Send to"."""
from __future__ import annotations

import time

import gradio as gr
from PIL import Image

from ..jobs.backend import Backend
from ..jobs.queue import DONE, FAILED
from ..jobs.request import fields as mapping
from . import scripts_ui
from .common import Files, escape, info_html
from .generation_tab import POLL_SECONDS, Tab, progress_html, token_counter_text

def wire_generation(tab: Tab, backend: Backend, files: Files, checkpoint, vae) -> None:
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
        extension_values: dict[str, dict] = {}
        for (title, name, _), value in zip(tab.ext_inputs, values[len(names) + 3:len(names) + 3 + n_ext]):
            extension_values.setdefault(title, {})[name] = value
        start = len(names) + 3 + n_ext
        picked = scripts_ui.chosen(tab.scripts, values[start], values[start + 1:start + len(script_components)])
        images = (dict(zip(("mode", "init_image", "sketch", "upload_image", "upload_mask"),
                           values[start + len(script_components):])) if tab.kind == "img2img" else None)
        try:
            spec = mapping.job_from_fields(backend.requests, fields, tab.kind, images=images, checkpoint=ckpt,
                                           vae=vae_choice, styles=styles, script=picked,
                                           extension_values=extension_values,
                                           owner=request.session_hash if request else None)
            job = backend.submit(spec)
        except (ValueError, KeyError) as exc:
            yield finish({tab.error: f"<div class='job-error'>{escape(str(exc))}</div>", tab.progress: ""})
            return
        yield {tab.generate: gr.update(visible=False), tab.interrupt: gr.update(visible=True),
               tab.skip: gr.update(visible=True), tab.error: "", tab.progress: progress_html(backend, job)}
        shown = -1
        while not job.wait(POLL_SECONDS):
            update = {tab.progress: progress_html(backend, job)}
            p = job.progress
            if p.preview is not None and p.preview_step != shown:
                shown = p.preview_step
                update[tab.preview] = gr.update(value=p.preview, visible=True)
            yield update
        if job.state != DONE:
            message = job.error if job.state == FAILED else "Cancelled."
            yield finish({tab.error: f"<div class='job-error'>{escape(message or 'failed')}</div>",
                            tab.progress: ""})
            return
        out = job.result
        gallery = [(str(r.path) if r.path is not None else files.write(r.image, r.infotext, job.id, i), None)
                   for i, r in enumerate(out.images)]     # saved: the files themselves
        note = " (interrupted)" if out.interrupted else ""
        warnings = "".join(f"<p class='job-warning'>{escape(w)}</p>" for w in out.warnings)
        seconds = (job.finished or time.time()) - (job.started or job.created)
        yield finish({tab.gallery: gallery, tab.info: info_html(out.infotexts[0] if out.infotexts else "")
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
            return gr.update(), gr.update(), gr.update(), f"<div class='job-error'>{escape(str(exc))}</div>"
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
        return index, info_html(texts[index] if index < len(texts) else "")

    tab.gallery.select(on_select, [tab.texts], [tab.selected, tab.info], concurrency_limit=None)


def wire_results(source: Tab, i2i: Tab, tabs) -> None:
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


def send_fields_fn(backend: Backend, tab: Tab, target: str):
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
