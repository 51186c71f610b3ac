"""A terminal progress bar over the engine's per-step callback (tqdm)."""
from __future__ import annotations

from tqdm import tqdm

from .engine.control import Progress


class StepBar:
    """One bar per batch: ``batch 1/2: 35%|###   | 7/20 [00:03<00:06]``."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self._bar: tqdm | None = None
        self._iteration = -1

    def update(self, p: Progress) -> None:
        if self.disable:
            return
        if self._bar is None or p.iteration != self._iteration:
            self.close()
            self._iteration = p.iteration
            self._bar = tqdm(total=p.total, desc=f"batch {p.iteration + 1}/{p.iterations}", unit="step")
        self._bar.update(p.step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
