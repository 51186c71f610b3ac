"""Train the embedded demo model from scratch on the procedural shape scenes of ``webui.demo.dataset``.

The result is one SD 1.x single-file checkpoint in the original (LDM) layout -- ``model.diffusion_model.*``
(our ``UNetModel``), ``first_stage_model.*`` (our ``AutoencoderKL``, f=8, 4 latent channels) and
``cond_stage_model.transformer.text_model.*`` (a small ``transformers.CLIPTextModel`` over the real CLIP
tokenizer, 49408 ids) -- that ``load_checkpoint`` loads and ``Engine`` samples from like any SD 1.x file.
What shapes cannot tell (head counts) and the native resolution travel in the safetensors metadata
(``webui.arch``, ``webui.native_size``), with how the model was trained.

Three stages; the first and last have a step count either given or planned from a time budget:

1. **VAE**: L1 + MSE reconstruction of freshly rendered scenes from a sampled latent, with a light KL.
   The loss weighs pixels near colour edges more (``vae_edge_weight``). At the end the latent statistics
   are folded into ``quant_conv`` / ``post_quant_conv`` (an exact reparametrisation) so that latents
   times SD1's fixed scale 0.18215 have zero mean and standard deviation ``latent_std`` (1, as SD's).
2. **Text encoder**: it learns, with throw-away linear heads on its padding states, to classify what each
   caption says (position, colour, shape, size, background, or "not said"); ``text_steps`` steps.
3. **UNet**, on latents of the frozen VAE and contexts of the (by default frozen) text encoder: eps
   prediction under SD1's scaled-linear schedule, per-timestep loss weights (``loss_weight``), 10% empty
   captions (for classifier-free guidance), AdamW with linear warm-up then cosine decay, an EMA of the
   weights (exported). Latents are encoded once per pool of ``pool_size`` scenes; each pool serves
   ``pool_epochs`` epochs, captions re-worded every epoch. The cross-attention context projections start
   ``cross_attention_init`` times larger than PyTorch's default.

Why stage 2 and the larger init: trained jointly from scratch, the UNet never learned to place objects by
the position words (it drew them wherever the noise put them); fed contexts that already keep the
attributes apart, through a less flat cross-attention, it learns that within a few hundred steps
(``docs/demo-model-notes.md``).

Reproducible: every random draw comes from a generator seeded by ``(seed, stage, step)`` (or by
``(seed, pool)``), so a run resumed from its training state (``work_dir/state.pt``: weights, EMA,
optimizer, step, plan, RNG states) continues exactly as an uninterrupted one. A time budget only decides
the step counts (measured on the first steps, then fixed and recorded); passing the recorded step counts
reproduces a run without timing (bit for bit with the same torch build, thread count and CPU kind).

Measured on the project's 2-core CPU (idle, 2 threads, default sizes at 64 px): VAE 0.17 s/step (batch 16,
bf16 autocast), UNet + text encoder 0.51-0.54 s/step at batch 64 and 0.32-0.34 s/step at batch 32 (the
default), encoding a latent pool 1.8 s per 1,024 scenes. A 60-minute budget (vae_share 0.3) thus plans
about 6,000 VAE steps and 7,500 UNet steps. Another process
busy on the same cores slows torch's threads down many times over: train on an otherwise idle machine.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from tqdm import tqdm

from webui.demo import dataset as ds
from webui.engine.families import ARCH_METADATA_KEY, NATIVE_SIZE_KEY
from webui.engine.preview import LATENT_RGB_KEY
from webui.engine.sampling.schedules import sd_alphas_cumprod
from webui.engine.text import TextEncoder, load_tokenizer
from webui.engine.unet import UNetConfig, UNetModel
from webui.engine.vae import AutoencoderKL, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
LATENT_SCALE = 0.18215  # SD1's fixed latent scale (families.FAMILIES "sd1")
STATE_FILE = "state.pt"
STATE_VERSION = 2
MAX_FILE_BYTES = 40 * 2**20
_STAGE_IDS = {"vae": 1, "unet": 2, "pool": 3, "caption": 4, "init": 5, "stats": 6, "text": 7, "heads": 8}
STAGES = ("vae", "text", "unet")
# what the text stage's heads tell apart: each attribute's words, plus one class for "not said" (or two objects)
ATTRIBUTES = {"position": tuple(ds.POSITIONS), "colour": tuple(ds.COLOURS), "shape": ds.SHAPES,
              "size": tuple(ds.SIZES), "background": tuple(ds.COLOURS)}


@dataclass
class TrainConfig:
    """Every size, budget and hyper-parameter of a run (stored in the training state and the checkpoint)."""
    size: int = 64                      # image side (native resolution); latents are size // 8
    seed: int = 0
    # VAE (f=8: four levels; GroupNorm(32) needs channel counts that are multiples of 32)
    vae_ch: int = 32
    vae_ch_mult: tuple[int, ...] = (1, 1, 2, 4)
    vae_res_blocks: int = 1
    # UNet
    unet_channels: int = 64
    unet_mult: tuple[int, ...] = (1, 2)
    unet_res_blocks: int = 2
    unet_attention_levels: tuple[int, ...] = (0, 1)   # level 0 = the latent's full resolution
    unet_heads: int = 4
    # the cross-attention context projections (attn2.to_k / to_v) start this many times larger than PyTorch's
    # default init: with CLIP-sized context vectors (norm ~11 after the final LayerNorm) the default leaves
    # the attention so flat that the position words never take hold (docs/demo-model-notes.md)
    cross_attention_init: float = 3.0
    # text encoder (CLIP layout, real CLIP vocabulary)
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 2
    text_mlp: int = 512
    # budget: minutes for the whole run, split between the stages; explicit step counts override it
    minutes: float = 60.0
    vae_share: float = 0.3
    vae_steps: int | None = None
    unet_steps: int | None = None
    calibration_steps: int = 6          # steps timed (after one warm-up step) to plan a stage's step count
    # stage 1
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # extra weight of the reconstruction error near colour edges (where shapes differ: a small triangle
    # and a small circle share most of their pixels); 0 = plain L1 + MSE
    vae_edge_weight: float = 4.0
    # stage 2: the text encoder alone learns to tell every attribute of a caption apart (linear heads on the
    # mean of its last `text_states` token states, which are the padding's: causal attention lets each see
    # the whole caption); fixed step count, not part of the time budget
    text_steps: int = 400
    text_batch: int = 64
    text_pre_lr: float = 1e-3
    text_states: int = 40
    # stage 3
    unet_batch: int = 32
    unet_lr: float = 1e-3
    text_lr: float = 0.0                # 0 = the text encoder stays as stage 2 left it (measured: best)
    warmup_steps: int = 200             # at most a tenth of the stage
    min_lr_ratio: float = 0.05          # cosine decays to this fraction of the peak
    weight_decay: float = 0.01          # matrices and convs only (not norms, biases, embeddings)
    empty_caption_prob: float = 0.1
    # per-timestep weight of the eps MSE: "v" = 1 / alphas_cumprod (the v-prediction loss, normalised to
    # mean 1): at high noise an eps error is an x0 error times sigma, and the sampler's first steps --
    # where the layout is decided -- need x0 right; "min-snr" = min(SNR, min_snr_gamma) / SNR; "eps" = 1
    loss_weight: str = "min-snr"
    min_snr_gamma: float = 5.0
    # timestep density proportional to t ** (timestep_bias - 1): 1 = uniform, 2 = linearly more of the
    # noisy steps, where the layout is decided (the last ones only refine edges of flat shapes).
    # The defaults are the best recipe measured so far (docs/demo-model-notes.md), not a finished one
    timestep_bias: float = 1.0
    ema_decay: float = 0.995            # 0 = export the raw weights
    pool_size: int = 4096               # scenes whose latents are encoded at once
    pool_epochs: int = 4                # epochs over one pool (captions re-drawn each epoch)
    grad_clip: float = 1.0
    # execution
    # CPU autocast per network, "bf16" or "none" (measured on the 2-core CPU: bf16 speeds up the VAE and
    # the text encoder, slows the small UNet down)
    vae_autocast: str = "bf16"
    text_autocast: str = "none"
    unet_autocast: str = "none"
    stats_images: int = 512             # scenes whose latents set the latent normalisation
    # std of the scaled latents (encode(x) * 0.18215) after normalisation: 1, as SD's. Below 1 hides the
    # layout better at SD1's noisiest steps (Chen 2023, "On the importance of noise scheduling"), but
    # shifts what a denoising strength means: at 0.5, img2img at strength 0.3 redrew the whole picture
    latent_std: float = 1.0
    threads: int = 0                    # 0 = torch's default
    save_every_steps: int = 500
    log_every_steps: int = 100          # a log line and a point of the loss curve (kept in the metadata)
    save_every_minutes: float = 5.0
    save_dtype: str = "fp16"            # dtype of the exported checkpoint: "fp16" or "fp32"

    def __post_init__(self) -> None:
        for name in ("vae_ch_mult", "unet_mult", "unet_attention_levels"):
            setattr(self, name, tuple(getattr(self, name)))
        problems = []
        if self.size % 8 or self.size < 64:
            problems.append(f"size must be a multiple of 8 and at least 64 (got {self.size})")
        if len(self.vae_ch_mult) != 4:
            problems.append("vae_ch_mult needs 4 levels (f=8)")
        channels = [self.vae_ch * m for m in self.vae_ch_mult] + [self.unet_channels * m for m in self.unet_mult]
        if any(c % 32 for c in channels):
            problems.append(f"channel counts must be multiples of 32 (GroupNorm(32)): {channels}")
        if any((self.unet_channels * m) % self.unet_heads for m in self.unet_mult):
            problems.append("unet_heads must divide every UNet level's channels")
        if not 1 <= self.text_states <= 77:
            problems.append(f"text_states must be in 1..77 (got {self.text_states})")
        if self.text_hidden % self.text_heads:
            problems.append("text_heads must divide text_hidden")
        for name in ("vae_autocast", "text_autocast", "unet_autocast"):
            if getattr(self, name) not in ("bf16", "none"):
                problems.append(f"{name} must be 'bf16' or 'none' (got {getattr(self, name)!r})")
        if self.loss_weight not in ("v", "min-snr", "eps"):
            problems.append(f"loss_weight must be 'v', 'min-snr' or 'eps' (got {self.loss_weight!r})")
        if self.save_dtype not in ("fp16", "fp32"):
            problems.append(f"save_dtype must be 'fp16' or 'fp32' (got {self.save_dtype!r})")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    @classmethod
    def smoke(cls, **changes) -> TrainConfig:
        """Tiny networks and a few steps per stage: a whole run takes seconds (for tests)."""
        values = dict(vae_ch=32, vae_ch_mult=(1, 1, 1, 1), vae_res_blocks=1, unet_channels=32, unet_mult=(1, 1),
                      unet_res_blocks=1, unet_heads=2, text_hidden=32, text_layers=1, text_heads=1, text_mlp=64,
                      vae_steps=3, text_steps=2, text_batch=4, unet_steps=4, vae_batch=2, unet_batch=4, warmup_steps=2, pool_size=8,
                      pool_epochs=1, calibration_steps=1, save_every_steps=2, stats_images=16,
                      log_every_steps=2)
        values.update(changes)
        return cls(**values)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    # ---- the networks' configs ----
    def vae_config(self) -> VAEConfig:
        return VAEConfig(ch=self.vae_ch, ch_mult=self.vae_ch_mult, num_res_blocks=self.vae_res_blocks)

    def unet_config(self) -> UNetConfig:
        depth = tuple(int(i in self.unet_attention_levels) for i in range(len(self.unet_mult)))
        return UNetConfig(model_channels=self.unet_channels, channel_mult=self.unet_mult,
                          num_res_blocks=self.unet_res_blocks, attention_levels=self.unet_attention_levels,
                          transformer_depth=depth, transformer_depth_middle=1,
                          context_dim=self.text_hidden, num_heads=self.unet_heads)

    def clip_values(self) -> dict:
        return dict(vocab_size=49408, hidden_size=self.text_hidden, num_hidden_layers=self.text_layers,
                    num_attention_heads=self.text_heads, intermediate_size=self.text_mlp,
                    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                    projection_dim=self.text_hidden)

    def arch_metadata(self) -> dict:
        """The ``webui.arch`` overrides: what the loader cannot read from shapes."""
        return {"unet": {"num_heads": self.unet_heads},
                "clip": {"num_attention_heads": self.text_heads, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}}


@dataclass
class Models:
    vae: AutoencoderKL
    unet: UNetModel
    text: transformers.CLIPTextModel


@dataclass
class TrainResult:
    path: Path
    metadata: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- pieces

def build_models(config: TrainConfig) -> Models:
    """The three networks, initialised from ``config.seed`` (LDM's zero-initialised UNet output layers)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive(config.seed, "init"))
        vae = AutoencoderKL(config.vae_config())
        unet = UNetModel(config.unet_config())
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config.clip_values()))
    _zero_init_unet(unet)
    _scale_cross_attention(unet, config.cross_attention_init)
    return Models(vae, unet, text)


