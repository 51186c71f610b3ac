"""Demo-model speed: one native-size txt2img image, 20 steps Euler, CFG 7, ours vs diffusers (CPU, fp32).

    .venv/bin/python bench/bench_demo.py [--ckpt models/checkpoints/webui-demo-64px.safetensors]
                                         [--images 10] [--threads 2] [--only ours|diffusers]

Both sides load the same shipped single-file checkpoint (diffusers through ``from_single_file`` with a local
config folder written from the file's own ``webui.train_config`` metadata; nothing is downloaded), make one
warm-up image, then ``--images`` images with different seeds, one at a time (batch 1). Each image's wall
time covers the whole job: prompt encoding (with the empty negative prompt), 20 denoising steps with
classifier-free guidance, VAE decode and conversion to a PIL image. The two sides alternate image by image,
so a busy neighbour slows both alike; the table shows the median and the best image time per side.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PROMPT = "a large red circle on a blue background, top left"
STEPS, CFG = 20, 7.0


def diffusers_config(ckpt: Path, root: Path) -> Path:
    """A diffusers pipeline folder (configs + tokenizer, no weights) for the demo checkpoint's networks."""
    import transformers

    from tests.tiny_models import write_diffusers_pipeline
    from webui.demo.train import LATENT_SCALE, TrainConfig
    from webui.engine.files import read_metadata

    config = TrainConfig.from_json(json.loads(read_metadata(ckpt)["webui.train_config"]))
    blocks = ["CrossAttnDownBlock2D" if i in config.unet_attention_levels else "DownBlock2D"
              for i in range(len(config.unet_mult))]
    return write_diffusers_pipeline(
        root, scheduler="EulerDiscreteScheduler",
        text_config=transformers.CLIPTextConfig(**config.clip_values(), bos_token_id=49406, eos_token_id=49407,
                                                pad_token_id=1),
        unet={
            "sample_size": config.size // 8, "in_channels": 4, "out_channels": 4, "down_block_types": blocks,
            "up_block_types": [b.replace("Down", "Up") for b in reversed(blocks)],
            "block_out_channels": [config.unet_channels * m for m in config.unet_mult],
            "layers_per_block": config.unet_res_blocks, "cross_attention_dim": config.text_hidden,
            "attention_head_dim": config.unet_heads, "norm_num_groups": 32, "norm_eps": 1e-5,
            "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "use_linear_projection": False,
            "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
        },
        vae={
            "in_channels": 3, "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * len(config.vae_ch_mult),
            "up_block_types": ["UpDecoderBlock2D"] * len(config.vae_ch_mult),
            "block_out_channels": [config.vae_ch * m for m in config.vae_ch_mult],
            "layers_per_block": config.vae_res_blocks, "latent_channels": 4, "norm_num_groups": 32,
            "act_fn": "silu", "sample_size": config.size, "scaling_factor": LATENT_SCALE,
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=ROOT / "models" / "checkpoints" / "webui-demo-64px.safetensors")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("ours", "diffusers"))
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from webui.engine.residency import Engine
    from webui.engine.request import GenerationRequest

    sides = {}
    if args.only in (None, "ours"):
        t0 = time.perf_counter()
        engine = Engine("cpu", "full")
        model = engine.load(args.ckpt)
        size = model.native_size
        load_ours = time.perf_counter() - t0

        def ours(seed):
            request = GenerationRequest(prompt=PROMPT, sampler_name="Euler", steps=STEPS, cfg_scale=CFG,
                                        seed=seed, width=size, height=size)
            return engine.generate(request).images[0].image
        sides["ours"] = (ours, load_ours)
    if args.only in (None, "diffusers"):
        from diffusers import StableDiffusionPipeline

        from webui.engine.families import FAMILIES, native_size
        from webui.engine.files import read_metadata
        sd1 = next(f for f in FAMILIES if f.name == "sd1")
        size = native_size(sd1, read_metadata(args.ckpt))
        config = diffusers_config(args.ckpt, args.work / "diffusers_config_demo")
        t0 = time.perf_counter()
        pipe = StableDiffusionPipeline.from_single_file(str(args.ckpt), config=str(config),
                                                        torch_dtype=torch.float32, safety_checker=None,
                                                        requires_safety_checker=False, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        load_diffusers = time.perf_counter() - t0

        def reference(seed):
            return pipe(PROMPT, height=size, width=size, num_inference_steps=STEPS, guidance_scale=CFG,
                        generator=torch.Generator().manual_seed(seed)).images[0]
        sides["diffusers"] = (reference, load_diffusers)

    times = {name: [] for name in sides}
    for name, (fn, _) in sides.items():
        fn(0)  # warm-up
    for i in range(args.images):
        for name, (fn, _) in sides.items():
            t0 = time.perf_counter()
            fn(1 + i)
            times[name].append(time.perf_counter() - t0)
    print(f"demo model {args.ckpt.name} ({args.ckpt.stat().st_size / 2**20:.1f} MiB), CPU fp32, "
          f"{args.threads} threads, {size}x{size}, {STEPS} steps Euler, CFG {CFG}, batch 1, "
          f"{args.images} images per side, torch {torch.__version__}")
    print("| side | load (s) | image, median (s) | image, best (s) |")
    print("|---|---:|---:|---:|")
    for name, (_, load) in sides.items():
        print(f"| {name} | {load:.2f} | {statistics.median(times[name]):.3f} | {min(times[name]):.3f} |")
    if len(sides) == 2:
        ratio = statistics.median(times["ours"]) / statistics.median(times["diffusers"])
        print(f"ours / diffusers (median image time): {ratio:.2f}")


if __name__ == "__main__":
    main()
