"""Soak test of the API server: many mixed jobs from concurrent clients, checked one by one.

Starts ``python app.py --nowebui`` on a fresh data folder holding two tiny random SD 1.x checkpoints
(``models/checkpoints/soak-a``, ``soak-b``), a tiny kohya LoRA (``models/lora/soak-lora``) and a tiny
original-format ControlNet (``models/controlnet/soak-control``), then sends N jobs (default 200) from 4
client threads, each with its own ``requests.Session``:

- kinds, in turn: ``txt2img``; ``img2img`` (an init image); ``inpaint`` (img2img with a mask); ``lora``
  (txt2img with ``<lora:soak-lora:0.8>``); ``controlnet`` (txt2img with one sd-webui-controlnet unit);
  some txt2img-like jobs ask for 2 images;
- every request names its checkpoint in ``override_settings.sd_model_checkpoint`` (how A1111 clients pin a
  model per request; with several clients it is the only way a request knows which model it gets), and the
  checkpoint changes every ``--switch-every`` jobs (20); at each change the client that draws the first
  job of the new block also POSTs ``/sdapi/v1/options {"sd_model_checkpoint": title}`` first, as
  webuiapi's ``util_set_model`` does, so both ways of switching run.

Every response is checked against its own request: each request has its own seed and prompt (and task id),
and its answer must have the right number of images, ``info`` with that seed / those seeds, that prompt,
that task id, the checkpoint the request asked for (``sd_model_name`` / ``sd_model_hash`` and ``Model`` /
``Model hash`` of every infotext), the LoRA / ControlNet lines exactly where the request asked for them,
no warnings, and PNGs of the asked size whose ``parameters`` chunk is that image's infotext. After the
main run, one job per (kind, checkpoint) is sent again, concurrently, and must give the same pixels (a LoRA
or ControlNet left applied, or the wrong weights, would change them).

Reported: the server's VmRSS (``/proc/<pid>/status``) after a concurrent warm-up and at the end (the
change must stay within ``--max-rss-growth``, 10 %), p50 / p95 latency per kind (as a client sees it:
queueing behind the other clients included), throughput, and every violation; the exit status is 1 on any.

    .venv/bin/python bench/soak.py                          # 200 jobs, 4 clients, 64x64, 6 steps
    .venv/bin/python bench/soak.py --jobs 50 --clients 2 --size 64 --steps 4

The core is ``run_soak(SoakConfig(...), workdir)`` (``tests/test_soak.py`` runs a short version).
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import itertools
import json
import queue
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import requests
from PIL import Image

KINDS = ("txt2img", "img2img", "inpaint", "lora", "controlnet")
CHECKPOINTS = ("soak-a.safetensors", "soak-b.safetensors")
LORA, CONTROLNET = "soak-lora", "soak-control"
SAMPLERS = ("Euler", "DPM++ 2M", "UniPC")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "ring")
MODEL_LOAD_TIMEOUT_S = 180        # deadlines against a hang, not speed claims
REQUEST_TIMEOUT_S = 600


@dataclasses.dataclass
class SoakConfig:
    jobs: int = 200
    clients: int = 4
    size: int = 64
    steps: int = 6
    switch_every: int = 20
    warmup: int = 20                      # jobs before the RSS baseline (concurrent, checked, not timed)
    replay: bool = True                   # send one job per (kind, checkpoint) again: same pixels?
    max_rss_growth: float | None = 0.10   # end vs after warm-up; None: report only
    seed: int = 1234                      # the job mix (samplers, batch sizes, words)
    threads: int = 0                      # the server's --threads (0: torch's choice)


@dataclasses.dataclass
class JobSpec:
    index: int
    phase: str                 # warmup | main | replay
    kind: str
    checkpoint: str            # listed name, e.g. soak-a.safetensors
    seed: int
    prompt: str
    batch_size: int
    task_id: str
    body: dict
    switch: bool = False       # POST options to this job's checkpoint first

    @property
    def route(self) -> str:
        return "img2img" if self.kind in ("img2img", "inpaint") else "txt2img"


@dataclasses.dataclass
class Outcome:
    spec: JobSpec
    latency_s: float | None = None
    ok: bool = False
    violations: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None               # transport error or non-200 answer
    first_pixels: np.ndarray | None = None  # kept for the replay comparison


@dataclasses.dataclass
class SoakReport:
    config: SoakConfig
    jobs_planned: int = 0
    jobs_ok: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    violations: list[str] = dataclasses.field(default_factory=list)
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    rss_start_kb: int | None = None        # after the server loaded its model, before anything else
    rss_warm_kb: int | None = None         # after the warm-up
    rss_end_kb: int | None = None          # after the main run (and the replays)
    rss_peak_kb: int | None = None         # the largest sample during warm-up + main run
    rss_samples: list[tuple[float, int, int]] = dataclasses.field(default_factory=list)  # (t, jobs done, kB)
    wall_s: float = 0.0                    # the main run
    model_switches: int = 0                # POST options switches
    replays: int = 0
    replay_max_diff: int = 0
    server_tracebacks: int = 0
    rss_problem: str | None = None

    @property
    def rss_growth(self) -> float | None:
        if self.rss_warm_kb and self.rss_end_kb:
            return self.rss_end_kb / self.rss_warm_kb - 1
        return None

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.violations or self.rss_problem or self.server_tracebacks
                    or self.jobs_ok != self.jobs_planned)


# ------------------------------------------------------------------------------------- the data folder

def _randomized(module, seed: int) -> dict:
    """Random non-zero weights scaled by fan-in (zero convs too, or a ControlNet would do nothing)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=generator)
        if value.ndim > 1:
            out[key] = (noise / value[0].numel() ** 0.5).contiguous()
        elif key.endswith("weight"):
            out[key] = 1.0 + 0.1 * noise
        else:
            out[key] = 0.1 * noise
    return out


