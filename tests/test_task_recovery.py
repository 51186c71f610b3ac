"""Tasks survive the process: the queue's records in SQLite, ``kill -9`` of a server mid-job and a restart
(queued tasks run, the interrupted one is failed with the reason, finished ones and their images intact),
a store that cannot write, and a full disk on ``outputs/``."""
from __future__ import annotations

import errno
import threading
import time

import pytest
import requests
from PIL import Image

from tests.app_server import run_app
from tests.helpers import WorkSpec, run_work, submit
from tests.tiny import tiny_checkpoint
from webui.engine.request import GenerationRequest
from webui.jobs import saving
from webui.jobs.backend import Backend
from webui.jobs.queue import CANCELLED, DONE, FAILED, QUEUED, RUNNING, DuplicateJobId, JobQueue
from webui.jobs.store import TaskRecord, TaskStore
from webui.options import Options
from webui.paths import Paths

DEADLINE_S = 300          # against a hang only


def test_records_follow_the_jobs_and_answer_after_the_queue_is_gone(tmp_path):
    store = TaskStore(tmp_path / "tasks.sqlite3")
    queue = JobQueue(run_work, store, summarize=lambda result: {"files": [f"{result}.png"]})
    queue.start()
    gate = threading.Event()
    first = queue.submit(WorkSpec("txt2img", owner="api", resumable=True, work=lambda job: gate.wait(30) and "a"))
    kept = WorkSpec("txt2img", owner="api", resumable=True, styles=("s",), work=lambda job: "b")
    second = queue.submit(kept, job_id="mine")
    deadline = time.monotonic() + 30
    while store.get(first.id).state != RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert store.get("mine").state == QUEUED and store.get("mine").payload == kept.to_json()
    gate.set()
    assert second.wait(30)
    queue.stop()
    record = store.get("mine")
    assert (record.state, record.result, record.payload) == (DONE, {"files": ["b.png"]}, None)
    assert store.get(first.id).result == {"files": ["a.png"]}

    later = JobQueue(run_work, TaskStore(tmp_path / "tasks.sqlite3"))      # a new process, the same file
    job = later.get("mine")
    assert job.state == DONE and job.saved == {"files": ["b.png"]} and job.wait(0)
    with pytest.raises(DuplicateJobId):
        later.submit(WorkSpec("txt2img", work=lambda job: None), job_id="mine")


def test_recover_fails_the_running_one_resubmits_queued_ones_in_order_and_cancels_the_rest(tmp_path):
    store = TaskStore(tmp_path / "tasks.sqlite3")
    for i, (state, payload) in enumerate([(DONE, None), (RUNNING, {"n": 0}), (QUEUED, {"n": 1}), (QUEUED, None),
                                          (QUEUED, {"n": 2}), (QUEUED, {"n": "bad"})]):
        store.add(TaskRecord(f"t{i}", "txt2img", "api", QUEUED, 1000.0 + i, payload=payload))
        if state == RUNNING:
            store.started(f"t{i}", 1001.0)
        elif state == DONE:
            store.finished(f"t{i}", DONE, 1001.0, result={"files": ["x.png"]})
    queue = JobQueue(run_work, TaskStore(tmp_path / "tasks.sqlite3"))
    resumed = []

    def resume(record):
        if record.payload["n"] == "bad":
            raise ValueError("checkpoint 'gone' not found")
        resumed.append(record.id)
        queue.submit(WorkSpec(record.kind, resumable=True, work=lambda job: record.payload["n"]), job_id=record.id,
                     resumed=True)
    assert queue.recover(resume) == {"failed": 2, "resumed": 2, "cancelled": 1}
    assert resumed == ["t2", "t4"]
    assert store.get("t1").state == FAILED and "server stopped while this task ran" in store.get("t1").error
    assert store.get("t3").state == CANCELLED and "not resumed" in store.get("t3").error
    assert store.get("t5").state == FAILED and "checkpoint 'gone' not found" in store.get("t5").error
    queue.start()
    assert queue.get("t4").wait(30) and queue.get("t4").result == 2 and store.get("t4").state == DONE
    queue.stop()
    assert store.get("t0").result == {"files": ["x.png"]}


def test_a_store_that_cannot_write_is_logged_once_and_the_queue_goes_on(tmp_path):
    lines = []
    store = TaskStore(tmp_path / "tasks.sqlite3", log=lines.append)
    store._db.close()                     # every write now fails, as on a full or read-only disk
    queue = JobQueue(run_work, store)
    queue.start()
    jobs = [queue.submit(WorkSpec("txt2img", resumable=True, work=lambda job, i=i: i)) for i in range(3)]
    assert all(job.wait(30) and job.state == DONE for job in jobs)
    queue.stop()
    assert len(lines) == 1 and "could not be written" in lines[0]


