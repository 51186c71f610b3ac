"""Shared pieces for training add-ons (the demo LoRA and ControlNet) on top of the shipped demo model.

``DemoBase`` holds the demo checkpoint's frozen networks and turns pictures and captions into what a
training step needs: scaled VAE latents, text contexts, noised latents at random timesteps.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine.checkpoint import load_checkpoint
from ..engine.sampling.schedules import sd_alphas_cumprod
from ..engine.text import TextEncoder, load_tokenizer
from ..paths import DEMO_CHECKPOINT


@dataclass
class Budget:
    """Train until ``steps`` or ``minutes``, whichever comes first; records what happened."""
    steps: int
    minutes: float
    started: float = field(default_factory=time.perf_counter)
    done_steps: int = 0
    losses: list[float] = field(default_factory=list)

    def more(self) -> bool:
        return self.done_steps < self.steps and (time.perf_counter() - self.started) < self.minutes * 60

    def record(self, loss: float) -> None:
        self.done_steps += 1
        self.losses.append(loss)

    def summary(self) -> dict:
        seconds = time.perf_counter() - self.started
        tail = self.losses[-200:] or [float("nan")]
        return {"steps": self.done_steps, "seconds": round(seconds, 1),
                "loss_first_200": round(float(np.mean(self.losses[:200] or [float("nan")])), 5),
                "loss_last_200": round(float(np.mean(tail)), 5)}


class DemoBase:
    def __init__(self, checkpoint: Path = DEMO_CHECKPOINT, seed: int = 0):
        self.model = load_checkpoint(checkpoint, dtype=torch.float32)
        for net in (self.model.unet, self.model.vae, self.model.text_model):
            net.eval().requires_grad_(False)
        self.encoder = TextEncoder(self.model.text_model, load_tokenizer())
        self.scale = self.model.family.latent_scale
        acp = sd_alphas_cumprod().double()
        self.sqrt_acp, self.sqrt_1m = acp.sqrt().float(), (1.0 - acp).sqrt().float()
        self.generator = torch.Generator().manual_seed(seed)
        self._contexts: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def latents(self, images) -> torch.Tensor:
        out = []
        images = list(images)
        for i in range(0, len(images), 128):
            batch = torch.stack([torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
                                 for img in images[i:i + 128]])
            out.append(self.model.vae.encode(batch) * self.scale)
        return torch.cat(out)

    @torch.no_grad()
    def contexts(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._contexts]
        for i in range(0, len(missing), 64):
            chunk = missing[i:i + 64]
            for caption, context in zip(chunk, self.encoder.encode(chunk)):
                self._contexts[caption] = context
        return torch.stack([self._contexts[c] for c in captions])

    def noised(self, z0: torch.Tensor):
        """``(x_t, t, noise)`` at uniformly drawn timesteps (VP form, what the UNet sees)."""
        t = torch.randint(0, len(self.sqrt_acp), (z0.shape[0],), generator=self.generator)
        noise = torch.randn(z0.shape, generator=self.generator)
        xt = self.sqrt_acp[t].view(-1, 1, 1, 1) * z0 + self.sqrt_1m[t].view(-1, 1, 1, 1) * noise
        return xt, t, noise


def optimise(opt: torch.optim.Optimizer, loss: torch.Tensor, budget: Budget, every: int = 100) -> None:
    """One optimiser step on ``loss``; records it and prints the running loss every ``every`` steps."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    budget.record(loss.item())
    if budget.done_steps % every == 0:
        print(f"step {budget.done_steps}: loss {np.mean(budget.losses[-every:]):.4f}", flush=True)


def save_addon(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], budget: Budget,
               settings: dict, trained_with: str) -> None:
    """Write a trained add-on with its training record in the safetensors metadata, and say so."""
    import safetensors.torch

    summary = budget.summary()
    metadata = {**metadata, "webui.training": json.dumps({**summary, "settings": settings}, default=str),
                "webui.trained_with": trained_with}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    print(json.dumps(summary), path, f"{path.stat().st_size / 2**20:.2f} MiB")
