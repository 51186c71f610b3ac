"""One queue for every job that uses the device: generations from any browser, the API and the command line,
and model loads. A single worker thread runs them one at a time, in arrival order.

What is queued is a value (``spec.JobSpec``); ``run(spec, job)`` -- the executor -- runs it. Each ``Job`` is that
value with its runtime state: its own ``JobControl`` (so an interrupt reaches only that job), its progress
(step, ETA, live preview, reported by the executor through ``Job.report``) and, when it ends, its result or its
error. A job that raises is marked failed with the message; the worker goes on with the next one.

With a ``TaskStore`` every job's record is also written to disk as it changes, with the job's value for
resumable (API) tasks; ``recover`` at start-up resubmits the queued tasks that carry one, marks the one that was
running failed (the process died under it) and keeps answering for finished ones.
"""
from __future__ import annotations

import itertools
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..engine.control import Interrupted, JobControl
from .spec import JobSpec
from .store import TaskRecord, TaskStore

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
HISTORY = 256  # finished jobs kept for status queries


class DuplicateJobId(ValueError):
    """``submit`` was given a ``job_id`` the queue already holds."""


@dataclass
class JobProgress:
    step: int = 0                  # steps done over the whole job
    total: int = 0                 # steps in the whole job
    text: str = ""                 # e.g. "Batch 2/3"
    preview: Any = None            # a PIL image, refreshed every N steps
    preview_step: int = 0          # `step` when the preview was made (clients fetch only new ones)
    batch: int = 0                 # the batch running now (from 0), of ``batches``
    batches: int = 0
    batch_step: int = 0            # steps done in this batch, of ``batch_total``
    batch_total: int = 0

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


