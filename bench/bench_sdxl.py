"""SDXL-size benchmark: our engine vs diffusers on the same single-file checkpoint (CPU, bf16 by default).

    /work/main/.venv/bin/python bench/bench_sdxl.py [--work bench/work] [--only ours|diffusers] [--threads 2]
                                                     [--rounds 2] [--precision bf16|fp32] [--small]

1. Builds once (cached under --work) an SDXL-base-shaped checkpoint with random weights in the original
   single-file layout, stored fp16 ``.safetensors`` (6.9 GB): the 2.6B UNet, the SDXL VAE, CLIP-L under
   ``conditioner.embedders.0.transformer.text_model.`` and OpenCLIP bigG under ``conditioner.embedders.1.model.``;
   plus the local diffusers config folder (SDXL base configs + both tokenizers from our vocabulary). The file is
   written tensor by tensor (our own safetensors writer), one network in memory at a time, so building needs
   about the UNet's fp16 size (5.1 GB) of RAM, not the whole file's.
2. Runs each side in a fresh subprocess (so ``ru_maxrss`` is that side's own peak): load time, then
   txt2img 512x512, 4 steps Euler, CFG 7, a prompt and a negative prompt, batch 1, twice (first run and
   second run), both sides in the same precision (``--precision``: bf16, default, or fp32).
3. Prints a markdown table and writes it, with every run's JSON, to bench/results_sdxl.md.

``--small`` builds and runs a proportionally tiny SDXL-shaped variant instead (UNet model_channels 64, two
layers per text encoder, ...): a one-minute check of the whole script, not a benchmark; its results go to
``<work>/results_sdxl_small.md``.

Nothing is downloaded (HF_HUB_OFFLINE=1, local_files_only=True).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import harness  # noqa: E402  (the project root first, for `python bench/...`)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality, watermark, text"
SIZE, STEPS, CFG, SEED = 512, 4, 7.0, 1234

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
BIGG_PREFIX = "conditioner.embedders.1.model."
VOCAB, CONTEXT_LENGTH = 49408, 77
TIME_EMBED_DIM = 256  # SDXL's per-number size embedding (addition_time_embed_dim)

PRECISIONS = {"bf16": ("bf16", "bfloat16"), "fp32": ("full", "float32")}  # ours Engine(...), diffusers torch dtype


# ------------------------------------------------------------------------------------------ architecture

@dataclasses.dataclass(frozen=True)
class OpenCLIPSize:
    width: int
    heads: int
    layers: int
    mlp: int
    proj: int  # text_projection is [width, proj], used as x @ P


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    unet: object  # webui.engine.unet.UNetConfig
    vae: object  # webui.engine.vae.VAEConfig
    clip_l: dict  # transformers.CLIPTextConfig fields
    bigg: OpenCLIPSize

    @property
    def ckpt_name(self) -> str:
        return f"{self.name}-random-fp16.safetensors"

    @property
    def config_name(self) -> str:
        return f"diffusers_config_{self.name}"


def arch(small: bool = False) -> Arch:
    """SDXL base's shapes, or (``small``) a proportionally tiny variant with the same structure: a UNet with
    three levels (no attention at the first), 64 channels per head, linear proj, ``adm_in_channels`` =
    pooled bigG + 6 x 256; CLIP-L and bigG of different widths (diffusers tells them apart by width)."""
    from webui.engine.unet import UNetConfig
    from webui.engine.vae import VAEConfig

    if small:
        clip_l = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=256)
        bigg = OpenCLIPSize(width=128, heads=2, layers=2, mlp=512, proj=128)
        unet = dict(model_channels=64, transformer_depth=(0, 1, 2), transformer_depth_middle=2)
        vae = VAEConfig(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4)
    else:
        clip_l = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        bigg = OpenCLIPSize(width=1280, heads=20, layers=32, mlp=5120, proj=1280)
        unet = dict(model_channels=320, transformer_depth=(0, 2, 10), transformer_depth_middle=10)
        vae = VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4)
    clip_l.update(vocab_size=VOCAB, max_position_embeddings=CONTEXT_LENGTH, hidden_act="quick_gelu",
                  layer_norm_eps=1e-5, projection_dim=clip_l["hidden_size"])
    unet_config = UNetConfig(in_channels=4, out_channels=4, channel_mult=(1, 2, 4), num_res_blocks=2,
                             attention_levels=(1, 2), num_heads=-1, num_head_channels=64,
                             use_linear_in_transformer=True, context_dim=clip_l["hidden_size"] + bigg.width,
                             adm_in_channels=bigg.proj + 6 * TIME_EMBED_DIM, **unet)
    return Arch("sdxl-small" if small else "sdxl", unet_config, vae, clip_l, bigg)


# ------------------------------------------------------------------------------------------ build

def _bigg_shapes(size: OpenCLIPSize) -> dict[str, tuple[int, ...]]:
    """open_clip's text-tower tensors (SGM's FrozenOpenCLIPEmbedder2 ``model.``, vision tower dropped)."""
    d = size.width
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (VOCAB, d),
                                          "positional_embedding": (CONTEXT_LENGTH, d)}
    for i in range(size.layers):
        b = f"transformer.resblocks.{i}."
        shapes.update({b + "ln_1.weight": (d,), b + "ln_1.bias": (d,),
                       b + "attn.in_proj_weight": (3 * d, d), b + "attn.in_proj_bias": (3 * d,),
                       b + "attn.out_proj.weight": (d, d), b + "attn.out_proj.bias": (d,),
                       b + "ln_2.weight": (d,), b + "ln_2.bias": (d,),
                       b + "mlp.c_fc.weight": (size.mlp, d), b + "mlp.c_fc.bias": (size.mlp,),
                       b + "mlp.c_proj.weight": (d, size.mlp), b + "mlp.c_proj.bias": (d,)})
    shapes.update({"ln_final.weight": (d,), "ln_final.bias": (d,), "text_projection": (d, size.proj),
                   "logit_scale": ()})
    return shapes


def _bigg_tensor(name: str, shape: tuple[int, ...], size: OpenCLIPSize):
    """One random bigG tensor (open_clip's ``init_parameters`` stds; norms 1, biases 0), seeded by its name so
    the tensors can be made one at a time."""
    import torch

    d = size.width
    if name == "logit_scale":
        return torch.tensor(math.log(1 / 0.07))
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_final.weight")):
        return torch.ones(shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    proj_std = d ** -0.5 * (2 * size.layers) ** -0.5
    std = {"token_embedding.weight": 0.02, "positional_embedding": 0.01, "text_projection": d ** -0.5}.get(name)
    if std is None:
        std = {"attn.in_proj_weight": d ** -0.5, "attn.out_proj.weight": proj_std,
               "mlp.c_fc.weight": (2 * d) ** -0.5, "mlp.c_proj.weight": proj_std}[name.split(".", 3)[-1]]
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator) * std


def _clip_l_model(a: Arch):
    import transformers
    return transformers.CLIPTextModel(transformers.CLIPTextConfig(**a.clip_l))


def _clip_l_key(key: str) -> str:
    return key.removeprefix("text_model.")  # transformers < 5.6 had a text_model level in CLIPTextModel


class _Networks:
    """The checkpoint's four networks: tensor specs up front (built on the meta device), then the tensors of
    one network at a time (random, PyTorch default init for the module-built ones), as fp16."""

    def __init__(self, a: Arch):
        import torch

        from webui.engine.unet import UNetModel
        from webui.engine.vae import AutoencoderKL

        self.a = a
        self.makers = {UNET_PREFIX: lambda: UNetModel(a.unet), VAE_PREFIX: lambda: AutoencoderKL(a.vae),
                       CLIP_L_PREFIX: lambda: _clip_l_model(a)}
        self.specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for prefix, make in self.makers.items():
            with torch.device("meta"):
                module = make()
            for k, v in module.state_dict().items():
                key = prefix + (_clip_l_key(k) if prefix == CLIP_L_PREFIX else k)
                self.specs[key] = (torch.float16 if v.is_floating_point() else v.dtype, tuple(v.shape))
            del module
        # real SDXL files carry this old transformers buffer (int64)
        self.specs[CLIP_L_PREFIX + "embeddings.position_ids"] = (torch.int64, (1, CONTEXT_LENGTH))
        for k, shape in _bigg_shapes(a.bigg).items():
            self.specs[BIGG_PREFIX + k] = (torch.float16, shape)
        self._prefix: str | None = None
        self._done: set[str] = set()
        self._tensors: dict = {}

    @staticmethod
    def prefix_of(key: str) -> str:
        return next(p for p in (UNET_PREFIX, VAE_PREFIX, CLIP_L_PREFIX, BIGG_PREFIX) if key.startswith(p))

    def tensor(self, key: str):
        import torch

        prefix = self.prefix_of(key)
        if prefix != self._prefix:
            if prefix in self._done:
                raise RuntimeError(f"write order visits {prefix} twice")
            if self._prefix is not None:
                self._done.add(self._prefix)
            self._tensors = {}  # free the previous network before making the next
            self._prefix = prefix
            if prefix in self.makers:
                self._tensors = self._make(prefix)
        if prefix == BIGG_PREFIX:
            name = key.removeprefix(prefix)
            return _bigg_tensor(name, self.specs[key][1], self.a.bigg).to(torch.float16)
        if key == CLIP_L_PREFIX + "embeddings.position_ids":
            return torch.arange(CONTEXT_LENGTH)[None]
        return self._tensors.pop(key)

    def _make(self, prefix: str) -> dict:
        import torch

        torch.manual_seed(zlib.crc32(prefix.encode()))
        previous = torch.get_default_dtype()
        # the UNet is made directly in fp16 (2.6B parameters: 5.1 GB instead of 10.3 GB in fp32)
        torch.set_default_dtype(torch.float16 if prefix == UNET_PREFIX else torch.float32)
        try:
            module = self.makers[prefix]()
        finally:
            torch.set_default_dtype(previous)
        out = {}
        for k, v in module.state_dict().items():
            key = prefix + (_clip_l_key(k) if prefix == CLIP_L_PREFIX else k)
            out[key] = v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
        del module
        return out


_ST_DTYPES = {"torch.float16": "F16", "torch.int64": "I64", "torch.float32": "F32"}


def build_checkpoint(path: Path, small: bool = False) -> None:
    """Random SDXL-shaped weights in the original layout, fp16 safetensors, written tensor by tensor in the
    order ``safetensors.torch.save_file`` uses (by dtype alignment, then name) with ``{"format": "pt"}``
    metadata; only one network is in memory at a time."""
    import torch

    t0 = time.perf_counter()
    nets = _Networks(arch(small))
    order = sorted(nets.specs, key=lambda k: (-nets.specs[k][0].itemsize, k))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in order:
        dtype, shape = nets.specs[key]
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _ST_DTYPES[str(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    n_unet = sum(math.prod(s) for k, (_, s) in nets.specs.items() if k.startswith(UNET_PREFIX))
    print(f"[build] {len(order)} tensors, UNet {n_unet / 1e9:.3f}B parameters, {offset / 1e9:.2f} GB; "
          f"writing {path}", flush=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key in order:
            value = nets.tensor(key)
            dtype, shape = nets.specs[key]
            if value.dtype != dtype or tuple(value.shape) != shape:
                raise RuntimeError(f"{key}: made {value.dtype} {tuple(value.shape)}, expected {dtype} {shape}")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise RuntimeError(f"{key}: non-finite values in fp16")
            f.write(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            del value
    if tmp.stat().st_size != 8 + len(raw) + offset:
        raise RuntimeError(f"{tmp}: wrote {tmp.stat().st_size} bytes, expected {8 + len(raw) + offset}")
    tmp.rename(path)
    print(f"[build] done in {time.perf_counter() - t0:.0f}s, {path.stat().st_size / 1e9:.2f} GB, "
          f"build peak RSS {harness.rss_gb():.2f} GB", flush=True)


def _diffusers_unet(u) -> dict:
    """diffusers' UNet2DConditionModel config for our UNetConfig (SDXL base's for the full-size one)."""
    levels = range(len(u.channel_mult))
    attention = [level in u.attention_levels and u.transformer_depth[level] > 0 for level in levels]
    channels = [u.model_channels * m for m in u.channel_mult]
    depths = [d if a else 1 for d, a in zip(u.transformer_depth, attention)]
    assert depths[-1] == u.middle_depth, "diffusers' mid block takes the deepest level's depth"
    return {
        "sample_size": 128, "in_channels": u.in_channels, "out_channels": u.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "block_out_channels": channels,
        "layers_per_block": u.num_res_blocks, "transformer_layers_per_block": depths,
        "cross_attention_dim": u.context_dim,
        "attention_head_dim": [c // u.num_head_channels for c in channels],  # diffusers' legacy name: head counts
        "num_attention_heads": None, "use_linear_projection": u.use_linear_in_transformer,
        "addition_embed_type": "text_time", "addition_time_embed_dim": TIME_EMBED_DIM,
        "addition_embed_type_num_heads": 64, "projection_class_embeddings_input_dim": u.adm_in_channels,
        "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
        "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "upcast_attention": None, "only_cross_attention": False, "dual_cross_attention": False,
        "class_embed_type": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
        "conv_in_kernel": 3, "conv_out_kernel": 3, "time_embedding_type": "positional",
    }


def build_diffusers_config(root: Path, small: bool = False) -> Path:
    """SDXL base's diffusers pipeline folder (configs + both tokenizers, no weights), as save_pretrained
    writes it; written to a temporary folder, then renamed."""
    import diffusers
    import transformers

    from tests.tiny_models import write_tokenizer_files

    if (root / "model_index.json").exists():
        return root
    a = arch(small)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    version = diffusers.__version__

    def write(sub: str, value: dict) -> None:
        path = tmp / sub
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"_diffusers_version": version, **value}, indent=1))

    write("unet/config.json", {"_class_name": "UNet2DConditionModel", **_diffusers_unet(a.unet)})
    v = a.vae
    write("vae/config.json", {
        "_class_name": "AutoencoderKL", "in_channels": v.in_channels, "out_channels": v.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * len(v.ch_mult),
        "up_block_types": ["UpDecoderBlock2D"] * len(v.ch_mult),
        "block_out_channels": [v.ch * m for m in v.ch_mult], "layers_per_block": v.num_res_blocks,
        "latent_channels": v.z_channels, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 1024,
        "scaling_factor": 0.13025, "force_upcast": True})
    clip_l = transformers.CLIPTextConfig(**a.clip_l)
    clip_l.architectures = ["CLIPTextModel"]
    clip_l.save_pretrained(tmp / "text_encoder")
    g = a.bigg
    bigg = transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=g.width, num_hidden_layers=g.layers, num_attention_heads=g.heads,
        intermediate_size=g.mlp, max_position_embeddings=CONTEXT_LENGTH, hidden_act="gelu", layer_norm_eps=1e-5,
        projection_dim=g.proj)
    bigg.architectures = ["CLIPTextModelWithProjection"]
    bigg.save_pretrained(tmp / "text_encoder_2")
    write_tokenizer_files(tmp / "tokenizer")  # CLIP-L pads with <|endoftext|>
    write_tokenizer_files(tmp / "tokenizer_2")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # bigG pads with "!" (id 0), as open_clip
        data = json.loads((tmp / "tokenizer_2" / name).read_text())
        data["pad_token"] = "!"
        (tmp / "tokenizer_2" / name).write_text(json.dumps(data))
    write("scheduler/scheduler_config.json", {
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "trained_betas": None,
        "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False,
        "set_alpha_to_one": False, "skip_prk_steps": True, "sample_max_value": 1.0, "interpolation_type": "linear",
        "use_karras_sigmas": False})
    write("model_index.json", {
        "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


# ------------------------------------------------------------------------------------- children

def child_ours(file: str, threads: int, precision: str) -> None:
    t0 = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    from webui.engine.residency import Engine
    from webui.engine.request import GenerationRequest
    import transformers
    # lazy modules: import them here, as `import diffusers` + the SDXL pipeline already do on their side
    transformers.CLIPTextModel, transformers.CLIPTextModelWithProjection
    import_s = time.perf_counter() - t0
    rss_imports = harness.rss_gb()

    loadavg = harness.loadavg()
    t0, c0 = time.perf_counter(), harness.cpu_s()
    engine = Engine("cpu", PRECISIONS[precision][0])
    engine.load(file)
    load_s, load_cpu = time.perf_counter() - t0, harness.cpu_s() - c0
    rss_load, rss_now_load = harness.rss_gb(), harness.rss_now_gb()

    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", scheduler="automatic",
                                steps=STEPS, cfg_scale=CFG, seed=SEED, width=SIZE, height=SIZE, batch_size=1)
    gens, cpus, images = [], [], []
    for _ in range(2):
        t0, c0 = time.perf_counter(), harness.cpu_s()
        result = engine.generate(request)
        gens.append(time.perf_counter() - t0)
        cpus.append(harness.cpu_s() - c0)
        images.append(result.images[0].image)
    harness.report(side="ours", precision=precision, import_s=import_s, load_s=load_s, gen1_s=gens[0], gen2_s=gens[1],
            load_cpu_s=load_cpu, gen1_cpu_s=cpus[0], gen2_cpu_s=cpus[1], loadavg_1min=loadavg,
            rss_imports_gb=rss_imports, rss_load_gb=rss_load, rss_now_load_gb=rss_now_load, peak_rss_gb=harness.rss_gb(),
            **harness.image_stats(images))


def child_diffusers(file: str, config: str, threads: int, precision: str) -> None:
    t0 = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    import_s = time.perf_counter() - t0
    rss_imports = harness.rss_gb()

    loadavg = harness.loadavg()
    t0, c0 = time.perf_counter(), harness.cpu_s()
    pipe = StableDiffusionXLPipeline.from_single_file(file, config=config, local_files_only=True,
                                                      torch_dtype=getattr(torch, PRECISIONS[precision][1]))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    load_s, load_cpu = time.perf_counter() - t0, harness.cpu_s() - c0
    rss_load, rss_now_load = harness.rss_gb(), harness.rss_now_gb()

    pipe.set_progress_bar_config(disable=True)
    gens, cpus, images = [], [], []
    for _ in range(2):
        t0, c0 = time.perf_counter(), harness.cpu_s()
        image = pipe(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                     guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED)).images[0]
        gens.append(time.perf_counter() - t0)
        cpus.append(harness.cpu_s() - c0)
        images.append(image)
    harness.report(side="diffusers", precision=precision, import_s=import_s, load_s=load_s, gen1_s=gens[0],
            gen2_s=gens[1], load_cpu_s=load_cpu, gen1_cpu_s=cpus[0], gen2_cpu_s=cpus[1], loadavg_1min=loadavg,
            rss_imports_gb=rss_imports, rss_load_gb=rss_load, rss_now_load_gb=rss_now_load, peak_rss_gb=harness.rss_gb(),
            **harness.image_stats(images))


# ----------------------------------------------------------------------------------------- driver

ROWS = (("load (s)", "load_s"), ("txt2img first run (s)", "gen1_s"), ("txt2img second run (s)", "gen2_s"),
        ("peak RSS (GB)", "peak_rss_gb"), ("RSS after load (GB)", "rss_load_gb"),
        ("current RSS after load (GB)", "rss_now_load_gb"),
        ("import time (s)", "import_s"), ("import + load (s)", "import_load_s"),
        ("load CPU time (s)", "load_cpu_s"), ("txt2img second run CPU time (s)", "gen2_cpu_s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "bench" / "work"), help="where the checkpoint is cached")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs per side, interleaved; the table shows the best")
    parser.add_argument("--only", choices=("ours", "diffusers"))
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="bf16",
                        help="both sides: ours Engine('cpu', 'bf16' | 'full'), diffusers torch_dtype")
    parser.add_argument("--small", action="store_true",
                        help="a tiny SDXL-shaped variant: checks the script in a minute, not a benchmark")
    parser.add_argument("--idle-wait", type=float, default=120.0,
                        help="before each run, wait up to this many seconds for the CPUs to be idle")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    parser.add_argument("--child", choices=("ours", "diffusers", "build"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "ours":
        return child_ours(args.file, args.threads, args.precision)
    if args.child == "diffusers":
        return child_diffusers(args.file, args.config, args.threads, args.precision)
    if args.child == "build":
        return build_checkpoint(Path(args.file), small=args.small)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    a = arch(args.small)
    file = work / a.ckpt_name
    if not file.exists():  # built in a subprocess so this driver stays small
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "build", "--file", str(file)]
        subprocess.run(cmd + (["--small"] if args.small else []), check=True, cwd=ROOT)
    config = build_diffusers_config(work / a.config_name, small=args.small)

    sides = [s for s in ("ours", "diffusers") if args.only in (None, s)]
    runs: dict[str, list[dict]] = {s: [] for s in ("ours", "diffusers")}
    for _ in range(args.rounds):
        for side in sides:
            runs[side].append(harness.run_side(__file__, side, file, ["--config", str(config), "--precision", args.precision],
                                                args.threads, args.idle_wait))
    ours, ref = harness.best(runs["ours"], ROWS), harness.best(runs["diffusers"], ROWS)

    import torch
    loads = ", ".join(f"{r['loadavg_1min']:.1f}" for s in sides for r in runs[s])
    what = ("SMALL SDXL-shaped random checkpoint (a check of the script, NOT a benchmark)" if args.small
            else "SDXL-size random checkpoint")
    header = (f"{what} ({file.stat().st_size / 1e9:.2f} GB fp16 safetensors), CPU {args.precision} on both sides, "
              f"{args.threads} threads, txt2img {SIZE}x{SIZE}, {STEPS} steps Euler, CFG {CFG}, prompt and negative "
              f"prompt, batch 1. Each side runs in a fresh subprocess (peak RSS = the child's ru_maxrss; RSS after "
              f"load = ru_maxrss at the end of loading, current = VmRSS then; GB = 1e9 bytes), {args.rounds} "
              f"round(s) interleaved, best value per metric. Load times exclude library imports on both sides "
              f"(shown separately). torch {torch.__version__}, {os.cpu_count()} CPUs, 1-min load average at the "
              f"children's starts: {loads}.")
    text = harness.table(ours, ref, ROWS)
    print("\n" + header + "\n\n" + text)
    if not args.no_write:
        out = work / "results_sdxl_small.md" if args.small else ROOT / "bench" / "results_sdxl.md"
        out.write_text("# bench_sdxl results\n\n" + header + "\n\n" + text + "\n\nAll runs:\n\n```json\n"
                       + json.dumps(runs, indent=1) + "\n```\n")
        print(f"\n[bench] wrote {out}")


if __name__ == "__main__":
    main()
