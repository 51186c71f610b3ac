"""Fuzz the parsers of untrusted input for a fixed budget: atheris (coverage-guided, libFuzzer) when it is
installed, else a plain random-mutation loop over the same seed corpus.

    .venv/bin/python tests/fuzz/fuzz_parsers.py --target all --runs 20000
    .venv/bin/python tests/fuzz/fuzz_parsers.py --target infotext --seconds 60
    .venv/bin/python tests/fuzz/fuzz_parsers.py --target model --runs 5000 --no-atheris

Targets (``tests/fuzz/targets.py`` says what each calls and what it may raise): prompt, infotext, model,
embedding, lora, styles, image. An input breaks the property when the parser raises anything but its own
error, leaves a file behind, runs past ``--timeout`` seconds or grows the process's peak memory by more than
``--rss-growth-mb``. atheris stops a target at its first failure (libFuzzer writes the input under
``--artifacts``); the fallback loop goes on and lists every distinct failure. Extra arguments after ``--`` go
to libFuzzer. Not a test module (no ``test_`` name): pytest does not collect it.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = ("prompt", "infotext", "model", "embedding", "lora", "styles", "image")
TEXT_TOKENS = {"prompt": "PROMPT_TOKENS", "infotext": "INFOTEXT_TOKENS"}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", default="all", choices=TARGETS + ("all",))
    p.add_argument("--runs", type=int, default=None, help="executions per target (default 2000 without --seconds)")
    p.add_argument("--seconds", type=float, default=None, help="time budget per target")
    p.add_argument("--no-atheris", action="store_true", help="use the plain mutation loop even if atheris is here")
    p.add_argument("--seed", type=int, default=0, help="random seed of the mutation loop")
    p.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    p.add_argument("--rss-growth-mb", type=int, default=1024, help="peak memory growth that counts as a failure")
    p.add_argument("--artifacts", default=None, help="where inputs that fail are written (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the per-target results to this file")
    p.add_argument("libfuzzer", nargs="*", help="after --: more libFuzzer arguments")
    args = p.parse_args(argv)
    if args.runs is None and args.seconds is None:
        args.runs = 2000
    return args


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------ driver

def main(argv=None) -> int:
    args = _args(argv)
    use_atheris = _have_atheris() and not args.no_atheris
    artifacts = Path(args.artifacts or tempfile.mkdtemp(prefix="fuzz-artifacts-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    targets = TARGETS if args.target == "all" else (args.target,)
    results = {}
    for target in targets:
        if use_atheris:
            results[target] = _atheris_in_subprocess(target, args, artifacts)
        else:
            results[target] = mutation_loop(target, args, artifacts)
        r = results[target]
        print(f"[{target}] {r['engine']}: {r['executions']} executions in {r['seconds']:.1f} s, "
              f"{len(r['failures'])} failure(s)", flush=True)
        for failure in r["failures"]:
            print(f"    {failure}", flush=True)
    print(f"\nengine: {'atheris' if use_atheris else 'mutation loop (no atheris)'}; artifacts in {artifacts}")
    print(f"{'target':<10} {'executions':>11} {'seconds':>8}  failures")
    for target, r in results.items():
        print(f"{target:<10} {r['executions']:>11} {r['seconds']:>8.1f}  {len(r['failures'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if any(r["failures"] for r in results.values()) else 0


# ------------------------------------------------------------------------------------------ atheris

def _atheris_in_subprocess(target: str, args, artifacts: Path) -> dict:
    """One target per process (libFuzzer exits when done): run ourselves with ``--atheris-child``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--atheris-child", target, "--timeout", str(args.timeout)]
    if args.runs is not None:
        cmd += ["--runs", str(args.runs)]
    if args.seconds is not None:
        cmd += ["--seconds", str(args.seconds)]
    cmd += ["--artifacts", str(artifacts), "--", *args.libfuzzer]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    (artifacts / f"{target}.log").write_text(log)
    done = re.findall(r"Done (\d+)(?: runs)? in (\d+) second", log)
    counts = re.findall(r"^#(\d+)\s", log, re.M)
    executions = int(done[-1][0]) if done else int(counts[-1]) if counts else 0
    failures = []
    # (a run that completed may still end on a signal while the interpreter shuts down: that is no failure)
    broke = "ERROR: libFuzzer" in log or "Uncaught Python exception" in log
    if broke or (proc.returncode != 0 and not done):
        kind = re.search(r"==\d+== ERROR: libFuzzer: (.*)|=== Uncaught Python exception: ===\n(.*)", log)
        what = next((g for g in kind.groups() if g), "").strip() if kind else f"exit code {proc.returncode}"
        crash = re.search(r"(?:Test unit written to|artifact_prefix='[^']*'; Test unit written to) (\S+)", log)
        failures.append(f"{what} (input: {crash.group(1) if crash else 'not written'}; log: {artifacts / (target + '.log')})")
    return {"engine": "atheris", "executions": executions, "seconds": seconds, "failures": failures}