def _scale_cross_attention(unet: UNetModel, factor: float) -> None:
    """Multiply the initial weights of every cross-attention's context projections (``attn2.to_k/to_v``)."""
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")):
                module.weight.mul_(factor)


def _zero_init_unet(unet: UNetModel) -> None:
    """As LDM's ``zero_module``: each residual branch's last conv, each transformer's proj_out, the output conv."""
    zero = [unet.out[2]]
    for module in unet.modules():
        if hasattr(module, "out_layers"):
            zero.append(module.out_layers[3])
        if hasattr(module, "proj_out") and hasattr(module, "transformer_blocks"):
            zero.append(module.proj_out)
    with torch.no_grad():
        for layer in zero:
            layer.weight.zero_()
            layer.bias.zero_()


def param_counts(models: Models) -> dict[str, int]:
    counts = {name: sum(p.numel() for p in getattr(models, name).parameters()) for name in ("vae", "unet", "text")}
    counts["text_token_embedding"] = models.text.get_input_embeddings().weight.numel()
    counts["total"] = counts["vae"] + counts["unet"] + counts["text"]
    return counts


def _derive(seed: int, *keys: str | int) -> int:
    """A 63-bit seed from the run's seed and a path of keys (stage names, step numbers)."""
    words = [seed] + [_STAGE_IDS[k] if isinstance(k, str) else k for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1)


