"""Cooperative interrupt / skip and per-step progress for a running generation.

The UI and API (other threads) set flags; the sampling loop checks them between model calls (a plain
Python attribute read: no device synchronisation) and stops by raising.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch


class Interrupted(Exception):
    """The whole job was interrupted: images finished so far are kept."""


class Skipped(Exception):
    """The current batch was skipped: the job goes on with the next one."""


@dataclass
class Progress:
    """What the per-step callback receives."""
    step: int                 # 1-based step within the current batch
    total: int                # steps in the current batch
    iteration: int            # 0-based batch index within the job
    iterations: int           # batches in the job
    latent: torch.Tensor      # current x (B, 4, H/8, W/8), on the device
    denoised: torch.Tensor    # current prediction of x0


ProgressCallback = Callable[[Progress], None]


class JobControl:
    """Flags shared between a running job and whoever may stop it."""

    def __init__(self) -> None:
        self._interrupt = threading.Event()
        self._skip = threading.Event()

    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def new_batch(self) -> None:
        """Call when a batch starts: a skip asked for after the previous batch's last model call is
        dropped, as A1111 clears ``state.skipped`` at each iteration."""
        self._skip.clear()

    def check(self) -> None:
        """Raise if the job should stop now; a skip applies once, to the batch running now."""
        if self._interrupt.is_set():
            raise Interrupted()
        if self._skip.is_set():
            self._skip.clear()
            raise Skipped()