def _atheris_child(target: str, argv: list[str]) -> None:
    import atheris

    args = _args(argv)
    with atheris.instrument_imports(include=["webui", "extensions", "tests.fuzz.targets"]):
        import extensions.lora.formats  # noqa: F401  (imported lazily by the targets: instrument them now)
        import webui.api.routes  # noqa: F401
        import webui.engine.checkpoint  # noqa: F401
        from tests.fuzz import targets as T

    sandbox = T.Sandbox()
    corpus = Path(args.artifacts) / f"corpus-{target}"      # (libFuzzer adds the inputs it finds interesting)
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(T.seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    if target == "lora":
        T.lora_model()
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

    def one_input(data: bytes) -> None:
        T.run_bytes(target, data, sandbox)

    lf = [sys.argv[0], str(corpus), f"-timeout={args.timeout}", f"-rss_limit_mb={rss_base + args.rss_growth_mb}",
          f"-artifact_prefix={args.artifacts}/{target}-", "-print_final_stats=1"]
    if args.runs is not None:
        lf.append(f"-atheris_runs={args.runs}")
    if args.seconds is not None:
        lf.append(f"-max_total_time={int(args.seconds)}")
    atheris.Setup(lf + args.libfuzzer, one_input)
    atheris.Fuzz()


# ------------------------------------------------------------------------------------------ fallback

class _Timeout(BaseException):
    """Raised by SIGALRM in the middle of a slow input (a BaseException: no parser's except catches it)."""


def _alarm(signum, frame):
    raise _Timeout


def mutate(data: bytes, rng: random.Random, corpus: list[bytes], tokens: tuple[str, ...] | None) -> bytes:
    """1-8 random byte-level changes, splices with the corpus, and (text targets) grammar pieces."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        i = rng.randint(0, len(out))
        if op == 0 and out:
            j = min(i, len(out) - 1)
            out[j] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(i, len(out) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x22, 0x7B, 0x39, 0x3A, 0x5B))
        elif op == 2:
            out[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del out[i:i + rng.randint(1, 32)]
        elif op == 4:
            out[i:i] = out[i:i + rng.randint(1, 256)] * rng.randint(1, 4)
        elif op == 5:
            other = rng.choice(corpus)
            k = rng.randint(0, len(other))
            out[i:] = other[k:k + rng.randint(1, 512)]
        elif op == 6 and tokens:
            out[i:i] = rng.choice(tokens).encode("utf-8")[:64]
        elif op == 7:
            n = rng.randrange(2**rng.choice((8, 16, 32, 63)))
            out[i:i] = str(n).encode() if rng.random() < 0.5 else n.to_bytes(8, "little")
        elif op == 8 and len(out) > 1:
            del out[rng.randint(1, len(out)):]
    if out and rng.random() < 0.2:
        out[0] = rng.randrange(256)           # the mode byte: another suffix / encoding / text form
    return bytes(out)


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)
                  if "/site-packages/" not in f.filename), "?")
    return f"{type(exc).__name__} at {where}"


def mutation_loop(target: str, args, artifacts: Path) -> dict:
    """Random mutations of the seeds (inputs with a new outcome join the corpus); every distinct failure."""
    from tests.fuzz import targets as T

    rng = random.Random(f"{args.seed}-{target}")
    corpus = T.seeds(target)
    tokens = getattr(T, TEXT_TOKENS[target]) if target in TEXT_TOKENS else None
    sandbox = T.Sandbox()
    if target == "lora":
        T.lora_model()
    T.run_bytes(target, corpus[0], sandbox)    # imports and first-use setup before measuring memory
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seen_outcomes: set[str] = set()
    failures: dict[str, str] = {}
    executions = 0
    old = signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    try:
        while True:
            if args.runs is not None and executions >= args.runs:
                break
            if args.seconds is not None and time.perf_counter() - start >= args.seconds:
                break
            data = mutate(rng.choice(corpus), rng, corpus, tokens) if executions >= len(corpus) else corpus[executions]
            executions += 1
            signal.alarm(args.timeout)
            try:
                T.run_bytes(target, data, sandbox)
                outcome = "ok"
            except _Timeout:
                outcome = failure = f"timeout (> {args.timeout} s)"
            except Exception as exc:  # noqa: BLE001 - a property violation: recorded, the loop goes on
                outcome = failure = f"{_signature(exc)}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            finally:
                signal.alarm(0)
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_base
            if outcome == "ok" and grown > args.rss_growth_mb:
                outcome = failure = f"peak memory grew by {grown:.0f} MiB"
                rss_base += grown
            if outcome != "ok":
                key = failure.split(":")[0] if not failure.startswith(("timeout", "peak")) else failure[:20]
                if key not in failures:
                    failures[key] = failure
                    name = f"{target}-{len(failures)}.bin"
                    (artifacts / name).write_bytes(data)
                    failures[key] += f" (input: {artifacts / name})"
            shape = re.sub(r"\d+", "N", outcome)[:80]
            if shape not in seen_outcomes and len(corpus) < 2000:
                seen_outcomes.add(shape)
                corpus.append(data)
            elif rng.random() < 0.01 and len(corpus) < 2000:
                corpus.append(data)
    finally:
        signal.signal(signal.SIGALRM, old)
        sandbox.close()
    return {"engine": "mutation loop", "executions": executions, "seconds": time.perf_counter() - start,
            "failures": list(failures.values())}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--atheris-child":
        _atheris_child(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
