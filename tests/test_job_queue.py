"""webui/jobs/queue.py: one worker, arrival order, per-job control, failures isolated."""
from __future__ import annotations

import threading
import time

import pytest

from tests.helpers import WorkSpec, run_work
from webui.engine.control import Interrupted
from webui.jobs.queue import CANCELLED, DONE, FAILED, JobQueue


def work(fn, kind: str = "txt2img", owner: str | None = None) -> WorkSpec:
    return WorkSpec(kind, owner=owner, work=fn)


@pytest.fixture
def queue():
    q = JobQueue(run_work)
    q.start()
    yield q
    q.stop()


def test_jobs_run_one_at_a_time_in_arrival_order(queue):
    order, active, overlap = [], [0], []
    lock = threading.Lock()

    def named(name):
        def run(job):
            with lock:
                active[0] += 1
                overlap.append(active[0])
            time.sleep(0.02)
            order.append(name)
            with lock:
                active[0] -= 1
            return name.upper()
        return run

    jobs = [queue.submit(work(named(n), owner=n)) for n in "abcdef"]
    assert all(job.wait(10) for job in jobs)
    assert order == list("abcdef")
    assert max(overlap) == 1
    assert [job.result for job in jobs] == list("ABCDEF") and all(job.state == DONE for job in jobs)


def test_a_failing_job_reports_its_error_and_the_next_runs(queue):
    def boom(job):
        raise ValueError("bad prompt")

    failed = queue.submit(work(boom, "txt2img"))
    after = queue.submit(work(lambda job: 42, "txt2img"))
    assert after.wait(10) and failed.wait(0)
    assert failed.state == FAILED and failed.error == "ValueError: bad prompt"
    assert after.state == DONE and after.result == 42


def test_queue_positions_cancel_and_interrupt_reach_only_their_job(queue):
    started, release = threading.Event(), threading.Event()

    def long_job(job):
        started.set()
        while not release.is_set():
            job.control.check()        # raises Interrupted once this job is interrupted
            time.sleep(0.005)
        return "finished"

    first = queue.submit(work(long_job, "txt2img", "alice"))
    assert started.wait(10)
    second = queue.submit(work(lambda job: "second", "txt2img", "bob"))
    third = queue.submit(work(lambda job: "third", "txt2img", "carol"))
    assert (queue.position(first), queue.position(second), queue.position(third)) == (0, 1, 2)
    assert [j.id for j in queue.jobs_of("bob")] == [second.id]

    assert queue.cancel(second.id)             # queued: taken off, never runs
    assert second.state == CANCELLED and queue.position(third) == 1
    assert queue.interrupt(first.id)           # running: only its control is set
    assert not third.control.interrupted
    assert first.wait(10) and first.state == CANCELLED and first.error == "interrupted"
    assert third.wait(10) and third.result == "third"
    assert not queue.cancel(third.id)          # finished: nothing to do


def test_job_ids_are_unique_and_can_be_forced(queue):
    job = queue.submit(work(lambda job: None, "txt2img"), job_id="task(abc)")
    assert queue.get("task(abc)") is job
    with pytest.raises(ValueError, match="already exists"):
        queue.submit(work(lambda job: None, "txt2img"), job_id="task(abc)")


def test_stop_cancels_waiting_jobs():
    q = JobQueue(run_work)
    q.start()
    started = threading.Event()

    def until_interrupted(job):
        started.set()
        while True:
            job.control.check()
            time.sleep(0.005)

    running = q.submit(work(until_interrupted, "load"))
    waiting = q.submit(work(lambda job: None, "txt2img"))
    assert started.wait(10)
    q.stop()
    assert waiting.state == CANCELLED                      # never ran
    assert running.wait(5) and running.state == CANCELLED  # interrupted by stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        q.submit(work(lambda job: None, "txt2img"))


def test_interrupted_exception_is_what_control_raises():
    q = JobQueue(run_work)
    job = q.submit(work(lambda job: None, "txt2img"))
    job.control.interrupt()
    with pytest.raises(Interrupted):
        job.control.check()
