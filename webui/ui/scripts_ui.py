"""The Script dropdown of the generation tabs (A1111's): one group of controls per selectable script, built
from the script's own argument list (``Script.args``), shown when that script is picked."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

NONE = "None"
# X/Y/Z plot's dropdown value lists: the UI types values as text, as A1111 does with "Use text inputs"
_TEXT_INPUTS = "Use text inputs instead of dropdowns"


@dataclass
class ScriptControls:
    choice: gr.Dropdown
    groups: dict[str, gr.Group] = field(default_factory=dict)
    # script name -> per positional argument: a component, or a fixed value sent as is
    arguments: dict[str, list] = field(default_factory=dict)

    @property
    def components(self) -> list[gr.components.Component]:
        return [a for args in self.arguments.values() for a in args if isinstance(a, gr.components.Component)]


def build(registry, kind: str) -> ScriptControls:
    """The dropdown and every script's (hidden) controls; call inside the tab's layout."""
    scripts = registry.scripts(kind)
    controls = ScriptControls(gr.Dropdown([NONE, *(s.title for s in scripts)], value=NONE, label="Script",
                                          elem_id=f"{kind}_script"))
    for script in scripts:
        title = script.title
        with gr.Group(visible=False, elem_id=f"{kind}_script_{_slug(script.name)}") as group:
            controls.groups[title] = group
            controls.arguments[title] = [_control(arg, kind, title, i) for i, arg in enumerate(script.args(kind))]

    def show(selected):
        return [gr.update(visible=title == selected) for title in controls.groups]

    controls.choice.change(show, [controls.choice], list(controls.groups.values()), concurrency_limit=None)
    return controls


def _slug(text: str) -> str:
    """A script's title or name as a piece of an elem_id."""
    return text.replace(" ", "_").replace("/", "")


def _control(arg, kind: str, title: str, index: int):
    elem_id = f"{kind}_script_{_slug(title)}_{index}"
    if isinstance(arg.value, (tuple, list)) and arg.choices:
        return gr.CheckboxGroup(list(arg.choices), value=list(arg.value), label=arg.label, elem_id=elem_id)
    if isinstance(arg.value, (tuple, list)):          # a dropdown list of values: typed as text instead
        return list(arg.value)
    if arg.label == "Info" and arg.value is None:     # the UI's explanation text of A1111's scripts
        return None
    if arg.label == _TEXT_INPUTS:
        return True
    if arg.choices:
        return gr.Dropdown(list(arg.choices), value=arg.value, label=arg.label, elem_id=elem_id)
    if isinstance(arg.value, bool):
        return gr.Checkbox(arg.value, label=arg.label, elem_id=elem_id)
    if arg.minimum is not None and arg.maximum is not None:
        return gr.Slider(arg.minimum, arg.maximum, value=arg.value, step=arg.step or 1, label=arg.label,
                         elem_id=elem_id)
    return gr.Textbox(value=arg.value or "", label=arg.label, lines=3 if "List" in arg.label else 1, elem_id=elem_id)


def chosen(controls: ScriptControls, selected: str | None, values: list) -> tuple[str, list] | None:
    """(script title, A1111-style positional arguments) for the picked script, from the values of
    ``controls.components`` in order; None when no script is picked."""
    by_component = dict(zip(controls.components, values))
    if not selected or selected == NONE:
        return None
    args = [by_component[a] if isinstance(a, gr.components.Component) else a for a in controls.arguments[selected]]
    return selected, args
