"""A terminal progress bar over a job's progress reports (tqdm)."""
from __future__ import annotations

from tqdm import tqdm


class StepBar:
    """One bar per batch: ``batch 1/2: 35%|###   | 7/20 [00:03<00:06]``."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self._bar: tqdm | None = None
        self._iteration = -1

    def update(self, p) -> None:
        """``p``: a ``jobs.queue.JobProgress`` (``batch`` of ``batches``, ``batch_step`` of ``batch_total``)."""
        if self.disable:
            return
        if self._bar is None or p.batch != self._iteration:
            self.close()
            self._iteration = p.batch
            self._bar = tqdm(total=p.batch_total, desc=f"batch {p.batch + 1}/{p.batches}", unit="step")
        self._bar.update(p.batch_step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