def write_tiny_lora(path: Path, checkpoint: Path, seed: int = 7) -> Path:
    """A kohya LoRA (LDM-named UNet keys, a 3x3 LoCon conv, a text-encoder layer) shaped for ``checkpoint``."""
    import safetensors
    import safetensors.torch
    import torch
    targets = {
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k":
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v":
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight",
        "lora_unet_input_blocks_1_0_in_layers_2": "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj":
            "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
    }
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    with safetensors.safe_open(str(checkpoint), "pt") as f:
        for key, weight_key in targets.items():
            shape = f.get_slice(weight_key).get_shape()
            rank = 4
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, shape[1], *shape[2:], generator=generator) * 0.3
            sd[f"{key}.lora_up.weight"] = torch.randn(shape[0], rank, *([1] * (len(shape) - 2)),
                                                      generator=generator) * 0.3
            sd[f"{key}.alpha"] = torch.tensor(2.0)
    safetensors.torch.save_file(sd, str(path), metadata={"ss_network_dim": "4", "ss_network_alpha": "2"})
    return path


def write_tiny_controlnet(path: Path, seed: int = 5) -> Path:
    """An original-format (``control_model.*``) ControlNet for the tiny test UNet, every weight random."""
    import safetensors.torch

    from extensions.controlnet import cldm
    from tests.tiny_models import unet_config
    net = cldm.ControlNet(unet_config())
    safetensors.torch.save_file({f"control_model.{k}": v for k, v in _randomized(net, seed).items()}, str(path))
    return path


def prepare_data_dir(data: Path) -> dict[str, Path]:
    """Two tiny checkpoints, a LoRA and a ControlNet where the server looks for them under ``data``."""
    from tests.tiny import tiny_checkpoint
    ckpts, loras, controlnets = (data / "models" / name for name in ("checkpoints", "lora", "controlnet"))
    for folder in (ckpts, loras, controlnets):
        folder.mkdir(parents=True, exist_ok=True)
    files = {name: tiny_checkpoint(ckpts / name, seed=i) for i, name in enumerate(CHECKPOINTS)}
    files[LORA] = write_tiny_lora(loras / f"{LORA}.safetensors", files[CHECKPOINTS[0]])
    files[CONTROLNET] = write_tiny_controlnet(controlnets / f"{CONTROLNET}.safetensors")
    return files


# ------------------------------------------------------------------------------------- the jobs

