"""Safety of a shared box: model folders cannot be left through symlinks, the UI refuses cross-site requests
and answers nothing before its login, and passwords never reach the log or the API."""
from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image

from tests.tiny import tiny_checkpoint
from webui.engine.prompts.embeddings import EmbeddingDatabase
from webui.paths import CHECKPOINT_EXTENSIONS, VAE_EXTENSIONS, list_files

UI_PASSWORD, API_PASSWORD = "ui-pw-7f3a9", "api-pw-2c81d"


def test_symlinks_leaving_a_model_folder_are_neither_listed_nor_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("secret.safetensors", "secret.pt", "secret.ckpt"):
        (outside / name).write_bytes(b"not for the server")
    root = tmp_path / "models"
    for kind, extensions in (("checkpoints", CHECKPOINT_EXTENSIONS), ("VAE", VAE_EXTENSIONS),
                             ("Lora", (".safetensors", ".pt")), ("ControlNet", (".safetensors", ".pth"))):
        folder = root / kind
        (folder / "inner").mkdir(parents=True)
        (folder / "inner" / "real.safetensors").write_bytes(b"x")
        (folder / "link.safetensors").symlink_to(outside / "secret.safetensors")
        (folder / "linked-dir").symlink_to(outside, target_is_directory=True)
        (folder / "inner" / "sibling.safetensors").symlink_to(folder / "inner" / "real.safetensors")  # stays inside
        names = sorted(p.relative_to(folder).as_posix() for p in list_files(folder, extensions))
        assert names == ["inner/real.safetensors", "inner/sibling.safetensors"], (kind, names)

    embeddings = root / "embeddings"
    embeddings.mkdir()
    (embeddings / "evil.pt").symlink_to(outside / "secret.pt")
    (embeddings / "dir").symlink_to(outside, target_is_directory=True)
    database = EmbeddingDatabase(embeddings, 768, lambda text: [1])
    assert database._scan() == []
    database.refresh()
    assert not database.loaded and not database.skipped and not database.errors


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    data = tmp_path_factory.mktemp("safety")
    (data / "models" / "checkpoints").mkdir(parents=True)
    ckpt = tiny_checkpoint(data / "models" / "checkpoints" / "tiny.safetensors")
    return app_server("--api", "--gradio-auth", f"alice:{UI_PASSWORD}", "--api-auth", f"bob:{API_PASSWORD}",
                      "--ckpt", ckpt, data=data)


def _login(app) -> requests.Session:
    session = requests.Session()
    answer = session.post(f"{app.base}/login", data={"username": "alice", "password": UI_PASSWORD}, timeout=30)
    assert answer.status_code == 200, answer.text
    return session


def test_the_ui_answers_nothing_before_its_login(server):
    anonymous = requests.Session()
    for path in ("/config", "/gradio_api/info"):
        answer = anonymous.get(server.base + path, timeout=30)
        assert answer.status_code in (401, 403), (path, answer.status_code)
    bad = anonymous.post(f"{server.base}/login", data={"username": "alice", "password": "wrong"}, timeout=30)
    assert bad.status_code == 400
    session = _login(server)
    assert session.get(f"{server.base}/config", timeout=30).status_code == 200
    # the UI's file route: closed before the login, and after it still no file outside gradio's own folders
    secret = server.log.parent / "models" / "checkpoints" / "tiny.safetensors"
    assert anonymous.get(f"{server.base}/gradio_api/file={secret}", timeout=30).status_code == 401
    assert session.get(f"{server.base}/gradio_api/file={secret}", timeout=30).status_code in (403, 404)


def test_cross_site_requests_to_the_ui_are_refused(server):
    session = _login(server)
    join = f"{server.base}/gradio_api/queue/join"
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": f"http://127.0.0.1:{server.port + 1}"}):
        answer = session.post(join, json={}, headers=headers, timeout=30)
        assert answer.status_code == 403 and "cross-site" in answer.text, (headers, answer.status_code)
    same = session.post(join, json={}, headers={"Origin": server.base, "Sec-Fetch-Site": "same-origin"}, timeout=30)
    assert same.status_code != 403
    login = requests.post(f"{server.base}/login", data={"username": "alice", "password": UI_PASSWORD},
                          headers={"Origin": "http://evil.example"}, timeout=30)
    assert login.status_code == 403                    # no login forced on a visitor by another site
    api = requests.get(f"{server.base}/sdapi/v1/options", auth=("bob", API_PASSWORD),
                       headers={"Origin": "http://evil.example"}, timeout=30)
    assert api.status_code == 200                      # the API keeps its own (CORS) policy


def test_passwords_never_reach_the_log_or_the_api(server):
    requests.post(f"{server.base}/login", data={"username": "alice", "password": UI_PASSWORD + "x"}, timeout=30)
    requests.get(f"{server.base}/sdapi/v1/options", auth=("bob", API_PASSWORD + "x"), timeout=30)
    flags = requests.get(f"{server.base}/sdapi/v1/cmd-flags", auth=("bob", API_PASSWORD), timeout=30)
    assert flags.status_code == 200
    assert UI_PASSWORD not in flags.text and API_PASSWORD not in flags.text
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(png, "PNG")
    body = {"prompt": "a fox", "steps": 1, "width": 64, "height": 64, "save_images": True,
            "init_images": [base64.b64encode(png.getvalue()).decode()]}
    answer = requests.post(f"{server.base}/sdapi/v1/img2img", json=body, auth=("bob", API_PASSWORD), timeout=300)
    assert answer.status_code == 200, answer.text
    log = server.log.read_text()
    assert "Running on" in log
    assert UI_PASSWORD not in log and API_PASSWORD not in log


def _bomb() -> str:
    """A 24000x24000 picture in a few kilobytes: decoding it would take 576 MB (1-bit PNG of one colour)."""
    png = io.BytesIO()
    Image.new("1", (24000, 24000)).save(png, "PNG", optimize=True)
    assert len(png.getvalue()) < 200_000
    return base64.b64encode(png.getvalue()).decode()


def test_every_image_input_refuses_a_decompression_bomb(server):
    bomb, auth = _bomb(), ("bob", API_PASSWORD)
    small = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(small, "PNG")
    ok = base64.b64encode(small.getvalue()).decode()
    base = {"prompt": "a fox", "steps": 1, "width": 64, "height": 64}
    unit = {"enabled": True, "module": "none", "model": "None", "image": bomb}
    cases = {
        "img2img init_images": ("img2img", {**base, "init_images": [bomb]}),
        "img2img mask": ("img2img", {**base, "init_images": [ok], "mask": bomb}),
        "controlnet unit image": ("txt2img", {**base, "alwayson_scripts": {"controlnet": {"args": [unit]}}}),
        "extras image": ("extra-single-image", {"image": bomb, "upscaling_resize": 1}),
        "extras batch": ("extra-batch-images", {"imageList": [{"data": bomb, "name": "a.png"}]}),
        "png-info": ("png-info", {"image": bomb}),
    }
    for what, (route, body) in cases.items():
        answer = requests.post(f"{server.base}/sdapi/v1/{route}", json=body, auth=auth, timeout=120)
        assert answer.status_code in (413, 422), (what, answer.status_code, answer.text[:300])
        assert "larger than" in answer.text, (what, answer.text[:300])
    assert server.proc.poll() is None
