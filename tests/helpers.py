"""Helpers the tests share (fixtures are in ``conftest.py``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from webui.engine.request import GenerationRequest
from webui.jobs.spec import JobSpec


def submit(backend, request: GenerationRequest, kind: str = "txt2img", *, job_id: str | None = None, **choices):
    """Queue a request built in code the way every interface does: ``backend.requests.job`` (the one validation
    path; ``choices``: checkpoint, vae, styles, script, extension_args, save, owner ...), then ``backend.submit``."""
    return backend.submit(backend.requests.job(request, kind, **choices), job_id=job_id)


@dataclass(frozen=True)
class WorkSpec(JobSpec):
    """A job whose work is a function, for the queue's own tests (``run_work`` is their executor)."""
    work: Callable | None = None


def run_work(spec: WorkSpec, job):
    return spec.work(job)


def make_engine(path, precision: str = "full", **options):
    """A CPU ``Engine`` (``precision``: "full" = fp32; ``options``: the engine's keywords) with ``path`` loaded;
    the ``make_engine`` fixture of ``conftest.py``."""
    from webui.engine.residency import Engine

    engine = Engine("cpu", precision, **options)
    engine.load(path)
    return engine