@dataclass
class Job:
    id: str
    spec: JobSpec | None = field(repr=False)      # None for a finished task known from the store only
    created: float = field(default_factory=time.time)
    state: str = QUEUED
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    control: JobControl = field(default_factory=JobControl, repr=False)
    progress: JobProgress = field(default_factory=JobProgress)
    saved: dict | None = None      # a finished task's summary (``summarize``: its files and infotexts), also stored
    kind: str = ""
    owner: str | None = None
    watchers: list[Callable[[JobProgress], None]] = field(default_factory=list, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        if self.spec is not None:
            self.kind, self.owner = self.spec.kind, self.spec.owner

    def report(self, *, preview=None, **fields) -> None:
        """From the executor: progress (``JobProgress``'s fields) and, every N steps, a live preview."""
        p = self.progress
        for name, value in fields.items():
            setattr(p, name, value)
        if preview is not None:
            p.preview, p.preview_step = preview, p.step
        for watch in self.watchers:
            watch(p)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or ``timeout`` passed (False)."""
        return self._done.wait(timeout)

    @property
    def eta(self) -> float | None:
        """Seconds left, from the time per step so far (None before the first step)."""
        if self.state != RUNNING or not self.progress.step or self.started is None:
            return None
        elapsed = time.time() - self.started
        return elapsed / self.progress.fraction - elapsed


class JobQueue:
    """Runs submitted jobs one at a time on a worker thread, in arrival order."""

    def __init__(self, run: Callable[[JobSpec, Job], Any], store: TaskStore | None = None,
                 summarize: Callable[[Any], dict | None] | None = None, *, tracebacks: bool = True) -> None:
        """``run(spec, job)``: the executor; ``store``: where task records go (None: memory only);
        ``summarize(result)``: what of a finished job's result its record keeps (files, infotexts);
        ``tracebacks``: print a failing job's traceback (the server's log; the command line says the error)."""
        self._run, self.store, self._summarize, self._tracebacks = run, store, summarize, tracebacks
        self._lock = threading.Condition()
        self._pending: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._counter = itertools.count(1)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._worker, name="job-queue", daemon=True)
                self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Cancel queued jobs, interrupt the running one and end the worker."""
        with self._lock:
            self._stopping = True
            while self._pending:
                self._finish(self._pending.popleft(), CANCELLED)
            if self._running is not None:
                self._running.control.interrupt()
            self._lock.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    # ---- submitting and asking -------------------------------------------------------------
    def submit(self, spec: JobSpec, *, job_id: str | None = None, resumed: bool = False,
               watch: Callable[[JobProgress], None] | None = None) -> Job:
        """Queue ``spec``; ``job_id`` (e.g. A1111's ``force_task_id``) must be new (also to the store, unless
        ``resumed``: a stored task submitted again). A resumable spec is kept in the store so that the task can
        be submitted again after a restart. ``watch(progress)``: called on each progress report."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("the job queue is shutting down")
            given = job_id is not None and not resumed
            job_id = job_id or f"{next(self._counter)}-{uuid.uuid4().hex[:12]}"
            if job_id in self._jobs or (given and self.store is not None and self.store.get(job_id)):
                raise DuplicateJobId(f"a job with id {job_id!r} already exists")
            job = Job(job_id, spec, watchers=[watch] if watch is not None else [])
            if self.store is not None:
                payload = spec.to_json() if spec.resumable else None
                self.store.add(TaskRecord(job.id, spec.kind, spec.owner, QUEUED, job.created, payload=payload))
            self._jobs[job_id] = job
            self._pending.append(job)
            self._trim()
            self._lock.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        """The job, or for one that finished before a restart (or left the in-memory history) a finished
        ``Job`` made from its stored record (``saved``: its files and infotexts)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None or self.store is None:
            return job
        record = self.store.get(job_id)
        if record is None:
            return None
        job = Job(record.id, None, created=record.created, state=record.state, started=record.started,
                  finished=record.finished, error=record.error, saved=record.result, kind=record.kind,
                  owner=record.owner)
        if record.state in FINISHED:
            job._done.set()
        return job

    def recover(self, resume: Callable[[TaskRecord], Any]) -> dict[str, int]:
        """At start-up, before ``start``: the stored tasks that did not finish. The one that was running is
        marked failed (the process stopped under it); queued ones with a stored job value go to
        ``resume(record)`` (which submits them again with ``resumed=True``), in their order; others are cancelled
        with the reason. Returns how many of each."""
        counts = {"failed": 0, "resumed": 0, "cancelled": 0}
        if self.store is None:
            return counts
        for record in self.store.unfinished():
            with self._lock:
                if record.id in self._jobs:        # submitted in this run (the start-up model load)
                    continue
            when = time.time()
            if record.state == RUNNING:
                self.store.finished(record.id, FAILED, when, "interrupted: the server stopped while this task "
                                    "ran; it was not run again")
                counts["failed"] += 1
            elif record.payload is None:
                self.store.finished(record.id, CANCELLED, when, "not resumed after a restart (only API "
                                    "generations are: a page's job ends with its page)")
                counts["cancelled"] += 1
            else:
                try:
                    resume(record)
                    counts["resumed"] += 1
                except Exception as exc:      # the model is gone, the request no longer valid ...
                    self.store.finished(record.id, FAILED, when, f"could not be resumed after a restart: {exc}")
                    counts["failed"] += 1
        return counts

    @property
    def running(self) -> Job | None:
        return self._running

    def position(self, job: Job) -> int:
        """How many jobs run before this one: 0 when it is running or finished."""
        with self._lock:
            if job.state != QUEUED:
                return 0
            ahead = next((i for i, j in enumerate(self._pending) if j is job), len(self._pending))
            return ahead + (self._running is not None)

    def pending(self) -> list[Job]:
        with self._lock:
            return list(self._pending)

    # ---- stopping jobs ---------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Take a queued job off the queue (True), or interrupt it if it runs (True); False if done/unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state in FINISHED:
                return False
            if job.state == QUEUED:
                self._pending.remove(job)
                self._finish(job, CANCELLED)
                return True
            job.control.interrupt()
            return True

    def interrupt(self, job_id: str) -> bool:
        return self.cancel(job_id)

    def skip(self, job_id: str) -> bool:
        """Skip the running job's current batch (A1111's Skip)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != RUNNING:
                return False
            job.control.skip()
            return True

    def jobs_of(self, owner: str) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.owner == owner and j.state not in FINISHED]

    # ---- the worker ------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                job.state, job.started = RUNNING, time.time()
                self._running = job
                if self.store is not None:
                    self.store.started(job.id, job.started)
            try:
                result = self._run(job.spec, job)
            except Interrupted:
                with self._lock:
                    job.error = "interrupted"
                    self._finish(job, CANCELLED)
            except Exception as exc:  # a failing job is reported to its owner; the queue goes on
                if self._tracebacks:
                    traceback.print_exc()
                with self._lock:
                    job.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    self._finish(job, FAILED)
            else:
                with self._lock:
                    job.result = result
                    self._finish(job, DONE)
            finally:
                with self._lock:
                    self._running = None

    def _finish(self, job: Job, state: str) -> None:
        if state == DONE and self._summarize is not None:   # before the state: a DONE job has its summary
            try:
                job.saved = self._summarize(job.result)
            except Exception as exc:           # a record without its summary; the job stays done
                job.saved = {"error": f"{type(exc).__name__}: {exc}"}
        job.state, job.finished = state, time.time()
        job.spec = None   # drop the images of the request (the result stays for its client)
        if self.store is not None:
            self.store.finished(job.id, state, job.finished, job.error, job.saved)
        job._done.set()

    def _trim(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in FINISHED]
        for key in finished[:max(0, len(finished) - HISTORY)]:
            del self._jobs[key]
