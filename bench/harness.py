"""What the benchmarks share: measurements inside a child process, running each side in a fresh one on a
quiet machine, and the table of best values with ratios.

A benchmark script runs itself with ``--child <side> ...``; the child measures and prints one
``RESULT {json}`` line (``report``); the driver (``run_side``) starts it, waits for idle CPUs first and
reads that line back.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- in the child process

def rss_gb() -> float:
    """Peak resident set so far (``ru_maxrss``), GB = 1e9 bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def rss_now_gb() -> float:
    """Current resident set (VmRSS), unlike ``rss_gb``, which is the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError):
        return float("nan")


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def report(**values) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def image_stats(images) -> dict:
    """Spread of the first image's pixels (not a flat picture) and whether both runs drew the same."""
    import torch
    pixels = [list(image.getdata()) for image in images]
    return {"image_std": float(torch.tensor(pixels[0], dtype=torch.float32).std()),
            "same_twice": pixels[0] == pixels[1]}


# ------------------------------------------------------------------------------------------- driver

def warm_page_cache(path: Path) -> None:
    """Read the file once so both sides start from the same (warm) page cache."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval`` seconds (Linux /proc/stat; 0 elsewhere)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]
    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_idle(max_wait: float) -> None:
    """On a shared machine, wait (up to ``max_wait`` s) until other processes leave the CPUs idle."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        if cpu_busy() < 0.1 and cpu_busy() < 0.1:
            return
    if max_wait > 0:
        print(f"[bench] CPUs still busy after {max_wait:.0f}s of waiting; timings may be inflated", flush=True)


def run_side(script: str, side: str, file: Path, child_args: list[str], threads: int,
             idle_wait: float = 120.0) -> dict:
    """Run ``script --child side --file file --threads N *child_args`` in a fresh process; its RESULT."""
    warm_page_cache(file)
    wait_for_idle(idle_wait)
    cmd = [sys.executable, str(Path(script).resolve()), "--child", side, "--file", str(file),
           "--threads", str(threads), *child_args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"[bench] running {side} ...", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{side} child failed with exit code {proc.returncode}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"[bench] {side}: {json.dumps(result)}", flush=True)
    return result


def best(results: list[dict], rows) -> dict | None:
    """Per metric, the best (smallest) value over the rounds: the machine is shared, noise only adds time."""
    if not results:
        return None
    for r in results:
        r["import_load_s"] = r["import_s"] + r["load_s"]
    return {key: min(r[key] for r in results) for _, key in rows}


def table(ours: dict | None, ref: dict | None, rows) -> str:
    out = ["| metric | ours | diffusers | ours / diffusers |", "|---|---:|---:|---:|"]
    for label, key in rows:
        a = f"{ours[key]:.2f}" if ours else "-"
        b = f"{ref[key]:.2f}" if ref else "-"
        ratio = f"{ours[key] / ref[key]:.2f}" if ours and ref and ref[key] else "-"
        out.append(f"| {label} | {a} | {b} | {ratio} |")
    return "\n".join(out)
