"""Which scripts exist: the built-in ones and those extensions add, looked up by A1111's rules."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .base import KINDS, Script, ScriptEnvironment
from .prompt_matrix import PromptMatrix
from .outpainting import PoorMansOutpainting
from .prompts_from_file import PromptsFromFile
from .sd_upscale import SDUpscale
from .xyz import XYZPlot


def builtin_scripts(env: ScriptEnvironment | None = None) -> list[Script]:
    """New instances of A1111's built-in selectable scripts, in A1111's dropdown order (by file name)."""
    return [PoorMansOutpainting(env), PromptMatrix(env), PromptsFromFile(env), SDUpscale(env), XYZPlot(env)]


class ScriptRegistry:
    """The selectable scripts of one server. ``add`` takes an extension's script (a ``Script`` subclass
    instance); titles are unique, compared case-insensitively."""

    def __init__(self, scripts: Iterable[Script] = ()):
        self._scripts: list[Script] = []
        for script in scripts:
            self.add(script)

    @classmethod
    def with_builtins(cls, env: ScriptEnvironment | None = None) -> ScriptRegistry:
        return cls(builtin_scripts(env))

    def add(self, script: Script) -> Script:
        if not isinstance(script, Script) or not script.title:
            raise ValueError(f"not a script with a title: {script!r}")
        unknown = [k for k in script.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"script {script.title!r}: unknown kinds {unknown}; expected {', '.join(KINDS)}")
        if any(s.name == script.name for s in self._scripts):
            raise ValueError(f"a script titled {script.title!r} is already registered")
        self._scripts.append(script)
        return script

    def scripts(self, kind: str | None = None) -> list[Script]:
        return [s for s in self._scripts if kind is None or kind in s.kinds]

    def names(self, kind: str) -> list[str]:
        """``GET /sdapi/v1/scripts``' lists: lower-cased titles."""
        return [s.name for s in self.scripts(kind)]

    def find(self, name: str, kind: str) -> Script:
        """A1111's ``script_name_to_index``: the title, case-insensitively; ValueError listing the titles."""
        wanted = str(name).strip().lower()
        for script in self.scripts(kind):
            if script.name == wanted:
                return script
        available = ", ".join(repr(s.title) for s in self.scripts(kind)) or "none"
        raise ValueError(f"Script '{name}' not found for {kind}; available: {available}")

    def parse(self, name: str, script_args: Sequence[Any] | None, kind: str) -> tuple[Script, Any]:
        """(script, options) for the API's ``script_name`` / ``script_args``; ValueError for a 422."""
        script = self.find(name, kind)
        return script, script.parse(script_args, kind)

    def script_info(self) -> list[dict]:
        """``GET /sdapi/v1/script-info`` entries of the selectable scripts (txt2img's, then img2img's)."""
        return [s.api_info(kind) for kind in KINDS for s in self.scripts(kind)]