def _generator(seed: int, *keys: str | int) -> torch.Generator:
    return torch.Generator().manual_seed(_derive(seed, *keys))


def _to_tensor(images) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float32 in [-1, 1]."""
    array = np.stack([np.asarray(img, dtype=np.uint8) for img in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``min(warmup, total // 10)`` steps, then cosine from 1 to ``min_ratio``."""
    warmup = max(1, min(warmup, total // 10))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(modules: list[tuple[nn.Module, float]], weight_decay: float) -> list[dict]:
    groups = []
    for module, lr in modules:
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
        groups += [{"params": decay, "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
                   {"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0}]
    return groups


def _autocast(mode: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16")


def vae_moments(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of the latent distribution, unscaled."""
    mean, logvar = vae.quant_conv(vae.encoder(images)).float().chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


# ------------------------------------------------------------------------------------------ the state

def _fresh_state(config: TrainConfig, models: Models) -> dict:
    return {"version": STATE_VERSION, "config": config.to_json(), "stage": "vae", "step": 0, "planned": {},
            "seconds": {name: 0.0 for name in STAGES}, "timing": {}, "losses": {},
            "history": {name: [] for name in STAGES},
            "latent_stats": {},
            "vae": models.vae.state_dict(), "unet": models.unet.state_dict(), "text": models.text.state_dict()}


def save_state(work_dir: Path, state: dict) -> Path:
    """Write the training state atomically (a crash while saving keeps the previous one)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / STATE_FILE
    state = {**state, "rng": {"torch": torch.get_rng_state(), "numpy": _np_state()}}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(work_dir: Path) -> dict:
    path = work_dir / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from: {path} not found")
    state = torch.load(path, weights_only=True)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training state version {state.get('version')}, expected {STATE_VERSION}")
    torch.set_rng_state(state["rng"]["torch"])
    name, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    return state


def _np_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]


# ------------------------------------------------------------------------------------------ the stages

class _Stage:
    """Step counting, planning from a time budget, periodic state saving and the progress bar.

    The stage's training function sets ``snapshot`` to a callable that copies its live weights and
    optimizer state into ``state``; ``save`` (given) runs it and writes the state to disk.
    """

    def __init__(self, name: str, config: TrainConfig, state: dict, budget_s: float, fixed_steps: int | None,
                 progress: bool, stop_after: int | None, save: Callable[[], None], log: Callable[[str], None]):
        self.name, self.config, self.state, self.save = name, config, state, save
        self.budget_s, self.stop_after = budget_s, stop_after
        self.pending_s = 0.0  # per-step share of work done outside the steps (encoding a latent pool)
        self.snapshot: Callable[[], None] = lambda: None
        self.write = tqdm.write if progress else log  # messages between progress-bar updates
        self.fixed = fixed_steps is not None
        if self.fixed:
            state["planned"].setdefault(name, int(fixed_steps))
        self.bar = tqdm(total=state["planned"].get(name), initial=state["step"], desc=name, unit="step",
                        disable=not progress, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10)
        self.started = time.perf_counter()
        self.base_seconds = state["seconds"][name]
        self.last_save = time.perf_counter()
        self.times: list[float] = []
        self.smoothed: float | None = state["losses"].get(name) if state["step"] else None

    @property
    def total(self) -> int | None:
        return self.state["planned"].get(self.name)

    def elapsed(self) -> float:
        return self.base_seconds + time.perf_counter() - self.started

    def done(self) -> bool:
        step, total = self.state["step"], self.total
        if total is not None and step >= total:
            return True
        if not self.fixed and total is not None and self.elapsed() > 1.15 * self.budget_s:
            # a safety stop for a run far slower than its plan (the machine got busy): cut the stage short
            self.write(f"{self.name}: stopping at step {step} of {total}: over the time budget")
            self.state["planned"][self.name] = step
            return True
        return False

    def lr(self) -> float:
        total = self.total or 10**9  # not planned yet: warm-up only
        return lr_factor(self.state["step"], total, self.config.warmup_steps, self.config.min_lr_ratio)

    def after_step(self, loss: float, seconds: float) -> bool:
        """Record a step; returns True when the run must stop here (``stop_after``)."""
        state = self.state
        state["step"] += 1
        self.smoothed = loss if self.smoothed is None else 0.98 * self.smoothed + 0.02 * loss
        state["losses"][self.name] = self.smoothed
        self.times.append(seconds)
        state["seconds"][self.name] = self.elapsed()
        if self.total is None and len(self.times) >= self.config.calibration_steps + 1:
            self._plan()
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.smoothed:.4f}", refresh=False)
        step_time = float(np.median(self.times[1:] or self.times))
        state["timing"][f"{self.name}_s_per_step"] = step_time
        if state["step"] % self.config.log_every_steps == 0:
            state["history"][self.name].append([state["step"], round(self.smoothed, 5)])
            self.write(f"{self.name} step {state['step']}/{self.total or '?'}: loss {self.smoothed:.4f}, "
                           f"lr x{self.lr():.3f}, {step_time:.3f} s/step, {self.elapsed() / 60:.1f} min")
        if self.stop_after is not None and _global_step(state) >= self.stop_after:
            self.save()
            return True
        now = time.perf_counter()
        if (state["step"] % self.config.save_every_steps == 0
                or now - self.last_save > 60 * self.config.save_every_minutes):
            self.save()
            self.last_save = now
        return False

    def _plan(self) -> None:
        per_step = float(np.mean(self.times[1:])) + self.pending_s
        remaining = self.budget_s - self.elapsed()
        total = max(self.state["step"] + 1, self.state["step"] + int(remaining / per_step))
        self.state["planned"][self.name] = total
        self.bar.total = total
        self.write(f"{self.name}: {per_step:.3f} s/step -> {total} steps in {self.budget_s / 60:.1f} min")

    def close(self) -> None:
        self.bar.close()


def _global_step(state: dict) -> int:
    """Steps done over all stages (what ``stop_after`` counts)."""
    done = STAGES[:STAGES.index(state["stage"])] if state["stage"] in STAGES else STAGES
    return sum(state["planned"].get(name, 0) for name in done) + state["step"]


def edge_weights(images: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """(B, 1, H, W): 1 + ``edge_weight`` within a pixel of a colour edge of ``images`` ([-1, 1]), else 1."""
    if not edge_weight:
        return torch.ones_like(images[:, :1])
    high = F.max_pool2d(images, 3, stride=1, padding=1)
    low = -F.max_pool2d(-images, 3, stride=1, padding=1)
    edges = ((high - low).amax(dim=1, keepdim=True) > 0.1).float()
    return 1.0 + edge_weight * edges


def _train_vae(config: TrainConfig, models: Models, state: dict, stage: _Stage) -> bool:
    vae = models.vae.train()
    opt = torch.optim.AdamW(_param_groups([(vae, config.vae_lr)], config.weight_decay), betas=(0.9, 0.99))
    if "vae_opt" in state:
        opt.load_state_dict(state["vae_opt"])
    stage.snapshot = lambda: state.update(vae=vae.state_dict(), vae_opt=opt.state_dict())
    while not stage.done():
        t0 = time.perf_counter()
        step = state["step"]
        batch = ds.make_dataset(config.vae_batch, _derive(config.seed, "vae", step), config.size, split="train")
        images = _to_tensor(img for img, _, _ in batch)
        gen = _generator(config.seed, "vae", step)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * stage.lr()
        with _autocast(config.vae_autocast):
            mean, logvar = vae_moments(vae, images)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
            recon = vae.decode(z).float()
        weight = edge_weights(images, config.vae_edge_weight)
        l1 = ((recon - images).abs() * weight).sum() / (weight.sum() * 3)
        mse = ((recon - images).square() * weight).sum() / (weight.sum() * 3)
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        loss = l1 + mse + config.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
        opt.step()
        state["vae_l1"] = float(l1.detach())
        if stage.after_step(loss.item(), time.perf_counter() - t0):
            return False
    return True


@torch.no_grad()
def normalise_latents(vae: AutoencoderKL, config: TrainConfig) -> dict:
    """Fold per-channel latent statistics into the VAE so that ``encode(x) * 0.18215`` has zero mean and
    ``config.latent_std`` deviation: ``quant_conv``'s mean half becomes ``(mean - m) * k``, ``post_quant_conv`` takes
    ``z / k + m`` (an exact reparametrisation; reconstructions are unchanged)."""
    vae.eval()
    n = config.stats_images
    scenes = ds.make_dataset(n, _derive(config.seed, "stats"), config.size, split="train")
    means = torch.cat([vae_moments(vae, _to_tensor(img for img, _, _ in scenes[i:i + 128]))[0]
                       for i in range(0, n, 128)])
    m = means.mean(dim=(0, 2, 3)).double()
    s = means.std(dim=(0, 2, 3)).double().clamp_min(1e-6)
    k = (config.latent_std / LATENT_SCALE) / s
    c = config.vae_config().embed_dim
    q, pq = vae.quant_conv, vae.post_quant_conv
    w_q, b_q = q.weight.double(), q.bias.double()
    w_q[:c] *= k[:, None, None, None]
    b_q[:c] = (b_q[:c] - m) * k
    b_q[c:] += 2.0 * torch.log(k)  # logvar of the scaled latent
    w_pq, b_pq = pq.weight.double(), pq.bias.double()
    b_pq += (w_pq[:, :, 0, 0] @ m)
    w_pq /= k[None, :, None, None]
    for param, value in ((q.weight, w_q), (q.bias, b_q), (pq.weight, w_pq), (pq.bias, b_pq)):
        param.copy_(value.float())
    return {"mean_before": m.tolist(), "std_before": s.tolist(), "scale": LATENT_SCALE,
            "latent_std": config.latent_std}


class _Pool:
    """Latents (mean, std) of ``pool_size`` training scenes, re-encoded when the pool index changes."""

    def __init__(self, config: TrainConfig, vae: AutoencoderKL):
        self.config, self.vae, self.index = config, vae, None
        self.scenes: list[ds.Scene] = []
        self.mean = self.std = None
        self.encode_seconds = 0.0

    def load(self, index: int) -> None:
        if index == self.index:
            return
        t0 = time.perf_counter()
        config = self.config
        data = ds.make_dataset(config.pool_size, _derive(config.seed, "pool", index), config.size, split="train")
        self.scenes = [scene for _, _, scene in data]
        means, stds = [], []
        with torch.no_grad(), _autocast(config.vae_autocast):
            for i in range(0, len(data), 256):
                mean, logvar = vae_moments(self.vae, _to_tensor(img for img, _, _ in data[i:i + 256]))
                means.append(mean.float())
                stds.append(torch.exp(0.5 * logvar).float())
        self.mean, self.std, self.index = torch.cat(means), torch.cat(stds), index
        self.encode_seconds = time.perf_counter() - t0


def _captions(config: TrainConfig, scenes: list[ds.Scene], epoch: int, indices: np.ndarray) -> list[str]:
    """This epoch's wording of each picked scene (same scene, same epoch -> same caption)."""
    out = []
    for i in indices:
        rng = np.random.default_rng([config.seed, _STAGE_IDS["caption"], epoch, int(i)])
        out.append(ds.caption(scenes[i], rng))
    return out


def attribute_labels(scenes: list[ds.Scene], captions: list[str]) -> dict[str, torch.Tensor]:
    """Per attribute (``ATTRIBUTES``), the index of the word each caption says, or the extra last class
    when it says none (or, for the object's attributes, when the scene has two objects)."""
    labels: dict[str, list[int]] = {name: [] for name in ATTRIBUTES}
    for scene, text in zip(scenes, captions):
        words = set(text.replace(",", " ").split())
        obj = scene.objects[0] if len(scene.objects) == 1 else None
        said = {  # a background colour is never an object's, so the word alone tells it
            "background": scene.background if scene.background in words else None,
            "position": obj.position if obj and obj.position in text else None,
            "colour": obj.colour if obj else None,
            "shape": obj.shape if obj else None,
            "size": obj.size if obj and obj.size in words else None,
        }
        for name, options in ATTRIBUTES.items():
            labels[name].append(options.index(said[name]) if said[name] else len(options))
    return {name: torch.tensor(values) for name, values in labels.items()}


def _attribute_heads(config: TrainConfig) -> nn.ModuleDict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive(config.seed, "heads"))
        return nn.ModuleDict({name: nn.Linear(config.text_hidden, len(options) + 1)
                              for name, options in ATTRIBUTES.items()})


def _train_text(config: TrainConfig, models: Models, state: dict, stage: _Stage) -> bool:
    """Stage 2: the text encoder (with throw-away linear heads) learns to classify each caption's attributes.

    Measured (docs/demo-model-notes.md): a UNet learns "position word -> where to draw" within a few
    hundred steps from context vectors that keep the attributes apart, and not in thousands of steps from
    a text encoder trained jointly with it from scratch.
    """
    text = models.text.train()
    encoder = TextEncoder(text, load_tokenizer())
    heads = _attribute_heads(config)
    if "heads" in state:
        heads.load_state_dict(state["heads"])
    opt = torch.optim.AdamW(_param_groups([(text, config.text_pre_lr), (heads, config.text_pre_lr)],
                                          config.weight_decay), betas=(0.9, 0.99))
    if "text_opt" in state:
        opt.load_state_dict(state["text_opt"])
    stage.snapshot = lambda: state.update(text=text.state_dict(), heads=heads.state_dict(),
                                          text_opt=opt.state_dict())
    params = list(text.parameters()) + list(heads.parameters())
    while not stage.done():
        t0 = time.perf_counter()
        rng = np.random.default_rng([config.seed, _STAGE_IDS["text"], state["step"]])
        scenes = [ds.sample_scene(rng, exclude_held_out=True) for _ in range(config.text_batch)]
        captions = [ds.caption(scene, rng) for scene in scenes]
        labels = attribute_labels(scenes, captions)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * stage.lr()
        with _autocast(config.text_autocast):
            states = encoder.encode(captions).float()
        features = states[:, -config.text_states:].mean(dim=1)
        loss = sum(F.cross_entropy(heads[name](features), labels[name]) for name in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        if stage.after_step(loss.item(), time.perf_counter() - t0):
            return False
    return True


def _trainable(config: TrainConfig, models: Models) -> list[nn.Parameter]:
    """What stage 3 trains (and keeps an EMA of): the UNet, and the text encoder unless ``text_lr`` is 0."""
    modules = (models.unet, models.text) if config.text_lr > 0 else (models.unet,)
    return [p for module in modules for p in module.parameters()]


def loss_weights(config: TrainConfig) -> torch.Tensor:
    """Weight of each timestep's eps MSE (float32, 1000 values)."""
    acp = sd_alphas_cumprod().double()
    snr = acp / (1.0 - acp)
    if config.loss_weight == "v":
        weights = 1.0 / acp
        weights = weights / weights.mean()
    elif config.loss_weight == "min-snr":
        weights = snr.clamp(max=config.min_snr_gamma) / snr
    else:
        weights = torch.ones_like(acp)
    return weights.float()


def _train_unet(config: TrainConfig, models: Models, state: dict, stage: _Stage) -> bool:
    vae, unet, text = models.vae.eval().requires_grad_(False), models.unet.train(), models.text
    train_text = config.text_lr > 0
    text.train(train_text).requires_grad_(train_text)
    encoder = TextEncoder(text, load_tokenizer())
    empty_ids = encoder.pad_ids([])
    token_cache: dict[str, list[int]] = {}
    trained = [(unet, config.unet_lr)] + ([(text, config.text_lr)] if train_text else [])
    opt = torch.optim.AdamW(_param_groups(trained, config.weight_decay), betas=(0.9, 0.99))
    if "unet_opt" in state:
        opt.load_state_dict(state["unet_opt"])
    params = _trainable(config, models)
    ema = None
    if config.ema_decay > 0:
        ema = [t.clone() for t in state["ema"]] if "ema" in state else [p.detach().clone() for p in params]

    def snapshot():
        state.update(unet=unet.state_dict(), text=text.state_dict(), unet_opt=opt.state_dict())
        if ema is not None:
            state["ema"] = ema
    stage.snapshot = snapshot

    acp = sd_alphas_cumprod().double()
    weights = loss_weights(config)
    sqrt_acp, sqrt_1m = acp.sqrt().float(), (1.0 - acp).sqrt().float()
    pool = _Pool(config, vae)
    per_epoch = max(1, config.pool_size // config.unet_batch)

    while not stage.done():
        t0 = time.perf_counter()
        step = state["step"]
        epoch, within = divmod(step, per_epoch)
        pool.load(epoch // config.pool_epochs)
        if stage.total is None and pool.encode_seconds:  # the pool's encode time, spread over its steps
            stage.pending_s = pool.encode_seconds / (per_epoch * config.pool_epochs)
        order = np.random.default_rng([config.seed, _STAGE_IDS["unet"], epoch]).permutation(len(pool.scenes))
        picked = order[within * config.unet_batch:(within + 1) * config.unet_batch]
        gen = _generator(config.seed, "unet", step)
        b = len(picked)
        index = torch.from_numpy(picked)
        z0 = (pool.mean[index] + pool.std[index] * torch.randn(pool.mean[index].shape, generator=gen)) * LATENT_SCALE
        u = torch.rand(b, generator=gen, dtype=torch.float64)
        t = (u ** (1.0 / config.timestep_bias) * len(acp)).long().clamp_(0, len(acp) - 1)
        noise = torch.randn(z0.shape, generator=gen)
        drop = torch.rand(b, generator=gen) < config.empty_caption_prob
        xt = sqrt_acp[t].view(-1, 1, 1, 1) * z0 + sqrt_1m[t].view(-1, 1, 1, 1) * noise
        captions = _captions(config, pool.scenes, epoch, picked)
        ids = []
        for caption, dropped in zip(captions, drop.tolist()):
            if dropped:
                ids.append(empty_ids)
                continue
            if caption not in token_cache:
                token_cache[caption] = encoder.pad_ids(encoder.tokenize([caption])[0])
            ids.append(token_cache[caption])
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * stage.lr()
        with _autocast(config.text_autocast), torch.set_grad_enabled(train_text):
            context = encoder.encode_ids(ids).float()
        with _autocast(config.unet_autocast):
            pred = unet(xt, t, context).float()
        per_sample = (pred - noise).square().mean(dim=(1, 2, 3))
        loss = (per_sample * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        if ema is not None:
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        if stage.after_step(loss.item(), time.perf_counter() - t0):
            return False
    return True


# ---------------------------------------------------------------------------------------------- export

def checkpoint_state_dict(models: Models, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The networks' weights under SD 1.x single-file keys, floating tensors in ``dtype``."""
    out = {}
    for prefix, module in ((UNET_PREFIX, models.unet), (VAE_PREFIX, models.vae), (TEXT_PREFIX, models.text)):
        for key, value in module.state_dict().items():
            if key.endswith("position_ids"):
                continue
            key = key.removeprefix("text_model.") if prefix == TEXT_PREFIX else key
            value = value.detach().to(dtype) if value.is_floating_point() else value.detach()
            out[prefix + key] = value.contiguous()
    return out


@torch.no_grad()
def fit_latent_rgb(vae: AutoencoderKL, config: TrainConfig, n: int = 256) -> dict:
    """Least-squares linear map from scaled latents to the images' colours at latent resolution: the
    live-preview factors (``webui.engine.preview``, "Approx cheap") of this model."""
    scenes = ds.make_dataset(n, _derive(config.seed, "stats"), config.size, split="train")
    images = _to_tensor(img for img, _, _ in scenes)
    latents = vae_moments(vae.eval(), images)[0] * LATENT_SCALE
    small = F.avg_pool2d(images, 8)
    x = torch.cat([latents.permute(0, 2, 3, 1).reshape(-1, 4), torch.ones(latents.numel() // 4, 1)], dim=1)
    y = small.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()
    return {"factors": [[round(v, 5) for v in row] for row in solution[:4].tolist()],
            "bias": [round(v, 5) for v in solution[4].tolist()]}


def export_checkpoint(models: Models, config: TrainConfig, path: Path, training: dict | None = None) -> dict[str, str]:
    """Write the single-file checkpoint with its metadata; returns the metadata."""
    import safetensors.torch

    dtype = torch.float16 if config.save_dtype == "fp16" else torch.float32
    counts = param_counts(models)
    metadata = {
        "webui.description": (
            "webui embedded demo model: a tiny Stable Diffusion 1.x-layout checkpoint (UNet, AutoencoderKL f=8, "
            "CLIP text encoder with the real CLIP vocabulary) trained from scratch on the procedural shape scenes "
            "of webui.demo.dataset (one or two coloured circles/squares/triangles/diamonds on a plain "
            "background, captions like 'a large red circle on a blue background, top left'). It knows nothing "
            "else."),
        NATIVE_SIZE_KEY: str(config.size),
        LATENT_RGB_KEY: json.dumps(fit_latent_rgb(models.vae, config)),
        ARCH_METADATA_KEY: json.dumps(config.arch_metadata(), sort_keys=True),
        "webui.params": json.dumps(counts, sort_keys=True),
        "webui.train_config": json.dumps(config.to_json(), sort_keys=True),
        "webui.training": json.dumps(training or {}, sort_keys=True),
        "webui.trained_with": "python app.py train-demo (webui/demo/train.py)",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file(checkpoint_state_dict(models, dtype), str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # an ordinary file, not the private one the writer makes
    os.replace(tmp, path)
    return metadata


def _models_from_state(config: TrainConfig, state: dict, use_ema: bool) -> Models:
    models = build_models(config)
    models.vae.load_state_dict(state["vae"])
    models.unet.load_state_dict(state["unet"])
    models.text.load_state_dict(state["text"])
    if use_ema and "ema" in state:
        params = _trainable(config, models)
        assert len(params) == len(state["ema"]), "EMA does not match the trained parameters"
        with torch.no_grad():
            for p, e in zip(params, state["ema"]):
                p.copy_(e)
    return models


# ------------------------------------------------------------------------------------------------ run

def train(config: TrainConfig, out: str | os.PathLike, work_dir: str | os.PathLike, *, resume: bool = False,
          progress: bool = True, stop_after: int | None = None, log: Callable[[str], None] = print
          ) -> TrainResult | None:
    """Train both stages and write the checkpoint to ``out``; returns ``None`` when stopped by ``stop_after``.

    ``work_dir`` holds the resumable state (``state.pt``), saved every ``save_every_steps`` steps or
    ``save_every_minutes``, at each stage's end and on Ctrl-C. ``resume=True`` continues from it with the
    config stored there (``config`` is then only used for ``threads``). ``stop_after`` (for tests and
    staged runs) saves the state and returns after that many steps over both stages.
    """
    threads = torch.get_num_threads()
    try:
        return _train(config, Path(out), Path(work_dir), resume, progress, stop_after, log)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, out: Path, work_dir: Path, resume: bool, progress: bool, stop_after: int | None,
           log: Callable[[str], None]) -> TrainResult | None:
    if resume:
        state = load_state(work_dir)
        threads = config.threads
        config = TrainConfig.from_json(state["config"])
        config.threads = threads
        log(f"resuming from {work_dir / STATE_FILE}: stage {state['stage']}, step {state['step']}")
    if config.threads:
        torch.set_num_threads(config.threads)
    if resume:
        models = _models_from_state(config, state, use_ema=False)
    else:
        models = build_models(config)
        state = _fresh_state(config, models)
        torch.manual_seed(config.seed)  # nothing draws from the global generators; seeded all the same
    counts = param_counts(models)
    log("params: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))

    total_budget = 60.0 * config.minutes
    fixed = {"vae": config.vae_steps, "text": config.text_steps, "unet": config.unet_steps}

    def run_stage(name: str, fn) -> bool:
        # the UNet stage gets what the VAE and text stages left of the whole budget
        budget = config.vae_share * total_budget if name == "vae" \
            else max(0.0, total_budget - state["seconds"]["vae"] - state["seconds"]["text"])
        stage = _Stage(name, config, state, budget, fixed[name], progress, stop_after,
                       save=lambda: (stage.snapshot(), save_state(work_dir, state)), log=log)
        try:
            finished = fn(config, models, state, stage)
        except KeyboardInterrupt:
            stage.save()
            stage.close()
            log(f"interrupted: state saved to {work_dir / STATE_FILE}; continue with --resume")
            raise
        stage.close()
        if finished:
            stage.snapshot()
        return finished

    if state["stage"] == "vae":
        if not run_stage("vae", _train_vae):
            return None
        state["latent_stats"] = normalise_latents(models.vae, config)
        state.update(stage="text", step=0, vae=models.vae.state_dict())
        state.pop("vae_opt", None)
        save_state(work_dir, state)
    if state["stage"] == "text":
        if not run_stage("text", _train_text):
            return None
        state.update(stage="unet", step=0)
        for key in ("text_opt", "heads"):
            state.pop(key, None)
        save_state(work_dir, state)
    if state["stage"] == "unet":
        if not run_stage("unet", _train_unet):
            return None
        state.update(stage="done", step=0)
        save_state(work_dir, state)

    final = _models_from_state(config, state, use_ema=config.ema_decay > 0)
    training = {
        "seed": config.seed, "steps": {k: state["planned"].get(k) for k in STAGES},
        "batch": {"vae": config.vae_batch, "text": config.text_batch, "unet": config.unet_batch},
        "seconds": {k: round(v, 1) for k, v in state["seconds"].items()},
        "s_per_step": {k: round(v, 4) for k, v in state["timing"].items()},
        "final_loss": {k: round(v, 5) for k, v in state["losses"].items()},
        "loss_curve": state["history"],  # [step, smoothed loss] every log_every_steps
        "vae_l1": round(state["vae_l1"], 5) if "vae_l1" in state else None,
        "data": {"generator": "webui.demo.dataset", "split": "train",
                 "held_out": sorted(" ".join(c) for c in ds.HELD_OUT),
                 "vae": "fresh scenes every step", "text": "fresh scenes and captions every step",
                 "unet": f"pools of {config.pool_size} scenes, "
                 f"{config.pool_epochs} epochs each, captions re-drawn every epoch, "
                 f"{config.empty_caption_prob:.0%} empty captions"},
        "latent_stats": state["latent_stats"],
        "ema": config.ema_decay,
        "hardware": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()
                     or platform.machine()},
    }
    metadata = export_checkpoint(final, config, out, training)
    size = out.stat().st_size
    log(f"wrote {out} ({size / 2**20:.1f} MiB)")
    return TrainResult(out, metadata, dict(state["seconds"]))
