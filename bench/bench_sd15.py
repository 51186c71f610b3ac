"""SD1.5-size benchmark: our engine (its CPU default precision) vs diffusers (fp32) on the same single-file
checkpoint.

    .venv/bin/python bench/bench_sd15.py [--work bench/work] [--only ours|diffusers] [--threads 2]
                                         [--precision auto|full|bf16]

1. Builds once (cached under --work) an SD1.5-shaped checkpoint with random weights in the original
   single-file layout, stored fp16 ``.safetensors``: 860M UNet, full VAE, CLIP-L text encoder; plus
   the local diffusers config folder (SD1.5 configs + tokenizer files from our vocabulary).
2. Runs each side in a fresh subprocess (so ``ru_maxrss`` is that side's own peak): load time, then
   txt2img 256x256, 4 steps Euler, CFG 7, batch 1, twice (first run and second run); diffusers in fp32,
   ours in ``--precision`` (default ``auto``: bf16 on a CPU with native bf16). When that is not fp32, our
   fp32 run is made too (side ``ours-fp32``) and the PSNR of our image against it is reported.
3. Prints a markdown table and writes it to bench/results.md.

Nothing is downloaded (HF_HUB_OFFLINE=1, local_files_only=True).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import harness  # noqa: E402  (the project root first, for `python bench/...`)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CKPT_NAME = "sd15-random-fp16.safetensors"
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
SIZE, STEPS, CFG, SEED = 256, 4, 7.0, 1234

CLIP_L = dict(vocab_size=49408, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
              intermediate_size=3072, max_position_embeddings=77, hidden_act="quick_gelu",
              layer_norm_eps=1e-5, projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


# ------------------------------------------------------------------------------------------ build

def sd15_unet_config():
    from webui.engine.unet import UNetConfig
    return UNetConfig(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4),
                      num_res_blocks=2, attention_levels=(0, 1, 2), transformer_depth=(1, 1, 1, 0),
                      context_dim=768, num_heads=8)


def sd15_vae_config():
    from webui.engine.vae import VAEConfig
    return VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4)


def build_checkpoint(path: Path) -> None:
    """Random SD1.5-shaped weights (PyTorch default init), original layout, fp16 safetensors."""
    import safetensors.torch
    import torch
    import transformers

    from tests.tiny_models import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
    from webui.engine.unet import UNetModel
    from webui.engine.vae import AutoencoderKL

    torch.manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for prefix, make in ((UNET_PREFIX, lambda: UNetModel(sd15_unet_config())),
                         (VAE_PREFIX, lambda: AutoencoderKL(sd15_vae_config())),
                         (TEXT_PREFIX, lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_L)))):
        module = make()
        for k, v in module.state_dict().items():
            sd[prefix + k] = (v.half() if v.is_floating_point() else v).contiguous()
        del module
    sd[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(77)[None]  # real SD1.x files carry it
    n_unet = sum(v.numel() for k, v in sd.items() if k.startswith(UNET_PREFIX))
    print(f"[build] UNet parameters: {n_unet / 1e6:.1f}M; writing {path}", flush=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(sd, str(tmp), metadata={"format": "pt"})
    tmp.rename(path)


def build_diffusers_config(root: Path) -> Path:
    """SD1.5's diffusers pipeline folder (configs + tokenizer, no weights), as save_pretrained writes it."""
    import transformers

    from tests.tiny_models import write_diffusers_pipeline
    if (root / "model_index.json").exists():
        return root
    return write_diffusers_pipeline(
        root, text_config=transformers.CLIPTextConfig(**CLIP_L),
        unet={
            "sample_size": 64, "in_channels": 4, "out_channels": 4, "act_fn": "silu", "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "layers_per_block": 2,
            "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32, "use_linear_projection": False,
        },
        vae={
            "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
        })


# ------------------------------------------------------------------------------------- children

