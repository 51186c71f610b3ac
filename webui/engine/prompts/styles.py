"""Prompt styles in A1111's ``styles.csv``: ``name,prompt,negative_prompt`` (a header row; more columns,
such as ``description``, are kept but not used). A style's prompt containing ``{prompt}`` has the user's
prompt put in its place; otherwise it is appended after ``", "``. Styles apply in the order chosen."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(style_prompt: str, prompt: str) -> str:
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


class StyleDatabase:
    """The styles of one CSV file, reread when the file changes."""

    def __init__(self, path: Path | None):
        self.path = path
        self._styles: dict[str, Style] = {}
        self._stamp = None
        self.error: str | None = None

    def _reload(self) -> None:
        if self.path is None or not self.path.is_file():
            self._styles, self._stamp, self.error = {}, None, None
            return
        stat = self.path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        if stamp == self._stamp:
            return
        styles: dict[str, Style] = {}
        try:
            with open(self.path, encoding="utf-8-sig", newline="") as f:
                for row in csv.DictReader(f, skipinitialspace=True):
                    name = (row.get("name") or "").strip()
                    if name:
                        styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
            self.error = None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            self.error = f"{self.path}: {exc}"
        self._styles, self._stamp = styles, stamp

    @property
    def styles(self) -> dict[str, Style]:
        self._reload()
        return dict(self._styles)

    def apply(self, prompt: str, negative_prompt: str, names: list[str]) -> tuple[str, str]:
        """The prompts with the named styles applied; an unknown name is a ValueError listing the styles."""
        styles = self.styles
        unknown = [n for n in names if n not in styles]
        if unknown:
            raise ValueError(f"unknown style {', '.join(map(repr, unknown))}; available: "
                             f"{', '.join(styles) or 'none (no styles.csv)'}")
        for name in names:
            prompt = merge(styles[name].prompt, prompt)
            negative_prompt = merge(styles[name].negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def save(self, styles: list[Style]) -> None:
        """Write the file (atomically) in A1111's column order."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "prompt", "negative_prompt"])
            for style in styles:
                writer.writerow([style.name, style.prompt, style.negative_prompt])
        os.replace(tmp, self.path)
