"""A short soak of the API server (``bench/soak.py``'s code): ``python app.py --nowebui`` with two tiny
checkpoints, a tiny LoRA and a tiny ControlNet; 30 mixed jobs (txt2img, img2img, inpainting, LoRA,
ControlNet) from 4 concurrent clients, the checkpoint switching every 10 jobs (per request and through
POST options). Every answer must belong to its own request (images count, seeds, prompt, task id, the
checkpoint it asked for, LoRA / ControlNet lines only where asked), no request may fail or get lost, and
replaying one job per kind and checkpoint must give the same pixels.

Latency is reported, not asserted; the server's RSS is checked loosely (30 jobs are too few for the 10 %
figure of the long run, ``bench/soak.py`` with its defaults).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.soak import SoakConfig, run_soak, summary

LOOSE_RSS_GROWTH = 0.5    # a gross leak (every job's tensors kept), not allocator noise


def test_short_soak_keeps_every_answer_with_its_request(tmp_path):
    config = SoakConfig(jobs=30, clients=4, size=64, steps=4, switch_every=10, warmup=10, replay=True,
                        max_rss_growth=LOOSE_RSS_GROWTH)
    report = run_soak(config, tmp_path, log=lambda line: None)
    text = summary(report)
    print(text)
    assert not report.errors, text
    assert not report.violations, text
    assert report.jobs_planned == 30 and report.jobs_ok == 30, text
    assert sum(len(v) for k, v in report.latencies.items() if k != "options") == 30, text
    assert report.model_switches == 2, text                 # before jobs 10 and 20
    assert report.replays == 10 and report.replay_max_diff == 0, text    # 5 kinds x 2 checkpoints
    assert report.server_tracebacks == 0, (tmp_path / "server.log").read_text()[-5000:]
    assert report.rss_problem is None, text
    assert not report.failed, text


def test_info_names_the_model_the_job_ran_with(tmp_path):
    """The race the soak looks for, made certain: client A's job runs on checkpoint a, then B's job switches
    to b before A's route builds its answer. ``info.sd_model_name`` / ``sd_model_hash`` must still say a (they
    were read from the resident model at answer time)."""
    from tests.tiny import tiny_checkpoint
    from webui.api import schemas
    from webui.api.routes import Api
    from webui.jobs.backend import Backend
    from webui.options import Options
    from webui.paths import Paths

    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    for seed, name in enumerate(("a.safetensors", "b.safetensors")):
        tiny_checkpoint(folder / name, seed=seed)
    backend = Backend(Paths(root=tmp_path), Options(tmp_path / "config.json"), device="cpu", persist=False,
                      log=lambda line: None)
    try:
        backend.start("a.safetensors").wait()
        api = Api(backend)
        bodies = [schemas.Txt2ImgRequest(prompt=f"job {n}", seed=n, steps=1, width=64, height=64,
                                         override_settings={"sd_model_checkpoint": name})
                  for n, name in enumerate(("a.safetensors", "b.safetensors"))]
        spec_a, spec_b = (api.generation.job(body, "txt2img") for body in bodies)
        job_a, job_b = backend.submit(spec_a), backend.submit(spec_b)
        assert job_a.wait(120) and job_b.wait(120) and job_b.state == "done"
        info = api.generation._info(spec_a, job_a.result, job_a.id)
        assert "Model: a," in info["infotexts"][0]
        assert (info["sd_model_name"], info["sd_model_hash"]) == ("a", infotext_hash(info["infotexts"][0]))
        assert backend.model_info.name == "b"           # the resident model is b by now
    finally:
        backend.stop()


def infotext_hash(text: str) -> str:
    from webui.jobs import infotext
    return infotext.parse(text)["Model hash"]
