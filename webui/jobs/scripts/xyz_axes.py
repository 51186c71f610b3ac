"""X/Y/Z plot axes: A1111 1.10's axis list (``AxisOption``, in its order, per tab) and what each axis does
to one run's ``Cell`` (the apply functions) or checks before anything runs (the confirm functions)."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...engine import upscale
from ...engine.request import GenerationRequest
from ...engine.sampling import registry
from .base import ScriptEnvironment


@dataclass
class Cell:
    """What one run gets, while the axes are applied to it."""
    request: GenerationRequest
    checkpoint: str | None = None
    vae: str | None = None
    styles: list[str] = field(default_factory=list)


Apply = Callable[[Cell, Any, Sequence[Any], ScriptEnvironment], None]
Confirm = Callable[[Sequence[Any], ScriptEnvironment], None]


@dataclass(frozen=True)
class AxisOption:
    """One entry of A1111's axis list. ``type``: int, float, str or permutations (Prompt order).
    ``label_format``: how a value is labelled on the grid -- "label" ("Steps: 20"), "value", "nothing",
    "basename" (file name without folders), "join" (a permutation joined with ", ").
    ``refused``: why this server cannot vary it (the axis is then refused when chosen)."""
    label: str
    type: str = "str"
    kinds: tuple[str, ...] = ("txt2img", "img2img")
    cost: float = 0.0
    label_format: str = "label"
    choices: Callable[[ScriptEnvironment], list[str]] | None = None
    apply: Apply | None = None
    confirm: Confirm | None = None
    refused: str | None = None

    def format(self, value: Any) -> str:
        if isinstance(value, float):
            value = round(value, 8)
        if self.label_format == "nothing":
            return ""
        if self.label_format == "value":
            return str(value)
        if self.label_format == "basename":
            return os.path.basename(str(value))
        if self.label_format == "join":
            return ", ".join(value)
        return f"{self.label}: {value}"


def _field(name: str) -> Apply:
    def apply(cell: Cell, value, values, env) -> None:
        setattr(cell.request, name, value)
    return apply


def _confirm_upscalers(values, env) -> None:
    for value in values:
        upscale.check_upscaler(value)


def _upscaler_names(env) -> list[str]:
    return list(upscale.upscaler_names())


def _nothing(cell, value, values, env) -> None:
    pass


def _prompt_sr(cell: Cell, value: str, values, env) -> None:
    search = values[0]
    request = cell.request
    if search not in request.prompt and search not in request.negative_prompt:
        raise ValueError(f"Prompt S/R did not find {search} in prompt or negative prompt.")
    request.prompt = request.prompt.replace(search, value)
    request.negative_prompt = request.negative_prompt.replace(search, value)


def _prompt_order(cell: Cell, tokens: tuple[str, ...], values, env) -> None:
    """A1111's ``apply_order``: the tokens' places in the prompt, by first appearance, take the tokens in
    this permutation's order."""
    prompt = cell.request.prompt
    missing = [t for t in tokens if t not in prompt]
    if missing:
        raise ValueError(f"Prompt order: {', '.join(map(repr, missing))} not found in the prompt")
    parts = []
    for _, token in sorted((prompt.find(t), t) for t in tokens):
        n = prompt.find(token)
        parts.append(prompt[:n])
        prompt = prompt[n + len(token):]
    cell.request.prompt = "".join(part + tokens[i] for i, part in enumerate(parts)) + prompt


def _confirm_samplers(values, env) -> None:
    for value in values:
        registry.resolve(value)


def _sampler_names(env) -> list[str]:
    return [spec.name for spec in registry.SAMPLERS]


def _confirm_schedulers(values, env) -> None:
    for value in values:
        registry.resolve(registry.SAMPLERS[0].name, value)


def _scheduler_labels(env) -> list[str]:
    return list(registry.SCHEDULERS.values())


def _confirm_checkpoints(values, env) -> None:
    for value in values:
        env.resolve_checkpoint(value)


def _checkpoint(cell: Cell, value, values, env) -> None:
    cell.checkpoint = env.resolve_checkpoint(value)


def _checkpoint_names(env) -> list[str]:
    return sorted(env.checkpoints(), key=str.casefold)


def _is_none(value) -> bool:
    return value in (None, "", "None", "none")


def _confirm_refiners(values, env) -> None:
    for value in values:
        if not _is_none(value):
            env.resolve_checkpoint(value)


def _refiner(cell: Cell, value, values, env) -> None:
    cell.request.refiner_checkpoint = None if _is_none(value) else env.resolve_checkpoint(value)


def _confirm_vaes(values, env) -> None:
    for value in values:
        env.resolve_vae(value)


def _vae(cell: Cell, value, values, env) -> None:
    cell.vae = env.resolve_vae(value)


def _style_names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def _confirm_styles(values, env) -> None:
    for value in values:
        for name in _style_names(value):
            env.resolve_style(name)


def _styles(cell: Cell, value, values, env) -> None:
    cell.styles.extend(_style_names(value))


def parse_size(value: str) -> tuple[int, int]:
    """A1111's Size axis value ``WIDTHxHEIGHT`` -> (width, height)."""
    width, sep, height = str(value).partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width.strip()), int(height.strip())
    except ValueError:
        raise ValueError(f"invalid size {value!r}; expected WIDTHxHEIGHT, e.g. 512x768") from None


def _confirm_sizes(values, env) -> None:
    for value in values:
        parse_size(value)


