"""Run ``python app.py`` (the web UI / API server) as a user would, on a free port, for a test.

``run_app`` starts and stops the process; ``serve`` (behind the ``app_server`` fixture of ``conftest.py``) adds
the data folder, a ``requests.Session`` (with the API login, if any) and the wait for the model."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
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


@dataclass
class AppServer:
    """A started ``python app.py``: what the tests use of it. ``server["name"]`` reads an attribute or one of
    the ``extra`` values the module gave ``serve``."""
    app: RunningApp
    data: Path
    session: object                 # a requests.Session, logged in to the API when ``serve`` had ``auth``
    extra: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.app.base

    @property
    def url(self) -> str:
        return self.app.base + "/"

    @property
    def port(self) -> int:
        return self.app.port

    @property
    def proc(self) -> subprocess.Popen:
        return self.app.proc

    @property
    def log(self) -> Path:
        return self.app.log

    def __getitem__(self, name: str):
        if name in self.extra:
            return self.extra[name]
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None


@contextlib.contextmanager
def serve(*flags, data: Path, auth: tuple[str, str] | None = None, wait_model: float | None = None,
          **extra):
    """``python app.py *flags --data-dir data`` (its log in ``data/server.log``), with a ``requests.Session``
    (basic ``auth`` for ``--api-auth``); ``wait_model``: seconds to wait for the model to load (``wait_for_model``
    through that session), None not to wait. ``extra``: values the tests read as ``server[name]``."""
    import requests

    with run_app(*flags, "--data-dir", data, log_dir=data) as app:
        session = requests.Session()
        if auth is not None:
            session.auth = auth
        if wait_model is not None:
            wait_for_model(app, session, wait_model)
        yield AppServer(app, data, session, extra)
