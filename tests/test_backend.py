"""webui/jobs/backend.py: models chosen by listed name, loads and generations as queued jobs, saving,
previews, and failures that leave the server usable."""
from __future__ import annotations

import datetime

import pytest

from tests.helpers import submit
from tests.tiny import tiny_checkpoint
from webui.engine.families import NATIVE_SIZE_KEY
from webui.engine.request import GenerationRequest
from webui.jobs import infotext, saving
from webui.jobs.backend import Backend
from webui.jobs.queue import DONE, FAILED
from webui.options import Options
from webui.paths import Paths


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend")
    ckpts = root / "models" / "checkpoints"
    (ckpts / "sub").mkdir(parents=True)
    tiny_checkpoint(ckpts / "tiny-a.safetensors", metadata={NATIVE_SIZE_KEY: "96"})
    tiny_checkpoint(ckpts / "sub" / "tiny-b.safetensors", seed=1)
    (ckpts / "broken.safetensors").write_bytes(b"not a checkpoint")
    (root / "outside.safetensors").write_bytes(b"x")
    options = Options(root / "config.json")
    options.update({"show_progress_every_n_steps": 1})
    b = Backend(Paths(root=root), options, log=lambda m: None)
    load = b.start("tiny-a.safetensors")
    assert load.wait(120) and load.state == DONE, load.error
    yield b
    b.stop()


def request(**changes) -> GenerationRequest:
    values = dict(prompt="a red circle", steps=3, width=64, height=64, seed=7, batch_size=2)
    values.update(changes)
    return GenerationRequest(**values)


def test_lists_and_names(backend):
    names = list(backend.checkpoints())
    assert {"tiny-a.safetensors", "sub/tiny-b.safetensors", "broken.safetensors"} <= set(names)
    assert backend.status.state == "ready" and backend.status.name == "tiny-a.safetensors"
    assert backend.native_size_of("tiny-a.safetensors") == 96 and backend.native_size == 96
    assert backend.native_size_of("sub/tiny-b.safetensors") == 512


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", "nope"])
def test_names_outside_the_list_are_refused(backend, name):
    with pytest.raises(ValueError, match="unknown checkpoint .* available: .*tiny-a.safetensors"):
        submit(backend, request(), checkpoint=name)
    with pytest.raises(ValueError, match="unknown checkpoint"):
        backend.load(name)


def test_unknown_vae_and_sampler_are_refused_before_queueing(backend):
    with pytest.raises(ValueError, match="unknown VAE 'x.pt'; available: Automatic, None"):
        submit(backend, request(), vae="x.pt")
    with pytest.raises(ValueError, match="sampler"):
        submit(backend, request(sampler_name="Nope"))
    assert backend.queue.pending() == []


def test_generation_saves_as_a1111_and_reports_previews(backend):
    job = submit(backend, request(), owner="alice")
    assert job.wait(120) and job.state == DONE, job.error
    out = job.result
    assert len(out.images) == 2 and out.seeds == [7, 8] and out.model == "tiny-a.safetensors"
    folder = saving.dated_folder(backend.paths.outputs, "txt2img", datetime.date.today())
    assert [p.parent for p in out.paths[:2]] == [folder, folder]
    assert [p.name.split("-", 1)[1] for p in out.paths[:2]] == ["7.png", "8.png"]
    assert out.paths[2].name.startswith("grid-")
    stored = infotext.parse_typed(saving.read_infotext(out.paths[1]))
    assert (stored.prompt, stored.seed, stored.steps, stored.model) == ("a red circle", 8, 3, "tiny-a")
    assert job.progress.step == job.progress.total == 3
    assert job.progress.preview is not None and job.progress.preview.size == (64, 64)


def test_saving_can_be_turned_off(backend):
    job = submit(backend, request(batch_size=1), save=False)
    assert job.wait(120) and job.state == DONE
    assert job.result.paths == [] and len(job.result.images) == 1


def test_a_job_on_a_broken_checkpoint_fails_and_the_next_runs(backend):
    bad = submit(backend, request(batch_size=1), checkpoint="broken.safetensors")
    good = submit(backend, request(batch_size=1), save=False)
    assert good.wait(120)
    assert bad.state == FAILED and "broken.safetensors" in bad.error
    assert good.state == DONE and good.result.model == "tiny-a.safetensors"
    assert backend.status.state == "ready"


def test_each_job_can_name_its_checkpoint(backend):
    other = submit(backend, request(batch_size=1), checkpoint="sub/tiny-b.safetensors", save=False)
    back = submit(backend, request(batch_size=1), checkpoint="tiny-a.safetensors", save=False)
    assert back.wait(120) and other.state == DONE and back.state == DONE
    assert (other.result.model, back.result.model) == ("sub/tiny-b.safetensors", "tiny-a.safetensors")
    assert other.result.images[0].image.tobytes() != back.result.images[0].image.tobytes()