def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _init_image(size: int, rng: random.Random) -> Image.Image:
    """A few coloured rectangles on a flat background."""
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(3):
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        image.paste(tuple(rng.randrange(256) for _ in range(3)),
                    (x0, y0, x0 + rng.randrange(8, size // 2), y0 + rng.randrange(8, size // 2)))
    return image


def _mask(size: int, rng: random.Random) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
    mask.paste(255, (x0, y0, x0 + size // 2, y0 + size // 2))
    return mask


def _hint(size: int, rng: random.Random) -> Image.Image:
    """A white disc on black: an edge-map-like hint."""
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy, r = rng.randrange(size // 4, 3 * size // 4), rng.randrange(size // 4, 3 * size // 4), size // 5
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 255
    return Image.fromarray(pixels)


def make_job(index: int, phase: str, kind: str, checkpoint: str, titles: dict[str, str], cfg: SoakConfig,
             rng: random.Random, controlnet_title: str, run_id: str) -> JobSpec:
    """One request with its own seed, prompt and task id."""
    seed = {"warmup": 5_000_000, "main": 1_000_000}[phase] + 4 * index      # batches of 2 use seed, seed + 1
    words = f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} on a {rng.choice(COLOURS)} background"
    prompt = f"soak {phase} job {index} ({kind}): {words}"
    if kind == "lora":
        prompt += f" <lora:{LORA}:0.8>"
    batch_size = 2 if kind in ("txt2img", "lora") and rng.random() < 0.25 else 1
    task_id = f"soak-{run_id}-{phase}-{index}"
    body = {"prompt": prompt, "negative_prompt": f"blurry, job {index}", "seed": seed, "steps": cfg.steps,
            "width": cfg.size, "height": cfg.size, "cfg_scale": 7, "sampler_name": rng.choice(SAMPLERS),
            "batch_size": batch_size, "force_task_id": task_id,
            "override_settings": {"sd_model_checkpoint": titles[checkpoint]}}
    if kind in ("img2img", "inpaint"):
        body.update(init_images=[_png_b64(_init_image(cfg.size, rng))], denoising_strength=0.6)
        if kind == "inpaint":
            body.update(mask=_png_b64(_mask(cfg.size, rng)), mask_blur=2, inpainting_fill=1,
                        inpaint_full_res=False)
    if kind == "controlnet":
        unit = {"enabled": True, "image": _png_b64(_hint(cfg.size, rng)), "module": rng.choice(("none", "canny")),
                "model": controlnet_title, "weight": 0.9, "resize_mode": "Just Resize", "processor_res": cfg.size,
                "threshold_a": 100, "threshold_b": 200}
        body["alwayson_scripts"] = {"controlnet": {"args": [unit]}}
    return JobSpec(index, phase, kind, checkpoint, seed, prompt, batch_size, task_id, body)


def plan(cfg: SoakConfig, titles: dict[str, str], controlnet_title: str, run_id: str) -> tuple[list, list]:
    """(warm-up jobs, main jobs): kinds in turn, the checkpoint changing every ``switch_every`` main jobs."""
    rng = random.Random(cfg.seed)
    warmup = [make_job(i, "warmup", KINDS[i % len(KINDS)], CHECKPOINTS[(i // len(KINDS)) % len(CHECKPOINTS)],
                       titles, cfg, rng, controlnet_title, run_id) for i in range(cfg.warmup)]
    main = []
    for i in range(cfg.jobs):
        block = i // cfg.switch_every
        job = make_job(i, "main", KINDS[i % len(KINDS)], CHECKPOINTS[block % len(CHECKPOINTS)], titles, cfg,
                       rng, controlnet_title, run_id)
        job.switch = i % cfg.switch_every == 0 and i > 0
        main.append(job)
    return warmup, main


# ------------------------------------------------------------------------------------- checking answers

def check_answer(spec: JobSpec, answer: dict, expected_hash: dict[str, str], size: int) -> list[str]:
    """What is wrong with one 200 answer, against the request it answers (empty: all right)."""
    from webui.jobs import infotext
    problems = []

    def bad(message: str) -> None:
        problems.append(f"{spec.phase} job {spec.index} ({spec.kind}, {spec.task_id}): {message}")

    images = answer.get("images") or []
    try:
        info = json.loads(answer.get("info") or "{}")
    except ValueError:
        bad("info is not JSON")
        return problems
    n = spec.batch_size
    seeds = [spec.seed + k for k in range(n)]
    stem = spec.checkpoint.rsplit(".", 1)[0]
    if len(images) != n:
        bad(f"{len(images)} images, asked for {n}")
    if info.get("task_id") != spec.task_id:
        bad(f"info.task_id {info.get('task_id')!r}")
    if info.get("seed") != spec.seed or info.get("all_seeds") != seeds:
        bad(f"seeds {info.get('seed')} / {info.get('all_seeds')}, asked for {seeds}")
    if info.get("prompt") != spec.prompt or info.get("all_prompts") != [spec.prompt] * n:
        bad(f"prompt {info.get('prompt')!r} / {info.get('all_prompts')!r}")
    if info.get("sd_model_name") != stem or info.get("sd_model_hash") != expected_hash[spec.checkpoint]:
        bad(f"info names model {info.get('sd_model_name')} [{info.get('sd_model_hash')}], asked for "
            f"{stem} [{expected_hash[spec.checkpoint]}]")
    if info.get("warnings"):
        bad(f"warnings {info['warnings']}")
    texts = info.get("infotexts") or []
    if len(texts) != n:
        bad(f"{len(texts)} infotexts, asked for {n} images")
    for k, text in enumerate(texts):
        params = infotext.parse(text)
        where = f"infotext {k}"
        if params.get("Prompt") != spec.prompt:
            bad(f"{where} prompt {params.get('Prompt')!r}")
        if params.get("Seed") != str(seeds[k] if k < n else None):
            bad(f"{where} seed {params.get('Seed')}, expected {seeds[k] if k < n else '-'}")
        if params.get("Model") != stem or params.get("Model hash") != expected_hash[spec.checkpoint]:
            bad(f"{where} model {params.get('Model')} [{params.get('Model hash')}], asked for {stem} "
                f"[{expected_hash[spec.checkpoint]}]")
        if (params.get("Size-1"), params.get("Size-2")) != (str(size), str(size)):
            bad(f"{where} size {params.get('Size-1')}x{params.get('Size-2')}")
        if params.get("Steps") != str(spec.body["steps"]) or params.get("Sampler") != spec.body["sampler_name"]:
            bad(f"{where} steps/sampler {params.get('Steps')} / {params.get('Sampler')}")
        has_lora = "Lora hashes" in params
        if has_lora != (spec.kind == "lora") or (has_lora and not params["Lora hashes"].startswith(f"{LORA}: ")):
            bad(f"{where} Lora hashes {params.get('Lora hashes')!r} for a {spec.kind} job")
        has_cn = "ControlNet 0" in params
        if has_cn != (spec.kind == "controlnet") or (
                has_cn and f"Model: {CONTROLNET} [" not in params["ControlNet 0"]):
            bad(f"{where} ControlNet 0 {params.get('ControlNet 0')!r} for a {spec.kind} job")
        is_img2img = spec.kind in ("img2img", "inpaint")
        if (params.get("Denoising strength") == "0.6") != is_img2img:
            bad(f"{where} denoising strength {params.get('Denoising strength')} for a {spec.kind} job")
        if ("Mask blur" in params) != (spec.kind == "inpaint"):
            bad(f"{where} mask blur {params.get('Mask blur')} for a {spec.kind} job")
    for k, data in enumerate(images):
        try:
            image = Image.open(io.BytesIO(base64.b64decode(data)))
            image.load()
        except Exception as exc:  # noqa: BLE001 (any decoding failure is a violation)
            bad(f"image {k} is not a readable PNG: {exc}")
            continue
        if image.size != (size, size):
            bad(f"image {k} is {image.size}, asked for {size}x{size}")
        if k < len(texts) and image.info.get("parameters") != texts[k]:
            bad(f"image {k}'s parameters chunk is not its infotext")
    return problems


def first_pixels(answer: dict) -> np.ndarray | None:
    images = answer.get("images") or []
    if not images:
        return None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(images[0]))).convert("RGB"), np.int16)


# ------------------------------------------------------------------------------------- running

def read_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssMonitor(threading.Thread):
    """Samples the server's VmRSS every ``every`` seconds with the number of jobs done so far."""

    def __init__(self, pid: int, done, every: float = 1.0):
        super().__init__(daemon=True, name="rss-monitor")
        self.pid, self.done, self.every = pid, done, every
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = read_rss_kb(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - self.started_at, self.done(), rss))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def run_jobs(base: str, jobs: list[JobSpec], clients: int, expected_hash: dict[str, str], titles: dict[str, str],
             size: int, *, keep_pixels: set[str] = frozenset(), on_done=None) -> list[Outcome]:
    """Send ``jobs`` from ``clients`` threads (each its own Session), in order of the list; check each."""
    todo: queue.Queue[JobSpec] = queue.Queue()
    for job in jobs:
        todo.put(job)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        session = requests.Session()
        while True:
            try:
                spec = todo.get_nowait()
            except queue.Empty:
                return
            outcome = Outcome(spec)
            try:
                if spec.switch:                  # webuiapi's util_set_model
                    t0 = time.perf_counter()
                    r = session.post(f"{base}/sdapi/v1/options", json={"sd_model_checkpoint": titles[spec.checkpoint]},
                                     timeout=REQUEST_TIMEOUT_S)
                    with lock:
                        outcomes.append(Outcome(dataclasses.replace(spec, kind="options", phase="switch"),
                                                time.perf_counter() - t0, r.status_code == 200,
                                                error=None if r.status_code == 200 else
                                                f"POST options -> {r.status_code}: {r.text[:300]}"))
                t0 = time.perf_counter()
                r = session.post(f"{base}/sdapi/v1/{spec.route}", json=spec.body, timeout=REQUEST_TIMEOUT_S)
                outcome.latency_s = time.perf_counter() - t0
                if r.status_code != 200:
                    outcome.error = f"{spec.phase} job {spec.index} ({spec.kind}): HTTP {r.status_code}: {r.text[:300]}"
                else:
                    answer = r.json()
                    outcome.violations = check_answer(spec, answer, expected_hash, size)
                    outcome.ok = not outcome.violations
                    if spec.task_id in keep_pixels:
                        outcome.first_pixels = first_pixels(answer)
            except Exception as exc:  # noqa: BLE001 (a lost job, reported)
                outcome.error = f"{spec.phase} job {spec.index} ({spec.kind}): {type(exc).__name__}: {exc}"
            with lock:
                outcomes.append(outcome)
            if on_done is not None:
                on_done()

    threads = [threading.Thread(target=client, args=(c,), name=f"client-{c}") for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def _wait_for_model(base: str, proc, log: Path) -> None:
    deadline = time.monotonic() + MODEL_LOAD_TIMEOUT_S
    while requests.get(f"{base}/sdapi/v1/options", timeout=30).json().get("sd_checkpoint_hash") is None:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the model was not loaded (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def run_soak(cfg: SoakConfig, workdir: Path, log=print) -> SoakReport:
    """Start the server on a fresh data folder under ``workdir``, run warm-up, main run and replays; the report."""
    from tests.app_server import run_app

    report = SoakReport(cfg)
    data = Path(workdir) / "data"
    files = prepare_data_dir(data)
    args = ["--nowebui", "--data-dir", data, "--ckpt", files[CHECKPOINTS[0]]]
    if cfg.threads:
        args += ["--threads", cfg.threads]
    with run_app(*args, log_dir=Path(workdir)) as app:
        base, pid = app.base, app.proc.pid
        _wait_for_model(base, app.proc, app.log)
        report.rss_start_kb = read_rss_kb(pid)
        models = {m["filename"]: m for m in requests.get(f"{base}/sdapi/v1/sd-models", timeout=60).json()}
        missing = [name for name in CHECKPOINTS if name not in models]
        if missing:
            raise RuntimeError(f"checkpoints not listed: {missing}; listed: {sorted(models)}")
        titles = {name: models[name]["title"] for name in CHECKPOINTS}
        expected_hash = {name: models[name]["hash"] for name in CHECKPOINTS}
        cn_titles = requests.get(f"{base}/controlnet/model_list", timeout=60).json()["model_list"]
        controlnet_title = next(t for t in cn_titles if t.startswith(f"{CONTROLNET} ["))
        run_id = f"{int(time.time())}"
        warmup, main = plan(cfg, titles, controlnet_title, run_id)
        report.jobs_planned = len(main)

        done = itertools.count()
        finished = [0]

        def on_done() -> None:
            finished[0] = next(done) + 1

        monitor = RssMonitor(pid, lambda: finished[0])
        monitor.start()
        try:
            log(f"server pid {pid} at {base}; RSS after the model load {_mib(report.rss_start_kb)}; "
                f"warm-up: {len(warmup)} jobs")
            outcomes = run_jobs(base, warmup, cfg.clients, expected_hash, titles, cfg.size)
            for o in outcomes:
                report.errors += [o.error] if o.error else []
                report.violations += o.violations
            report.rss_warm_kb = read_rss_kb(pid)
            log(f"RSS after warm-up {_mib(report.rss_warm_kb)}; main run: {len(main)} jobs from "
                f"{cfg.clients} clients, checkpoint switch every {cfg.switch_every} jobs")

            # one job per (kind, checkpoint) is kept to be replayed afterwards (batch 1 only, for its pixels)
            keep = {}
            for job in main:
                if job.batch_size == 1:
                    keep.setdefault((job.kind, job.checkpoint), job)
            keep_ids = {job.task_id for job in keep.values()} if cfg.replay else set()
            t0 = time.perf_counter()
            outcomes = run_jobs(base, main, cfg.clients, expected_hash, titles, cfg.size, keep_pixels=keep_ids,
                                on_done=on_done)
            report.wall_s = time.perf_counter() - t0
            by_id = {}
            for o in outcomes:
                report.errors += [o.error] if o.error else []
                report.violations += o.violations
                if o.spec.phase == "switch":
                    report.model_switches += 1
                    if o.ok:
                        report.latencies.setdefault("options", []).append(o.latency_s)
                    continue
                by_id[o.spec.task_id] = o
                if o.ok:
                    report.jobs_ok += 1
                    report.latencies.setdefault(o.spec.kind, []).append(o.latency_s)
            lost = [j.task_id for j in main if j.task_id not in by_id]
            if lost:
                report.errors.append(f"{len(lost)} jobs without an answer: {lost[:10]}")

            if cfg.replay:
                replays = []
                for job in keep.values():
                    if by_id.get(job.task_id) is None or by_id[job.task_id].first_pixels is None:
                        continue
                    again = dataclasses.replace(job, phase="replay", task_id=job.task_id + "-replay",
                                                body={**job.body, "force_task_id": job.task_id + "-replay"},
                                                switch=False)
                    replays.append(again)
                log(f"replay: {len(replays)} jobs (one per kind and checkpoint), concurrently")
                replay_out = run_jobs(base, replays, cfg.clients, expected_hash, titles, cfg.size,
                                      keep_pixels={j.task_id for j in replays})
                for o in replay_out:
                    report.errors += [o.error] if o.error else []
                    report.violations += o.violations
                    original = by_id[o.spec.task_id.removesuffix("-replay")].first_pixels
                    if o.first_pixels is None:
                        continue
                    report.replays += 1
                    diff = int(np.abs(o.first_pixels - original).max())
                    report.replay_max_diff = max(report.replay_max_diff, diff)
                    if diff:
                        report.violations.append(
                            f"replay of main job {o.spec.index} ({o.spec.kind}, {o.spec.checkpoint}): pixels "
                            f"differ from the first answer by up to {diff}/255")
            report.rss_end_kb = read_rss_kb(pid)
        finally:
            monitor.stop()
        report.rss_samples = monitor.samples
        report.rss_peak_kb = max((s[2] for s in monitor.samples), default=None)
        if app.proc.poll() is not None:
            report.errors.append(f"the server exited with {app.proc.returncode}")
        text = app.log.read_text(errors="replace")
        report.server_tracebacks = text.count("Traceback (most recent call last)")
    growth = report.rss_growth
    if cfg.max_rss_growth is not None and (growth is None or growth > cfg.max_rss_growth):
        report.rss_problem = (f"server RSS grew {growth * 100:+.1f} % (limit {cfg.max_rss_growth * 100:.0f} %)"
                              if growth is not None else "server RSS could not be read")
    return report


# ------------------------------------------------------------------------------------- reporting

def _mib(kb: int | None) -> str:
    return f"{kb / 1024:.1f} MiB" if kb else "n/a"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    return float(np.percentile(np.asarray(values, float), q))


def summary(report: SoakReport) -> str:
    cfg = report.config
    rate = report.jobs_ok / report.wall_s if report.wall_s else 0.0
    lines = [(f"soak: {report.jobs_ok}/{report.jobs_planned} jobs verified, {cfg.clients} clients, "
              f"{cfg.size}x{cfg.size}, {cfg.steps} steps, checkpoint switch every {cfg.switch_every} jobs "
              f"({report.model_switches} POST options switches), {len(report.errors)} errors, "
              f"{len(report.violations)} violations"),
             (f"main run {report.wall_s:.1f} s, {rate:.2f} jobs/s; replays {report.replays} (max pixel diff "
              f"{report.replay_max_diff}); server tracebacks {report.server_tracebacks}"), ""]
    lines.append("| kind | n | p50 (s) | p95 (s) | max (s) |")
    lines.append("|---|---:|---:|---:|---:|")
    for kind in (*KINDS, "options"):
        values = report.latencies.get(kind)
        if values:
            lines.append(f"| {kind} | {len(values)} | {percentile(values, 50):.2f} | {percentile(values, 95):.2f} | "
                         f"{max(values):.2f} |")
    everything = [v for k, vs in report.latencies.items() if k != "options" for v in vs]
    if everything:
        lines.append(f"| all jobs | {len(everything)} | {percentile(everything, 50):.2f} | "
                     f"{percentile(everything, 95):.2f} | {max(everything):.2f} |")
    lines.append("")

    mib = _mib
    growth = report.rss_growth
    lines.append(f"server RSS: after model load {mib(report.rss_start_kb)}, after warm-up {mib(report.rss_warm_kb)}, "
                 f"end {mib(report.rss_end_kb)} ({'n/a' if growth is None else f'{growth * 100:+.1f} %'}; "
                 f"limit {'none' if cfg.max_rss_growth is None else f'{cfg.max_rss_growth * 100:.0f} %'}), "
                 f"peak {mib(report.rss_peak_kb)}")
    main = [s for s in report.rss_samples if s[1] > 0]
    if main:
        marks = []
        for q in (0.25, 0.5, 0.75, 1.0):
            target = max(1, round(q * report.jobs_planned))
            sample = next((s for s in main if s[1] >= target), main[-1])
            marks.append(f"{sample[1]} jobs: {mib(sample[2])}")
        lines.append("RSS during the main run: " + ", ".join(marks))
    if report.rss_problem:
        lines.append("RSS: " + report.rss_problem)
    for title, items in (("errors", report.errors), ("violations", report.violations)):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  - {item}" for item in items[:30]]
            if len(items) > 30:
                lines.append(f"  ... and {len(items) - 30} more")
    lines.append("RESULT: " + ("FAIL" if report.failed else "OK"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="width and height (multiple of 8)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--switch-every", type=int, default=20, help="jobs per checkpoint block")
    p.add_argument("--warmup", type=int, default=20, help="jobs before the RSS baseline")
    p.add_argument("--no-replay", action="store_true", help="skip the same-pixels replays")
    p.add_argument("--max-rss-growth", type=float, default=10.0, help="percent; negative: report only")
    p.add_argument("--seed", type=int, default=1234, help="of the job mix")
    p.add_argument("--threads", type=int, default=0, help="the server's --threads (0: torch's choice)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the data folder and server.log here")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    a = p.parse_args(argv)
    cfg = SoakConfig(jobs=a.jobs, clients=a.clients, size=a.size, steps=a.steps, switch_every=a.switch_every,
                     warmup=a.warmup, replay=not a.no_replay,
                     max_rss_growth=None if a.max_rss_growth < 0 else a.max_rss_growth / 100, seed=a.seed,
                     threads=a.threads)
    if a.workdir is not None:
        a.workdir.mkdir(parents=True, exist_ok=True)
        report = run_soak(cfg, a.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            report = run_soak(cfg, Path(tmp))
    print(summary(report))
    if a.json is not None:
        figures = {k: v for k, v in dataclasses.asdict(report).items() if k != "rss_samples"}
        figures["latency"] = {k: {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95)}
                              for k, v in report.latencies.items()}
        figures["rss_growth"] = report.rss_growth
        a.json.write_text(json.dumps(figures, indent=1, default=str))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
