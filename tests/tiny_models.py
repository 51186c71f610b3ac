"""Tiny random SD 1.x checkpoints in the original (LDM) single-file layout, for fast tests.

``_write_tiny_checkpoint`` (public as ``tests.tiny.tiny_checkpoint(path)``) writes a file shaped like a
real SD 1.x checkpoint (same key names, same prefixes, real CLIP vocabulary size) but with a few channels
per network, random non-degenerate weights. ``diffusers_config_dir`` writes the local config folder with
which diffusers' ``from_single_file(path, config=folder, local_files_only=True)`` loads such a file offline.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
import transformers

from webui.engine.unet import UNetConfig, UNetModel
from webui.engine.vae import AutoencoderKL, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

CONTEXT_DIM = 64  # = CLIP hidden size, so the text encoder's output feeds the UNet as in a real model
CLIP = dict(vocab_size=49408, hidden_size=CONTEXT_DIM, num_hidden_layers=2, num_attention_heads=1,
            intermediate_size=4 * CONTEXT_DIM, max_position_embeddings=77, hidden_act="quick_gelu",
            layer_norm_eps=1e-5, projection_dim=CONTEXT_DIM)
VAE = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=4)


def unet_config(*, inpaint: bool = False, model_channels: int = 32) -> UNetConfig:
    return UNetConfig(in_channels=9 if inpaint else 4, out_channels=4, model_channels=model_channels,
                      channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1), transformer_depth=(1, 1),
                      context_dim=CONTEXT_DIM, num_heads=8)


def clip_config() -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(**CLIP)


def _perturbed(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The module's state dict with norms, biases and small weights nudged away from their init values."""
    out = {}
    for key, value in module.state_dict().items():
        value = value.detach().clone()
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator)
            if value.ndim == 1 and key.endswith("weight"):  # norm scales
                value = 1.0 + 0.1 * noise
            elif key.endswith("bias"):
                value = value + 0.05 * noise
            else:
                value = value + 0.2 * value.std().nan_to_num(0.02).clamp_min(1e-3) * noise
        out[key] = value
    return out


def tiny_state_dict(*, inpaint: bool = False, seed: int = 0, model_channels: int = 32) -> dict[str, torch.Tensor]:
    """A float32 SD 1.x state dict in the original layout (UNet, VAE, CLIP-L-shaped text encoder)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(unet_config(inpaint=inpaint, model_channels=model_channels))
        vae = AutoencoderKL(VAE)
        text = transformers.CLIPTextModel(clip_config())
    sd = {}
    sd.update({UNET_PREFIX + k: v for k, v in _perturbed(unet, generator).items()})
    sd.update({VAE_PREFIX + k: v for k, v in _perturbed(vae, generator).items()})
    sd.update({TEXT_PREFIX + k: v for k, v in _perturbed(text, generator).items()})
    # real SD 1.x files carry this old transformers buffer
    sd[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(CLIP["max_position_embeddings"])[None]
    return sd


def random_unet_state_dict(config: UNetConfig, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random original-layout UNet weights (with the ``model.diffusion_model.`` prefix) for any UNetConfig."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(config)
    perturbed = _perturbed(unet, torch.Generator().manual_seed(seed))
    return {UNET_PREFIX + k: v for k, v in perturbed.items()}


def ema_key(key: str) -> str:
    """``model.diffusion_model.input_blocks.0.0.weight`` -> ``model_ema.diffusion_modelinput_blocks00weight``."""
    return "model_ema." + key.removeprefix("model.").replace(".", "")


class ModelCheckpoint:
    """Stands in for pytorch_lightning's callback class, which real .ckpt files reference."""


@contextlib.contextmanager
def _fake_lightning():
    """Make ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` our stub while pickling."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    module = sys.modules[names[-1]]
    previous, own_module = module.__dict__.get("ModelCheckpoint"), ModelCheckpoint.__module__
    ModelCheckpoint.__module__, module.ModelCheckpoint = names[-1], ModelCheckpoint
    try:
        yield ModelCheckpoint
    finally:
        ModelCheckpoint.__module__ = own_module
        if previous is None:
            del module.ModelCheckpoint
        else:
            module.ModelCheckpoint = previous
        for n in added:
            del sys.modules[n]


def _write_tiny_checkpoint(path, *, dtype: torch.dtype = torch.float32, ema: bool = False, inpaint: bool = False,
                           fmt: str | None = None, seed: int = 0, model_channels: int = 32,
                           metadata: dict[str, str] | None = None) -> Path:
    """Write a tiny SD 1.x checkpoint (use ``tests.tiny.tiny_checkpoint(path)``). ``fmt`` "safetensors" or
    "ckpt" (default: from the suffix).

    ``ema=True`` adds ``model_ema.*`` keys (dots removed, different values) and ``model_ema.decay`` /
    ``num_updates``, as "full" training checkpoints have. ``model_channels`` scales the UNet up.
    """
    path = Path(path)
    fmt = fmt or ("ckpt" if path.suffix in (".ckpt", ".pt", ".pth") else "safetensors")
    sd = {k: v.to(dtype) if v.is_floating_point() else v
          for k, v in tiny_state_dict(inpaint=inpaint, seed=seed, model_channels=model_channels).items()}
    if ema:
        generator = torch.Generator().manual_seed(seed + 1)
        for key in [k for k in sd if k.startswith(UNET_PREFIX)]:
            value = sd[key]
            sd[ema_key(key)] = value + 0.1 * torch.randn(value.shape, generator=generator).to(value.dtype)
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    sd = {k: v.contiguous() for k, v in sd.items()}
    if fmt == "safetensors":
        import safetensors.torch

        safetensors.torch.save_file(sd, str(path), metadata=metadata)
    elif fmt == "ckpt":
        with _fake_lightning() as callback_class:
            state = {"monitor": None, "best_model_score": None, "best_model_path": "", "current_score": None,
                     "dirpath": "logs/checkpoints"}
            torch.save({"state_dict": sd, "global_step": 0, "epoch": 0, "callbacks": {callback_class: state}},
                       str(path))
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'ckpt', got {fmt!r}")
    return path


# ------------------------------------------------------------------------------ diffusers oracle

def _clip_vocab_gz() -> Path:
    here = Path(__file__).resolve().parents[1] / "webui" / "engine" / "clip_vocab" / "bpe_simple_vocab_16e6.txt.gz"
    if here.exists():
        return here
    spec = importlib.util.find_spec("open_clip")  # the open-clip-torch wheel ships the same file
    return Path(spec.origin).with_name("bpe_simple_vocab_16e6.txt.gz")


def _byte_chars() -> list[str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def write_tokenizer_files(folder: Path) -> Path:
    """vocab.json / merges.txt / tokenizer_config.json of the CLIP BPE tokenizer (49408 ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(_clip_vocab_gz(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:48895]
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return folder


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))


