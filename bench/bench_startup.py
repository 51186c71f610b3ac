"""Start-up times, measured (the tests only check that things start, with deadlines against a hang).

    .venv/bin/python bench/bench_startup.py [--rounds 3] [--ckpt models/checkpoints/webui-demo-64px.safetensors]

Per round, each in a fresh process:
- tokenizer: ``webui.engine.text.load_tokenizer()`` (the SD1 CLIP tokenizer built from the shipped vocabulary),
  timed inside the process, imports excluded;
- server ready: ``python app.py --api --data-dir <empty temp folder>`` started as ``tests/app_server.py`` starts it
  (UI and API on one port), from the process start to its "Running on" line (what a user waits for to open the
  page);
- model loaded: from the process start until ``/sdapi/v1/options`` reports a checkpoint hash (the model loads in
  the background after the "Running on" line).

Prints one JSON line per round and a table with the median and the best of the rounds. A busy machine shows up as
slow rounds: compare best values, and the 1-minute load average printed with each round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TOKENIZER_SNIPPET = """
import json, time
from webui.engine import text
start = time.perf_counter()
text.load_tokenizer()
print(json.dumps({"tokenizer_s": time.perf_counter() - start}))
"""


def tokenizer_seconds() -> float:
    out = subprocess.run([sys.executable, "-c", TOKENIZER_SNIPPET], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])["tokenizer_s"]


def server_seconds(ckpt: Path | None, timeout: float) -> tuple[float, float]:
    """(seconds to the "Running on" line, seconds until the model is loaded), both from the process start."""
    from tests.app_server import run_app

    extra = ["--ckpt", ckpt] if ckpt else []
    with tempfile.TemporaryDirectory() as folder, run_app("--api", "--data-dir", folder, *extra,
                                                          log_dir=Path(folder), timeout=timeout) as app:
        started = time.perf_counter() - app.ready_s          # the process start, on this clock
        deadline = time.monotonic() + timeout
        while True:
            with urllib.request.urlopen(f"{app.base}/sdapi/v1/options", timeout=30) as answer:
                if json.load(answer).get("sd_checkpoint_hash") is not None:
                    return app.ready_s, time.perf_counter() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"the model was not loaded within {timeout} s:\n{app.log.read_text()}")
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint to load (default: the app's choice)")
    parser.add_argument("--timeout", type=float, default=300, help="give up on a start after this many seconds")
    args = parser.parse_args()
    rows = []
    for n in range(args.rounds):
        load = os.getloadavg()[0]
        tokenizer = tokenizer_seconds()
        ready, loaded = server_seconds(args.ckpt, args.timeout)
        row = {"round": n + 1, "load_avg_1m": round(load, 2), "tokenizer_s": round(tokenizer, 3),
               "server_ready_s": round(ready, 2), "model_loaded_s": round(loaded, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n| {'metric':<16} | median | best |\n|{'-' * 18}|--------|------|")
    for key in ("tokenizer_s", "server_ready_s", "model_loaded_s"):
        values = [r[key] for r in rows]
        print(f"| {key:<16} | {statistics.median(values):6.2f} | {min(values):4.2f} |")


if __name__ == "__main__":
    main()
