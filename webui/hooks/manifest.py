"""``extension.toml``: what an extension is and what it needs.

```toml
name = "example"                 # folder name by default; letters, digits, '_' and '-'
title = "Example"                # the script title A1111 clients use in alwayson_scripts (default: name)
version = "1.0.0"
description = "What it does, in one line."
requires = ["numpy"]             # Python modules it imports (checked before it is loaded)
```
"""
from __future__ import annotations

import importlib.util
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "extension.toml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Manifest:
    name: str
    title: str
    version: str = "0"
    description: str = ""
    requires: tuple[str, ...] = field(default_factory=tuple)
    path: Path | None = None

    def missing_requirements(self) -> list[str]:
        return [module for module in self.requires if importlib.util.find_spec(module) is None]


def read_manifest(folder: Path) -> Manifest:
    file = folder / MANIFEST
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{folder.name}: no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"{file}: {exc}") from None
    name = data.get("name", folder.name)
    problems = []
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name {name!r} must be letters, digits, '_' or '-'")
    for key in ("title", "version", "description"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key} must be a string")
    requires = data.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        problems.append("requires must be a list of module names")
    unknown = set(data) - {"name", "title", "version", "description", "requires"}
    if unknown:
        problems.append(f"unknown keys {', '.join(sorted(unknown))}")
    if problems:
        raise ManifestError(f"{file}: " + "; ".join(problems))
    return Manifest(name, data.get("title", name), data.get("version", "0"), data.get("description", ""),
                    tuple(requires), folder)
