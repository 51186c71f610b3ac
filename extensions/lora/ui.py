"""The LoRA browser: a card per file (name and training metadata); a click adds ``<lora:name:1>`` to the prompt."""
from __future__ import annotations

import gradio as gr


def _cards(library) -> list[list[str]]:
    rows = []
    for item in library.listing():
        meta = item["metadata"]
        details = ", ".join(f"{k.removeprefix('ss_')}: {meta[k]}" for k in
                            ("ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                             "ss_num_train_images", "webui.description") if meta.get(k))
        rows.append([item["name"], details or "no training metadata"])
    return rows


def build_browser(ui, library) -> None:
    with gr.Row():
        cards = gr.Dataset(components=[gr.Textbox(visible=False), gr.Textbox(visible=False)],
                           headers=["LoRA", "details"], samples=_cards(library), type="values",
                           label="LoRA (click to add to the prompt)", elem_id=f"{ui.kind}_lora_cards",
                           samples_per_page=12)
        refresh = gr.Button("⟳", scale=0, min_width=40, elem_id=f"{ui.kind}_lora_refresh")

    def insert(card, prompt):
        if not card:
            return gr.update()
        tag = f"<lora:{card[0]}:1>"
        prompt = prompt or ""
        return prompt + (", " if prompt.strip() and not prompt.rstrip().endswith(",") else "") + tag

    cards.click(insert, [cards, ui.prompt], [ui.prompt], concurrency_limit=None)
    refresh.click(lambda: gr.update(samples=_cards(library)), None, [cards], concurrency_limit=None)
