"""GPU benchmark: our engine (fp16, SDPA; normal / --compile / --medvram / --lowvram / --fp8) vs diffusers'
``from_single_file`` pipelines on the same SD1.5-size and SDXL-size files: sampling it/s and peak VRAM.

Each configuration runs in a fresh process: load, one warm-up job, one timed job. it/s counts sampler steps
between the first and the last step callback (text encoding and VAE decode excluded, on both sides); peak
VRAM is ``torch.cuda.max_memory_allocated`` over the timed job and the load. Run it with ``bench/gpu.sh``.
Needs a CUDA device; installs nothing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PROMPT = "a photograph of an astronaut riding a horse, highly detailed"
NEGATIVE = "blurry, low quality"
STEPS = 20
CFG = 7.0
SEED = 1
MODELS = {"sd15": 512, "sdxl": 1024}
OURS = {"normal": {}, "compile": {"compile": True}, "medvram": {"memory": "medvram"},
        "lowvram": {"memory": "lowvram"}, "fp8": {"fp8": True}}


def _sync_time(torch) -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def child_ours(file: str, size: int, config: str) -> dict:
    import torch

    from webui.engine.residency import Engine
    from webui.engine.request import GenerationRequest
    engine = Engine("cuda", "half", **OURS[config])
    t0 = _sync_time(torch)
    engine.load(file)
    load_s = _sync_time(torch) - t0
    stamps: list[float] = []

    def progress(_p) -> None:
        stamps.append(_sync_time(torch))
    request = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=STEPS, cfg_scale=CFG, seed=SEED, width=size,
                   height=size, sampler_name="Euler", scheduler="automatic")
    t0 = time.perf_counter()
    engine.generate(GenerationRequest(**request))               # warm-up (compiles with --compile)
    first_s = _sync_time(torch) - t0
    torch.cuda.reset_peak_memory_stats()
    stamps.clear()
    t0 = time.perf_counter()
    engine.generate(GenerationRequest(**request), progress=progress)
    job_s = _sync_time(torch) - t0
    its = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return dict(load_s=load_s, first_job_s=first_s, job_s=job_s, it_s=its,
                peak_vram_gb=torch.cuda.max_memory_allocated() / 1e9, mode=engine.memory_mode)


def child_diffusers(file: str, size: int, config_dir: str, model: str) -> dict:
    import diffusers
    import torch

    cls = diffusers.StableDiffusionXLPipeline if model == "sdxl" else diffusers.StableDiffusionPipeline
    kwargs = {} if model == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    t0 = _sync_time(torch)
    pipe = cls.from_single_file(file, config=config_dir, torch_dtype=torch.float16, local_files_only=True,
                                **kwargs).to("cuda")
    load_s = _sync_time(torch) - t0
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    stamps: list[float] = []

    def on_step(pipe_, step, timestep, kw):
        stamps.append(_sync_time(torch))
        return kw
    call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                height=size, width=size)
    t0 = time.perf_counter()
    pipe(**call, generator=torch.Generator("cuda").manual_seed(SEED))
    first_s = _sync_time(torch) - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipe(**call, generator=torch.Generator("cuda").manual_seed(SEED), callback_on_step_end=on_step)
    job_s = _sync_time(torch) - t0
    its = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return dict(load_s=load_s, first_job_s=first_s, job_s=job_s, it_s=its,
                peak_vram_gb=torch.cuda.max_memory_allocated() / 1e9, mode="diffusers")


def build(model: str, work: Path) -> tuple[Path, Path]:
    if model == "sd15":
        import bench_sd15 as b
        file, config = work / "sd15-random-fp16.safetensors", work / "diffusers_config_sd15"
        if not file.exists():
            b.build_checkpoint(file)
        b.build_diffusers_config(config)
    else:
        import bench_sdxl as b
        file, config = work / "sdxl-random-fp16.safetensors", work / "diffusers_config_sdxl"
        if not file.exists():
            b.build_checkpoint(file)
        b.build_diffusers_config(config)
    return file, config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "bench" / "work"))
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--configs", default="diffusers,normal,compile,medvram,lowvram,fp8")
    parser.add_argument("--timeout", type=int, default=300, help="per configuration, seconds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size = MODELS[args.model]
        result = (child_diffusers(args.file, size, args.config_dir, args.model) if args.child == "diffusers"
                  else child_ours(args.file, size, args.child))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        file, config_dir = build(model, work)
        for config in args.configs.split(","):
            cmd = [sys.executable, __file__, "--child", config, "--file", str(file), "--config-dir", str(config_dir),
                   "--model", model]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                result = json.loads(line[7:]) if line else {"error": proc.stderr.strip().splitlines()[-1:]}
            except subprocess.TimeoutExpired:
                result = {"error": f"timed out after {args.timeout} s"}
            rows.append((model, config, result))
            print(f"[gpu] {model} {config}: {json.dumps(result)}", flush=True)
    ref = {model: r for model, c, r in rows if c == "diffusers" and "it_s" in r}
    print("\n| model | config | it/s | vs diffusers | job (s) | first job (s) | load (s) | peak VRAM (GB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model, config, r in rows:
        if "it_s" not in r:
            print(f"| {model} | {config} | error: {r.get('error')} |||||")
            continue
        ratio = r["it_s"] / ref[model]["it_s"] if model in ref else float("nan")
        print(f"| {model} | {config} | {r['it_s']:.2f} | {ratio:.2f}x | {r['job_s']:.2f} | {r['first_job_s']:.2f} "
              f"| {r['load_s']:.2f} | {r['peak_vram_gb']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