def test_a_full_disk_fails_that_job_with_a_clear_message_and_the_next_one_runs(tmp_path, monkeypatch):
    ckpts = tmp_path / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    tiny_checkpoint(ckpts / "tiny.safetensors")
    backend = Backend(Paths(root=tmp_path), Options(tmp_path / "config.json"), device="cpu", precision="full",
                      log=lambda m: None)
    load = backend.start("tiny.safetensors")
    assert load.wait(DEADLINE_S) and load.state == DONE, load.error
    request = dict(prompt="a fox", steps=2, width=64, height=64, seed=1, sampler_name="Euler")
    real = saving._write_new

    def full(folder, names, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(saving, "_write_new", full)
    job = submit(backend, GenerationRequest(**request), save=True)
    assert job.wait(DEADLINE_S) and job.state == FAILED
    assert "could not save the images in" in job.error and "the disk is full" in job.error, job.error
    assert str(tmp_path / "outputs") in job.error
    monkeypatch.setattr(saving, "_write_new", real)
    again = submit(backend, GenerationRequest(**request), save=True)
    assert again.wait(DEADLINE_S) and again.state == DONE, again.error
    assert backend.queue.store.get(again.id).result["files"][0].startswith("txt2img-images/")
    assert backend.queue.store.get(job.id).state == FAILED
    backend.stop()


def _wait_state(session, base, task_id, states, proc=None) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        answer = session.get(f"{base}/sdapi/v1/tasks/{task_id}", timeout=30)
        if answer.status_code == 200 and answer.json()["status"] in states:
            return answer.json()
        assert time.monotonic() < deadline, (task_id, answer.status_code, answer.text)
        assert proc is None or proc.poll() is None, "the server exited"
        time.sleep(0.1)


def test_kill_9_mid_job_then_restart(tmp_path):
    data = tmp_path / "data"
    ckpts = data / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    ckpt = tiny_checkpoint(ckpts / "tiny.safetensors")
    quick = dict(prompt="a red fox", steps=2, width=64, height=64, sampler_name="Euler", save_images=True)
    session = requests.Session()

    def post(body):        # the client of a killed server gets a broken connection: that is expected
        try:
            session.post(f"{app.base}/sdapi/v1/txt2img", json=body, timeout=DEADLINE_S)
        except requests.RequestException:
            pass

    with run_app("--nowebui", "--data-dir", data, "--ckpt", ckpt, log_dir=tmp_path) as app:
        finished = session.post(f"{app.base}/sdapi/v1/txt2img", json={**quick, "seed": 1, "force_task_id": "done-1"},
                                timeout=DEADLINE_S)
        assert finished.status_code == 200, finished.text
        before = _wait_state(session, app.base, "done-1", {DONE})
        assert len(before["files"]) == 1
        image_path = data / "outputs" / before["files"][0]
        image_bytes = image_path.read_bytes()
        long_job = {**quick, "steps": 150, "width": 512, "height": 512, "seed": 2, "force_task_id": "long"}
        threads = [threading.Thread(target=post, args=(long_job,), daemon=True)]
        threads[0].start()
        _wait_state(session, app.base, "long", {RUNNING}, app.proc)
        for i in (3, 4):
            threads.append(threading.Thread(target=post, args=({**quick, "seed": i, "force_task_id": f"q{i}"},),
                                            daemon=True))
            threads[-1].start()
            _wait_state(session, app.base, f"q{i}", {QUEUED}, app.proc)
        assert _wait_state(session, app.base, "long", {RUNNING})["status"] == RUNNING
        app.proc.kill()                                          # SIGKILL: no clean-up of any kind
        app.proc.wait(30)
    for thread in threads:
        thread.join(30)

    with run_app("--nowebui", "--data-dir", data, "--ckpt", ckpt, log_dir=tmp_path) as app:
        results = {i: _wait_state(session, app.base, f"q{i}", {DONE, FAILED, CANCELLED}, app.proc) for i in (3, 4)}
        for i, result in results.items():
            assert result["status"] == DONE, result
            with Image.open(data / "outputs" / result["files"][0]) as img:
                assert img.size == (64, 64) and f"Seed: {i}," in img.info["parameters"]
        interrupted = session.get(f"{app.base}/sdapi/v1/tasks/long", timeout=30).json()
        assert interrupted["status"] == FAILED and "server stopped while this task ran" in interrupted["error"]
        again = session.get(f"{app.base}/sdapi/v1/tasks/done-1", timeout=30).json()
        assert again["status"] == DONE and again["files"] == before["files"] and again["infotexts"]
        assert image_path.read_bytes() == image_bytes
        assert session.get(f"{app.base}/sdapi/v1/tasks/nope", timeout=30).status_code == 404
        assert "2 queued again, 1 failed" in app.log.read_text()
        assert not list((data / "outputs").rglob(".saving-*"))   # no half-written image left behind