def child_ours(file: str, threads: int, precision: str = "full", image_out: str | None = None) -> None:
    t0 = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    from webui.engine.residency import Engine
    from webui.engine.request import GenerationRequest
    import transformers
    transformers.CLIPTextModel  # lazy module: import it here, as `import diffusers` already does on its side
    import_s = time.perf_counter() - t0
    rss_imports = harness.rss_gb()

    loadavg = harness.loadavg()
    t0, c0 = time.perf_counter(), harness.cpu_s()
    engine = Engine("cpu", precision)
    engine.load(file)
    load_s, load_cpu = time.perf_counter() - t0, harness.cpu_s() - c0
    rss_load = harness.rss_gb()

    request = GenerationRequest(prompt=PROMPT, negative_prompt="", sampler_name="Euler", scheduler="automatic",
                                steps=STEPS, cfg_scale=CFG, seed=SEED, width=SIZE, height=SIZE, batch_size=1)
    gens, cpus, images = [], [], []
    for _ in range(2):
        t0, c0 = time.perf_counter(), harness.cpu_s()
        result = engine.generate(request)
        gens.append(time.perf_counter() - t0)
        cpus.append(harness.cpu_s() - c0)
        images.append(result.images[0].image)
    if image_out:
        images[1].save(image_out)
    harness.report(side="ours", precision=engine.precision.label, import_s=import_s, load_s=load_s,
            gen1_s=gens[0], gen2_s=gens[1],
            load_cpu_s=load_cpu, gen1_cpu_s=cpus[0], gen2_cpu_s=cpus[1], loadavg_1min=loadavg,
            rss_imports_gb=rss_imports, rss_load_gb=rss_load, peak_rss_gb=harness.rss_gb(),
            image_std=float(torch.tensor(list(images[0].getdata()), dtype=torch.float32).std()),
            same_twice=list(images[0].getdata()) == list(images[1].getdata()))


def child_diffusers(file: str, config: str, threads: int) -> None:
    t0 = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    import_s = time.perf_counter() - t0
    rss_imports = harness.rss_gb()

    loadavg = harness.loadavg()
    t0, c0 = time.perf_counter(), harness.cpu_s()
    pipe = StableDiffusionPipeline.from_single_file(file, config=config, torch_dtype=torch.float32,
                                                    safety_checker=None, requires_safety_checker=False,
                                                    local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    load_s, load_cpu = time.perf_counter() - t0, harness.cpu_s() - c0
    rss_load = harness.rss_gb()

    pipe.set_progress_bar_config(disable=True)
    gens, cpus, images = [], [], []
    for _ in range(2):
        t0, c0 = time.perf_counter(), harness.cpu_s()
        image = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=CFG,
                     generator=torch.Generator().manual_seed(SEED)).images[0]
        gens.append(time.perf_counter() - t0)
        cpus.append(harness.cpu_s() - c0)
        images.append(image)
    harness.report(side="diffusers", import_s=import_s, load_s=load_s, gen1_s=gens[0], gen2_s=gens[1],
            load_cpu_s=load_cpu, gen1_cpu_s=cpus[0], gen2_cpu_s=cpus[1], loadavg_1min=loadavg,
            rss_imports_gb=rss_imports, rss_load_gb=rss_load, peak_rss_gb=harness.rss_gb(),
            image_std=float(torch.tensor(list(images[0].getdata()), dtype=torch.float32).std()),
            same_twice=list(images[0].getdata()) == list(images[1].getdata()))


# ----------------------------------------------------------------------------------------- driver

ROWS = (("load (s)", "load_s"), ("txt2img first run (s)", "gen1_s"), ("txt2img second run (s)", "gen2_s"),
        ("peak RSS (GB)", "peak_rss_gb"), ("RSS after load (GB)", "rss_load_gb"),
        ("import time (s)", "import_s"), ("import + load (s)", "import_load_s"),
        ("load CPU time (s)", "load_cpu_s"), ("txt2img second run CPU time (s)", "gen2_cpu_s"))


TARGETS = (("whole job (second run) <= 0.5x diffusers' fp32", lambda o, r: o["gen2_s"] / r["gen2_s"] <= 0.5),
           ("load <= 0.5x diffusers from_single_file", lambda o, r: o["load_s"] / r["load_s"] <= 0.5),
           ("peak RSS <= 0.7x diffusers'", lambda o, r: o["peak_rss_gb"] / r["peak_rss_gb"] <= 0.7))


