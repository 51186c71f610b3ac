"""User settings (A1111's "options"), kept in a JSON file between runs.

Keys and defaults follow A1111's ``config.json`` where A1111 has the setting, so a client that reads or
writes ``/sdapi/v1/options`` sees familiar names. Unknown keys and values of the wrong type are refused
with a message naming the key; a damaged file is reported and set aside, never silently overwritten.
"""
from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREVIEW_MODES = ("Approx cheap", "TAESD", "Full")


@dataclass(frozen=True)
class Option:
    default: Any
    label: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None


OPTIONS: Mapping[str, Option] = {
    "sd_model_checkpoint": Option("", "Stable Diffusion checkpoint"),
    "sd_vae": Option("Automatic", "SD VAE"),
    "CLIP_stop_at_last_layers": Option(1, "Clip skip", minimum=1, maximum=12),
    "emphasis": Option("Original", "Emphasis mode", choices=("Original", "No norm", "Ignore", "None")),
    "comma_padding_backtrack": Option(20, "Prompt word wrap length limit (tokens)", minimum=0, maximum=74),
    "pad_cond_uncond": Option(False, "Pad prompt/negative prompt to the same length"),
    "use_old_scheduling": Option(False, "Use old prompt editing timelines"),
    "include_styles_into_token_counters": Option(True, "Count tokens of enabled styles"),
    "disabled_extensions": Option([], "Disabled extensions"),
    "samples_save": Option(True, "Always save all generated images"),
    "grid_save": Option(True, "Always save all generated image grids"),
    "samples_format": Option("png", "File format for images", choices=("png", "jpg", "webp")),
    "live_previews_enable": Option(True, "Show live previews of the created image"),
    "show_progress_every_n_steps": Option(5, "Live preview display period (steps)", minimum=1, maximum=150),
    "show_progress_type": Option("Approx cheap", "Live preview method", choices=PREVIEW_MODES),
    "sd_checkpoints_limit": Option(1, "Maximum number of checkpoints loaded at the same time", minimum=1, maximum=10),
    "sd_checkpoints_keep_in_cpu": Option(True, "Only keep one model on device (the others wait in RAM)"),
}


def coerce_option(key: str, value: Any) -> Any:
    """``value`` checked and converted for option ``key`` (ValueError names the key and what it takes)."""
    option = OPTIONS[key]
    kind = type(option.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"option {key!r} takes true or false, not {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (isinstance(value, float) and not math.isfinite(value)) \
                or int(value) != value:
            raise ValueError(f"option {key!r} takes a whole number, not {value!r}")
        value = int(value)
    elif kind is str and not isinstance(value, str):
        raise ValueError(f"option {key!r} takes a string, not {value!r}")
    elif kind is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"option {key!r} takes a list of strings, not {value!r}")
        value = list(value)
    if option.choices is not None and value not in option.choices:
        raise ValueError(f"option {key!r} must be one of {', '.join(map(str, option.choices))} (got {value!r})")
    if option.minimum is not None and not option.minimum <= value <= option.maximum:
        raise ValueError(f"option {key!r} must be within {option.minimum}..{option.maximum} (got {value!r})")
    return value


class Options:
    """The current settings; ``update`` validates and writes them to ``path`` (when given) at once."""

    def __init__(self, path: Path | None = None, log=print):
        self.path = path
        self._lock = threading.Lock()
        self._values = {key: list(o.default) if isinstance(o.default, list) else o.default
                        for key, o in OPTIONS.items()}
        if path is not None and path.exists():
            self._load(path, log)

    def _load(self, path: Path, log) -> None:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(stored, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            aside = path.with_name(path.name + ".bad")
            os.replace(path, aside)
            log(f"warning: settings file {path} is unreadable ({exc}); moved to {aside}, using defaults")
            return
        for key, value in stored.items():
            if key not in OPTIONS:
                log(f"warning: settings file {path}: unknown setting {key!r} ignored")
                continue
            try:
                self._values[key] = coerce_option(key, value)
            except ValueError as exc:
                log(f"warning: settings file {path}: {exc}; using the default")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {k: list(v) if isinstance(v, list) else v for k, v in self._values.items()}

    def update(self, changes: Mapping[str, Any]) -> None:
        """Validate every change first (nothing changes when one is wrong), then apply and save."""
        unknown = [k for k in changes if k not in OPTIONS]
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        coerced = {key: coerce_option(key, value) for key, value in changes.items()}
        with self._lock:
            self._values.update(coerced)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(json.dumps(self._values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
                os.replace(tmp, self.path)
