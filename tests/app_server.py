"""Run ``python app.py`` (the web UI / API server) as a user would, on a free port, for a test."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningApp:
    port: int
    proc: subprocess.Popen
    log: Path
    ready_s: float          # from the process start to the "Running on" line

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_app(*args: str, log_dir: Path, timeout: float = 120):
    """Start ``python app.py *args --port <free>``, wait for its "Running on" line, stop it afterwards."""
    port = free_port()
    log_path = log_dir / "server.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py", *map(str, args), "--port", str(port)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while "Running on" not in log_path.read_text():
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("server did not start: " + log_path.read_text())
                time.sleep(0.2)
            yield RunningApp(port, proc, log_path, time.perf_counter() - started)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for_model(app: RunningApp, session=None, timeout: float = 180) -> None:
    """Poll ``/sdapi/v1/options`` (through ``session``, e.g. one with the API login) until it reports a loaded
    checkpoint: the model loads in the background after the "Running on" line. ``timeout`` is a deadline against
    a hang, not a speed claim; past it, or when the server exits, the test fails with the server's log."""
    import pytest
    import requests

    get = (session or requests).get
    deadline = time.monotonic() + timeout
    while get(f"{app.base}/sdapi/v1/options", timeout=30).json().get("sd_checkpoint_hash") is None:
        if time.monotonic() > deadline or app.proc.poll() is not None:
            pytest.fail(f"the model was not loaded {timeout:g} s after the server started (server exit code: "
                        f"{app.proc.poll()}); server log:\n{app.log.read_text()}")
        time.sleep(0.2)