def _size(cell: Cell, value, values, env) -> None:
    cell.request.width, cell.request.height = parse_size(value)


_T2I, _I2I = ("txt2img",), ("img2img",)
_NO_SETTING = "this server has no such setting"

# A1111 1.10's axis_options, in its order (so indices mean the same axis), with kinds as A1111 filters them.
AXIS_OPTIONS: tuple[AxisOption, ...] = (
    AxisOption("Nothing", "str", label_format="nothing", apply=_nothing),
    AxisOption("Seed", "int", apply=_field("seed")),
    AxisOption("Var. seed", "int", apply=_field("subseed")),
    AxisOption("Var. strength", "float", apply=_field("subseed_strength")),
    AxisOption("Steps", "int", apply=_field("steps")),
    AxisOption("Hires steps", "int", kinds=_T2I, apply=_field("hr_second_pass_steps")),
    AxisOption("CFG Scale", "float", apply=_field("cfg_scale")),
    AxisOption("Image CFG Scale", "float", kinds=_I2I, refused="it applies to InstructPix2Pix models, "
                                                                  "which are not supported"),
    AxisOption("Prompt S/R", "str", label_format="value", apply=_prompt_sr),
    AxisOption("Prompt order", "permutations", label_format="join", apply=_prompt_order),
    AxisOption("Sampler", "str", kinds=_T2I, label_format="value", choices=_sampler_names,
               apply=_field("sampler_name"), confirm=_confirm_samplers),
    AxisOption("Hires sampler", "str", kinds=_T2I, choices=_sampler_names, apply=_field("hr_sampler_name"),
               confirm=_confirm_samplers),
    AxisOption("Sampler", "str", kinds=_I2I, label_format="value", choices=_sampler_names,
               apply=_field("sampler_name"), confirm=_confirm_samplers),
    AxisOption("Checkpoint name", "str", cost=1.0, label_format="basename", choices=_checkpoint_names,
               apply=_checkpoint, confirm=_confirm_checkpoints),
    AxisOption("Negative Guidance minimum sigma", "float", refused=_NO_SETTING),
    AxisOption("Sigma Churn", "float", apply=_field("s_churn")),
    AxisOption("Sigma min", "float", apply=_field("s_tmin")),
    AxisOption("Sigma max", "float", apply=_field("s_tmax")),
    AxisOption("Sigma noise", "float", apply=_field("s_noise")),
    AxisOption("Schedule type", "str", choices=_scheduler_labels, apply=_field("scheduler"),
               confirm=_confirm_schedulers),
    AxisOption("Schedule min sigma", "float", refused=_NO_SETTING),
    AxisOption("Schedule max sigma", "float", refused=_NO_SETTING),
    AxisOption("Schedule rho", "float", refused=_NO_SETTING),
    AxisOption("Beta schedule alpha", "float", refused="the Beta schedule type is not available"),
    AxisOption("Beta schedule beta", "float", refused="the Beta schedule type is not available"),
    AxisOption("Eta", "float", apply=_field("eta")),
    AxisOption("Clip skip", "int", apply=_field("clip_skip")),
    AxisOption("Denoising", "float", apply=_field("denoising_strength")),
    AxisOption("Initial noise multiplier", "float", apply=_field("initial_noise_multiplier")),
    AxisOption("Extra noise", "float", refused=_NO_SETTING),
    AxisOption("Hires upscaler", "str", kinds=_T2I, choices=_upscaler_names, apply=_field("hr_upscaler"),
               confirm=_confirm_upscalers),
    AxisOption("Cond. Image Mask Weight", "float", kinds=_I2I, refused=_NO_SETTING),
    AxisOption("VAE", "str", cost=0.7, choices=lambda env: ["Automatic", "None", *env.vaes()], apply=_vae,
               confirm=_confirm_vaes),
    AxisOption("Styles", "str", choices=lambda env: list(env.styles()), apply=_styles, confirm=_confirm_styles),
    AxisOption("UniPC Order", "int", cost=0.5, refused=_NO_SETTING),
    AxisOption("Face restore", "str", label_format="value", refused="face restoration is not supported"),
    AxisOption("Token merging ratio", "float", refused=_NO_SETTING),
    AxisOption("Token merging ratio high-res", "float", refused=_NO_SETTING),
    AxisOption("Always discard next-to-last sigma", "str", choices=lambda env: ["False", "True"],
               refused=_NO_SETTING),
    AxisOption("SGM noise multiplier", "str", choices=lambda env: ["False", "True"], refused=_NO_SETTING),
    AxisOption("Refiner checkpoint", "str", cost=1.0, label_format="basename",
               choices=lambda env: ["None", *_checkpoint_names(env)], apply=_refiner, confirm=_confirm_refiners),
    AxisOption("Refiner switch at", "float", apply=_field("refiner_switch_at")),
    AxisOption("RNG source", "str", choices=lambda env: ["GPU", "CPU", "NV"],
               refused="noise is always drawn as A1111's RNG source CPU"),
    AxisOption("FP8 mode", "str", cost=0.9, choices=lambda env: ["Disable", "Enable for SDXL", "Enable"],
               refused=_NO_SETTING),
    AxisOption("Size", "str", apply=_size, confirm=_confirm_sizes),
)


def axis_options(kind: str = "txt2img") -> list[AxisOption]:
    """The axis list of one tab, as A1111's ``current_axis_options`` (the indices clients send)."""
    return [option for option in AXIS_OPTIONS if kind in option.kinds]