def psnr(path_a: Path, path_b: Path) -> float:
    import numpy as np
    from PIL import Image
    a, b = (np.asarray(Image.open(p).convert("RGB"), np.float64) for p in (path_a, path_b))
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "bench" / "work"), help="where the checkpoint is cached")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs per side, interleaved; the table shows the best")
    parser.add_argument("--only", choices=("ours", "diffusers"))
    parser.add_argument("--idle-wait", type=float, default=120.0,
                        help="before each run, wait up to this many seconds for the CPUs to be idle")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results.md")
    parser.add_argument("--precision", default="auto", choices=("auto", "full", "bf16"),
                        help="ours (diffusers runs fp32): auto = the engine's CPU default")
    parser.add_argument("--child", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--image-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "ours":
        return child_ours(args.file, args.threads, args.precision, args.image_out)
    if args.child == "diffusers":
        return child_diffusers(args.file, args.config, args.threads)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    file = work / CKPT_NAME
    if not file.exists():  # built in a subprocess so this driver stays small
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        f"from bench.bench_sd15 import build_checkpoint; from pathlib import Path; "
                        f"build_checkpoint(Path({str(file)!r}))"], check=True, cwd=ROOT)
    config = build_diffusers_config(work / "diffusers_config_sd15")

    sides = [s for s in ("ours", "diffusers") if args.only in (None, s)]
    if "ours" in sides and args.precision != "full":
        sides.insert(1, "ours-fp32")              # the reference image of the PSNR line
    runs: dict[str, list[dict]] = {s: [] for s in ("ours", "ours-fp32", "diffusers")}
    images = {"ours": work / "sd15-ours.png", "ours-fp32": work / "sd15-ours-fp32.png"}
    for _ in range(args.rounds):
        for side in sides:
            child = "ours" if side.startswith("ours") else side
            extra = ["--config", str(config)]
            if child == "ours":
                extra += ["--precision", "full" if side == "ours-fp32" else args.precision,
                          "--image-out", str(images[side])]
            runs[side].append(harness.run_side(__file__, child, file, extra, args.threads, args.idle_wait))
    ours, ref = harness.best(runs["ours"], ROWS), harness.best(runs["diffusers"], ROWS)
    quality = ""
    if runs["ours-fp32"]:
        quality = (f"- our {runs['ours'][0]['precision']} image against our fp32 image: "
                   f"PSNR {psnr(images['ours'], images['ours-fp32']):.1f} dB (target >= 30)")

    import torch
    loads = ", ".join(f"{r['loadavg_1min']:.1f}" for s in sides for r in runs[s])
    precision = runs["ours"][0]["precision"] if runs["ours"] else "-"
    header = (f"SD1.5-size random checkpoint ({file.stat().st_size / 1e9:.2f} GB fp16 safetensors), CPU: ours "
              f"{precision}, diffusers fp32, "
              f"{args.threads} threads, txt2img {SIZE}x{SIZE}, {STEPS} steps Euler, CFG {CFG}, batch 1. "
              f"Each side runs in a fresh subprocess (peak RSS = the child's ru_maxrss; GB = 1e9 bytes), "
              f"{args.rounds} round(s) interleaved, best value per metric. Load times exclude library imports "
              f"on both sides (shown separately). torch {torch.__version__}, {os.cpu_count()} CPUs, "
              f"1-min load average at the children's starts: "
              f"{loads}.")
    text = harness.table(ours, ref, ROWS)
    verdicts = ""
    if ours and ref:
        verdicts = "\n".join(f"- {name}: {'met' if check(ours, ref) else 'MISSED'}" for name, check in TARGETS)
    verdicts = "\n".join(v for v in (verdicts, quality) if v)
    print("\n" + header + "\n\n" + text + "\n\n" + verdicts)
    if not args.no_write:
        (ROOT / "bench" / "results.md").write_text(
            "# bench_sd15 results\n\n" + header + "\n\n" + text + "\n\n" + verdicts + "\n\nAll runs:\n\n```json\n"
            + json.dumps(runs, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