def write_diffusers_pipeline(root: Path, *, unet: dict, vae: dict, text_config: transformers.CLIPTextConfig,
                             scheduler: str = "PNDMScheduler", pipeline: str = "StableDiffusionPipeline") -> Path:
    """A local diffusers SD1 pipeline folder (configs + tokenizer, no weights) as ``save_pretrained`` writes
    it: ``unet`` / ``vae`` are the model configs' fields, the scheduler is SD1's (scaled-linear, eps)."""
    import diffusers

    v = diffusers.__version__
    _write_json(root / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", "_diffusers_version": v,
                                                **unet})
    _write_json(root / "vae" / "config.json", {"_class_name": "AutoencoderKL", "_diffusers_version": v, **vae})
    text_config.save_pretrained(root / "text_encoder")
    write_tokenizer_files(root / "tokenizer")
    schedule = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "num_train_timesteps": 1000, "steps_offset": 1, "prediction_type": "epsilon", "trained_betas": None}
    if scheduler == "PNDMScheduler":
        schedule.update(set_alpha_to_one=False, skip_prk_steps=True, clip_sample=False)
    else:
        schedule.update(timestep_spacing="linspace")
    _write_json(root / "scheduler" / "scheduler_config.json", {"_class_name": scheduler, "_diffusers_version": v,
                                                               **schedule})
    _write_json(root / "model_index.json", {
        "_class_name": pipeline, "_diffusers_version": v,
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", scheduler], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return root


def diffusers_config_dir(tmp_path, *, inpaint: bool = False, model_channels: int = 32) -> Path:
    """A local diffusers pipeline folder (configs + tokenizer, no weights) matching the tiny checkpoint."""
    root = Path(tmp_path) / f"diffusers_config{'_inpaint' if inpaint else ''}_{model_channels}"
    if (root / "model_index.json").exists():
        return root
    unet = unet_config(inpaint=inpaint, model_channels=model_channels)
    return write_diffusers_pipeline(
        root, text_config=clip_config(),
        pipeline="StableDiffusionInpaintPipeline" if inpaint else "StableDiffusionPipeline",
        unet={
            "sample_size": 8, "in_channels": unet.in_channels, "out_channels": unet.out_channels,
            "down_block_types": ["CrossAttnDownBlock2D"] * len(unet.channel_mult),
            "up_block_types": ["CrossAttnUpBlock2D"] * len(unet.channel_mult),
            "block_out_channels": [unet.model_channels * m for m in unet.channel_mult],
            "layers_per_block": unet.num_res_blocks, "cross_attention_dim": unet.context_dim,
            "attention_head_dim": unet.num_heads,  # diffusers' SD1 name for the head count
            "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
            "act_fn": "silu", "use_linear_projection": False, "center_input_sample": False,
            "downsample_padding": 1, "mid_block_scale_factor": 1,
        },
        vae={
            "in_channels": VAE.in_channels, "out_channels": VAE.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * len(VAE.ch_mult),
            "up_block_types": ["UpDecoderBlock2D"] * len(VAE.ch_mult),
            "block_out_channels": [VAE.ch * m for m in VAE.ch_mult], "layers_per_block": VAE.num_res_blocks,
            "latent_channels": VAE.z_channels, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 64,
            "scaling_factor": 0.18215,
        })


def write_vae_file(path, source, *, prefix: bool):
    """A standalone VAE file: the ``first_stage_model.*`` tensors of another checkpoint file, with or
    without that prefix."""
    import safetensors.torch
    sd = {k: v for k, v in safetensors.torch.load_file(str(source)).items() if k.startswith(VAE_PREFIX)}
    if not prefix:
        sd = {k.removeprefix(VAE_PREFIX): v for k, v in sd.items()}
    safetensors.torch.save_file(sd, str(path))
    return path
