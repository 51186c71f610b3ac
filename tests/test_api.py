"""The A1111-compatible API, driven by the real A1111 client from PyPI (``webuiapi``) and by raw HTTP:
``python app.py --nowebui --api-auth ...`` on the shipped demo model plus a tiny second checkpoint.

Also: 4 clients x 3 jobs at once (each gets its own seeds and images; per-task progress), and a table of
bad inputs, each answered with the right status and message, the server serving afterwards and nothing
written outside ``outputs/``.
"""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

import safetensors.torch
import torch

from tests.app_server import run_app
from tests.tiny import tiny_checkpoint
from webui.demo import dataset as ds
from webui.engine.files import read_state_dict
from webui.jobs import infotext
from webui.paths import DEMO_CHECKPOINT

USER, PASSWORD = "alice", "s3cret"
MODEL_LOAD_TIMEOUT_S = 180   # a deadline against a hang, not a speed claim (the demo model loads in seconds)
pytestmark = pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not shipped")


@pytest.fixture(scope="module")
def webuiapi():
    """A1111's Python client from PyPI: only the tests that drive it skip without it; raw HTTP tests always run."""
    return pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    data = tmp_path_factory.mktemp("api")
    ckpts = data / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    tiny_checkpoint(ckpts / "tiny.safetensors")
    (data / "secret.txt").write_text("outside the model folders")
    (data / "styles.csv").write_text('name,prompt,negative_prompt\nTop left,"{prompt}, top left",blurry\n')
    embeddings = data / "models" / "embeddings"
    embeddings.mkdir(parents=True)
    width = read_state_dict(DEMO_CHECKPOINT)[
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape[1]
    safetensors.torch.save_file({"emb_params": torch.randn(2, width)}, str(embeddings / "demo-emb.safetensors"))
    torch.save({"string_to_param": {"*": torch.randn(1, width + 8)}}, embeddings / "wide-emb.pt")
    # the model loads in the background: wait for it through the logged-in session
    return app_server("--nowebui", "--api-auth", f"{USER}:{PASSWORD}", "--ckpt", DEMO_CHECKPOINT, data=data,
                      auth=(USER, PASSWORD), wait_model=MODEL_LOAD_TIMEOUT_S)


@pytest.fixture
def api(server, webuiapi):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server["port"], sampler="Euler", steps=20,
                             username=USER, password=PASSWORD)


def test_txt2img_through_webuiapi(api):
    result = api.txt2img(prompt="a large red circle on a white background, top left", seed=11, width=64,
                         height=64, cfg_scale=7, batch_size=2)
    assert len(result.images) == 2 and result.image.size == (64, 64)
    assert result.info["all_seeds"] == [11, 12] and result.info["sd_model_name"] == "webui-demo-64px"
    text = result.image.info["parameters"]       # the PNG's parameters chunk
    assert infotext.parse_typed(text).seed == 11 and "Sampler: Euler" in text
    judged = ds.analyse(result.image.convert("RGB"))
    assert judged["colour"] == "red", judged
    # png-info round trip
    info = api.png_info(result.image)
    assert info.info == text and info.parameters["Seed"] == "11"


def test_img2img_with_a_mask_through_webuiapi(api):
    init = ds.render(ds.Scene("white", (ds.Obj("square", "blue", "large", "top left"),)), 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    result = api.img2img(images=[init], mask_image=mask, prompt="a large red circle on a white background, top right",
                         seed=5, width=64, height=64, denoising_strength=1.0, inpainting_fill=1,
                         inpaint_full_res=False, mask_blur=2)
    out = result.image.convert("RGB")
    import numpy as np
    before, after = np.asarray(init, np.int16), np.asarray(out, np.int16)
    assert np.abs(after[:, :24] - before[:, :24]).mean() < 6
    assert result.info["denoising_strength"] == 1.0 and "Mask blur: 2" in result.info["infotexts"][0]


def test_lists(api):
    models = api.get_sd_models()
    titles = [m["title"] for m in models]
    assert any(t.startswith("tiny.safetensors [") for t in titles)
    assert any(t.startswith("webui-demo-64px.safetensors [") for t in titles)
    names = [s["name"] for s in api.get_samplers()]
    assert {"Euler", "Euler a", "DPM++ 2M", "DDIM", "UniPC"} <= set(names)
    assert {"karras", "exponential"} <= {s["name"] for s in api.get_schedulers()}


def test_prompt_language_over_the_api(server):
    base, session = server["base"], server["session"]
    embeddings = session.get(f"{base}/sdapi/v1/embeddings").json()
    assert embeddings["loaded"]["demo-emb"]["vectors"] == 2 and list(embeddings["skipped"]) == ["wide-emb"]
    assert session.post(f"{base}/sdapi/v1/refresh-embeddings").status_code == 200
    assert session.get(f"{base}/sdapi/v1/prompt-styles").json() == [
        {"name": "Top left", "prompt": "{prompt}, top left", "negative_prompt": "blurry"}]
    body = {"prompt": "a red circle (demo-emb:1.1) <lora:nothing:1>", "styles": ["Top left"], "steps": 4,
            "width": 64, "height": 64, "seed": 3,
            "override_settings": {"emphasis": "No norm", "CLIP_stop_at_last_layers": 2}}
    info = json.loads(session.post(f"{base}/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["prompt"] == body["prompt"]
    assert info["all_prompts"] == [body["prompt"] + ", top left"] and info["all_negative_prompts"] == ["blurry"]
    text = info["infotexts"][0]
    assert "Emphasis: No norm" in text and "Clip skip: 2" in text and 'TI hashes: "demo-emb: ' in text
    assert info["clip_skip"] == 2 and "<lora:nothing:1>" in info["warnings"][0]
    for bad, message in (({"styles": ["Nope"]}, "Top left"), ({"override_settings": {"emphasis": "Loud"}}, "emphasis")):
        response = session.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64,
                                                                  "height": 64, **bad})
        assert response.status_code == 422 and message in response.text


def test_shipped_lora_and_controlnet_over_the_api(server):
    base, session = server["base"], server["session"]
    loras = {item["name"]: item for item in session.get(f"{base}/sdapi/v1/loras").json()}
    assert "webui-demo-outline" in loras and loras["webui-demo-outline"]["metadata"]["ss_network_dim"] == "8"
    assert session.post(f"{base}/sdapi/v1/refresh-loras").status_code == 200
    titles = session.get(f"{base}/sdapi/v1/scripts").json()["txt2img"]
    assert {"lora", "controlnet", "soft contrast"} <= set(titles)
    models = session.get(f"{base}/extensions-api/controlnet/model_list").json()["model_list"]
    assert any(m.startswith("webui-demo-mask [") for m in models)
    mask = ds.render(ds.Scene("white", (ds.Obj("circle", "red", "large", "bottom right"),)), 64, style="mask")
    body = {"prompt": "a large red circle on a white background <lora:webui-demo-outline:1>", "steps": 12,
            "width": 64, "height": 64, "seed": 9,
            "alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "image": _b64(mask), "module": "none",
                                                          "model": models[0], "weight": 1.0}]}}}
    response = session.post(f"{base}/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    text = info["infotexts"][0]
    assert 'Lora hashes: "webui-demo-outline: ' in text and 'ControlNet 0: "Module: none, Model: webui-demo-mask [' in text
    assert not info["warnings"]
    bad = {**body, "alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "model": "nope"}]}}}
    response = session.post(f"{base}/sdapi/v1/txt2img", json=bad)
    assert response.status_code == 422 and "webui-demo-mask" in response.text


def test_controlnet_through_webuiapi(api, server, webuiapi):
    """A1111's Python client drives sd-webui-controlnet's API: its unit dicts and /controlnet/ routes."""
    models = webuiapi.ControlNetInterface(api, show_deprecation_warning=False).model_list()
    assert any(m.startswith("webui-demo-mask [") for m in models)
    assert requests.get(f"{server['base']}/controlnet/model_list").status_code == 401      # behind --api-auth
    mask = ds.render(ds.Scene("white", (ds.Obj("square", "blue", "large", "top right"),)), 64, style="mask")
    unit = webuiapi.ControlNetUnit(image=mask, module="none", model=models[0], weight=1.0,
                                   resize_mode="Just Resize")
    result = api.txt2img(prompt="a large blue square on a white background", seed=21, width=64, height=64,
                         steps=20, cfg_scale=7, controlnet_units=[unit])
    assert 'ControlNet 0: "Module: none, Model: webui-demo-mask [' in result.info["infotexts"][0]
    judged = ds.analyse(result.image.convert("RGB"), "white")
    assert judged["found"] and judged["position"] == "top right", judged
    canny = api.controlnet_detect([ds.render(ds.Scene("white", (ds.Obj("circle", "red", "large", "center"),)), 64)],
                                  module="canny", processor_res=64, threshold_a=100, threshold_b=200)
    edges = np.asarray(canny.images[0].convert("L"))
    assert len(canny.images) == 1 and edges.shape == (64, 64) and set(np.unique(edges)) == {0, 255}


def test_options_switch_the_model(api, server):
    titles = api.util_get_model_names()
    tiny = next(t for t in titles if t.startswith("tiny.safetensors ["))
    api.util_set_model(tiny, find_closest=False)                  # posts options {"sd_model_checkpoint": title}
    assert api.util_get_current_model() == tiny
    result = api.txt2img(prompt="x", seed=1, width=64, height=64, steps=2)
    assert result.info["sd_model_name"] == "tiny"
    demo = next(t for t in titles if t.startswith("webui-demo-64px.safetensors ["))
    api.util_set_model(demo, find_closest=False)
    assert api.util_get_current_model() == demo


def test_unload_and_reload_checkpoint(server):
    base, s = server["base"], server["session"]
    assert s.post(f"{base}/sdapi/v1/unload-checkpoint").status_code == 200
    assert s.get(f"{base}/sdapi/v1/options").json()["sd_checkpoint_hash"] is None
    r = s.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2})
    assert r.status_code == 500 and "no checkpoint is loaded" in r.text
    assert s.post(f"{base}/sdapi/v1/reload-checkpoint").status_code == 200
    assert s.get(f"{base}/sdapi/v1/options").json()["sd_checkpoint_hash"] is not None
    assert s.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}).ok


def test_progress_while_running_and_interrupt(api, server):
    base, session = server["base"], server["session"]
    saved = session.get(f"{base}/sdapi/v1/options").json()
    preview_options = {"live_previews_enable": True, "show_progress_every_n_steps": 1,
                       "show_progress_type": "Approx cheap"}          # a live preview after every step
    assert session.post(f"{base}/sdapi/v1/options", json=preview_options).status_code == 200
    results = {}
    worker = threading.Thread(target=lambda: results.update(r=api.txt2img(
        prompt="a small green triangle on a black background", seed=3, width=64, height=64, steps=150, n_iter=30)))
    try:
        worker.start()
        seen, with_preview = [], []
        deadline = time.monotonic() + 60           # against a hang: 150 x 30 steps take minutes, not seconds
        while time.monotonic() < deadline and (len(seen) < 3 or not with_preview):
            p = api.get_progress()
            if p["state"]["sampling_step"] > 0:
                seen.append(p)
                if p["current_image"] is not None:
                    with_preview.append(p)
            time.sleep(0.1)
        assert len(seen) >= 3, f"no progress reported while the job ran: {seen}"
        assert 0 < seen[-1]["progress"] < 1 and seen[-1]["state"]["sampling_steps"] == 150 * 30
        # every step makes a preview: once steps are reported, the live preview must be there
        assert with_preview, f"no live preview in {len(seen)} progress reports"
        preview = Image.open(io.BytesIO(base64.b64decode(with_preview[-1]["current_image"])))
        assert preview.format == "PNG" and preview.size == (64, 64)
        pixels = np.asarray(preview.convert("RGB"), np.int16)
        assert pixels.std() > 1, "the live preview is a flat image"
    finally:
        api.interrupt()
        worker.join(60)
        session.post(f"{base}/sdapi/v1/options", json={k: saved[k] for k in preview_options})
    result = results["r"]
    assert 0 < len(result.images) < 30 and result.info["interrupted"] is True


def test_four_clients_three_jobs_each(server):
    base = server["base"]
    outcomes, progress_seen, errors = {}, {}, []

    def client(c: int):
        try:
            s = requests.Session()
            s.auth = (USER, PASSWORD)
            for j in range(3):
                seed, task = 1000 * (c + 1) + j, f"client{c}-job{j}"
                body = {"prompt": f"a large {list(ds.COLOURS)[c]} circle on a white background", "seed": seed,
                        "width": 64, "height": 64, "steps": 20, "sampler_name": "Euler", "force_task_id": task}
                r = s.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=300)
                r.raise_for_status()
                info = json.loads(r.json()["info"])
                outcomes[task] = (info["all_seeds"], info["prompt"], r.json()["images"])
                state = s.get(f"{base}/sdapi/v1/tasks/{task}").json()
                progress_seen[task] = state
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert len(outcomes) == 12
    for c in range(4):
        for j in range(3):
            seeds, prompt, images = outcomes[f"client{c}-job{j}"]
            assert seeds == [1000 * (c + 1) + j] and list(ds.COLOURS)[c] in prompt and len(images) == 1
            state = progress_seen[f"client{c}-job{j}"]
            assert state["status"] == "done" and state["progress"] == 1.0 and state["sampling_steps"] == 20


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


GOOD = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2}
PNG = _b64(Image.new("RGB", (64, 64), "white"))

BAD = [  # (name, method, path, body or raw bytes, auth, expected status, text in the answer)
    ("no auth", "post", "txt2img", GOOD, None, 401, "authentication required"),
    ("wrong password", "post", "txt2img", GOOD, (USER, "nope"), 401, "authentication required"),
    ("unknown user", "get", "sd-models", None, ("mallory", PASSWORD), 401, "authentication required"),
    ("docs without auth", "get", "/docs", None, None, 401, "authentication required"),
    ("extension route without auth", "get", "/extensions-api/anything", None, None, 401, "authentication"),
    ("malformed json", "post", "txt2img", b"{not json", "ok", 422, "JSON"),
    ("json array", "post", "txt2img", b"[1, 2]", "ok", 422, ""),
    ("width as text", "post", "txt2img", {**GOOD, "width": "wide"}, "ok", 422, "width"),
    ("steps as list", "post", "txt2img", {**GOOD, "steps": [1]}, "ok", 422, "steps"),
    ("negative width", "post", "txt2img", {**GOOD, "width": -64}, "ok", 422, "width must be a multiple of 8"),
    ("huge width", "post", "txt2img", {**GOOD, "width": 100000}, "ok", 422, "within 64..2048"),
    ("width not multiple of 8", "post", "txt2img", {**GOOD, "width": 65}, "ok", 422, "multiple of 8"),
    ("zero steps", "post", "txt2img", {**GOOD, "steps": 0}, "ok", 422, "steps must be within 1..150"),
    ("too many steps", "post", "txt2img", {**GOOD, "steps": 151}, "ok", 422, "steps must be within 1..150"),
    ("too many images", "post", "txt2img", {**GOOD, "batch_size": 8, "n_iter": 100}, "ok", 422, "batch_size x n_iter"),
    ("zero batch", "post", "txt2img", {**GOOD, "batch_size": 0}, "ok", 422, "batch_size"),
    ("huge prompt", "post", "txt2img", {**GOOD, "prompt": "a" * 30000}, "ok", 422, "longer than"),
    ("unknown sampler", "post", "txt2img", {**GOOD, "sampler_name": "Magic"}, "ok", 422, "available: DPM++ 2M"),
    ("unknown scheduler", "post", "txt2img", {**GOOD, "scheduler": "zigzag"}, "ok", 422, "unknown schedule type"),
    ("unknown checkpoint", "post", "txt2img", {**GOOD, "override_settings": {"sd_model_checkpoint": "nope"}}, "ok",
     422, "available: "),
    ("traversal checkpoint", "post", "options", {"sd_model_checkpoint": "../../secret.txt"}, "ok", 422,
     "unknown checkpoint"),
    ("absolute checkpoint", "post", "options", {"sd_model_checkpoint": "/etc/passwd"}, "ok", 422, "unknown checkpoint"),
    ("traversal vae", "post", "options", {"sd_vae": "../secret.txt"}, "ok", 422, "unknown VAE"),
    ("unknown option", "post", "options", {"no_such_option": 1}, "ok", 422, "unknown option"),
    ("bad option type", "post", "options", {"samples_save": "maybe"}, "ok", 422, "true or false"),
    ("unknown override", "post", "txt2img", {**GOOD, "override_settings": {"x": 1}}, "ok", 422, "override_settings"),
    ("unknown hires upscaler", "post", "txt2img", {**GOOD, "enable_hr": True, "hr_upscaler": "4x-Nope"}, "ok", 422,
     "unknown upscaler '4x-Nope'; available: None, Lanczos, Nearest, Latent"),
    ("hires fix on img2img", "post", "img2img", {**GOOD, "init_images": [PNG], "enable_hr": True}, "ok", 422,
     "txt2img feature"),
    ("restore faces", "post", "txt2img", {**GOOD, "restore_faces": True}, "ok", 422, "restore_faces"),
    ("unknown script", "post", "txt2img", {**GOOD, "script_name": "x/y plot"}, "ok", 422,
     "Script 'x/y plot' not found"),
    ("no init image", "post", "img2img", GOOD, "ok", 422, "init_images"),
    ("invalid base64", "post", "img2img", {**GOOD, "init_images": ["!!!notbase64"]}, "ok", 422, "not valid base64"),
    ("not an image", "post", "img2img", {**GOOD, "init_images": [base64.b64encode(b"hello").decode()]}, "ok", 422,
     "not a readable image"),
    ("remote url", "post", "img2img", {**GOOD, "init_images": ["http://example.com/a.png"]}, "ok", 422,
     "URLs are not fetched"),
    ("bad mask", "post", "img2img", {**GOOD, "init_images": [PNG], "mask": "%%%"}, "ok", 422, "mask: not valid base64"),
    ("strength out of range", "post", "img2img", {**GOOD, "init_images": [PNG], "denoising_strength": 3}, "ok", 422,
     "denoising strength"),
    ("png-info not an image", "post", "png-info", {"image": base64.b64encode(b"GIF89a").decode()}, "ok", 422,
     "not a readable image"),
    ("100 MB payload", "post", "txt2img", b"x" * (100 * 2**20), "ok", 413, "larger than"),
    ("unknown task", "get", "tasks/nope", None, "ok", 404, "no task"),
    ("duplicate task id", "post", "txt2img", {**GOOD, "force_task_id": "dup"}, "ok", 409, "already exists"),
]


@pytest.mark.parametrize("name, method, path, body, auth, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input(server, name, method, path, body, auth, status, message):
    base = server["base"]
    url = base + (path if path.startswith("/") else f"/sdapi/v1/{path}")
    auth = (USER, PASSWORD) if auth == "ok" else auth
    if name == "duplicate task id":
        first = requests.post(url, json=body, auth=auth, timeout=120)
        assert first.status_code == 200
    if name == "100 MB payload":
        status_line, text = _oversized_post(server["port"], f"/sdapi/v1/{path}", len(body))
        assert f" {status} " in status_line and message in text, (status_line, text)
        return
    if isinstance(body, bytes):
        r = requests.request(method, url, data=body, auth=auth, headers={"content-type": "application/json"},
                             timeout=120)
    else:
        r = requests.request(method, url, json=body, auth=auth, timeout=120)
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert message in r.text, r.text[:300]


def _oversized_post(port: int, path: str, length: int) -> tuple[str, str]:
    """Announce a huge body and read the answer before sending it (as a server that refuses early allows)."""
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode())
        sock.sendall(b"x" * 65536)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, text = answer.decode(errors="replace").partition("\r\n\r\n")
    return head.splitlines()[0], text


def test_bad_inputs_harm_nothing(server):
    data = server["data"]
    before = {p for p in data.rglob("*") if p.is_file() and "outputs" not in p.parts}
    for name, method, path, body, auth, status, message in BAD:
        url = server["base"] + (path if path.startswith("/") else f"/sdapi/v1/{path}")
        if name in ("duplicate task id", "100 MB payload"):
            continue
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        requests.request(method, url, auth=(USER, PASSWORD) if auth == "ok" else auth, timeout=120, **kwargs)
    after = {p for p in data.rglob("*") if p.is_file() and "outputs" not in p.parts}
    assert after - before <= {data / "server.log"}, sorted(map(str, after - before))
    assert (data / "secret.txt").read_text() == "outside the model folders"
    r = server["session"].post(server["base"] + "/sdapi/v1/txt2img", json=GOOD, timeout=120)
    assert r.status_code == 200 and server["proc"].poll() is None


def test_cors_is_closed_by_default(server):
    r = requests.options(server["base"] + "/sdapi/v1/txt2img",
                         headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}


def test_api_beside_the_ui_on_one_port_with_cors_allowed(tmp_path):
    with run_app("--api", "--cors-allow-origins", "http://good.example", "--data-dir", tmp_path,
                 log_dir=tmp_path) as app:
        base = app.base
        assert "UI and API" in app.log.read_text()
        page = requests.get(base + "/", timeout=30)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert requests.get(base + "/sdapi/v1/samplers", timeout=30).json()[0]["name"] == "DPM++ 2M"
        assert requests.get(base + "/docs", timeout=30).status_code == 200
        good = requests.options(base + "/sdapi/v1/txt2img", headers={
            "Origin": "http://good.example", "Access-Control-Request-Method": "POST"}, timeout=30)
        evil = requests.options(base + "/sdapi/v1/txt2img", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}, timeout=30)
        assert good.headers.get("access-control-allow-origin") == "http://good.example"
        assert evil.headers.get("access-control-allow-origin") != "http://evil.example"


def test_api_server_fields(server):
    """Fields acted on by the server rather than the engine (``tests/test_api_fields.py`` walks the rest)."""
    base, session = server["base"], server["session"]
    outputs = server["data"] / "outputs"
    before = sorted(outputs.rglob("*.png")) if outputs.exists() else []
    # do_not_save_samples wins over save_images, as it does in A1111's processing
    r = session.post(f"{base}/sdapi/v1/txt2img", json={**GOOD, "save_images": True, "do_not_save_samples": True})
    assert r.status_code == 200 and (sorted(outputs.rglob("*.png")) if outputs.exists() else []) == before
    # include_init_images: the parameters echo keeps the input image
    echo = session.post(f"{base}/sdapi/v1/img2img", json={**GOOD, "init_images": [PNG], "include_init_images": True})
    plain = session.post(f"{base}/sdapi/v1/img2img", json={**GOOD, "init_images": [PNG]})
    assert echo.json()["parameters"]["init_images"] == [PNG] and plain.json()["parameters"]["init_images"] is None
    # override_settings_restore_afterwards: false keeps the override as the setting
    assert session.get(f"{base}/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    kept = session.post(f"{base}/sdapi/v1/txt2img", json={**GOOD, "override_settings": {"CLIP_stop_at_last_layers": 2},
                                                          "override_settings_restore_afterwards": False})
    assert kept.status_code == 200 and "Clip skip: 2" in json.loads(kept.json()["info"])["infotexts"][0]
    try:
        assert session.get(f"{base}/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    finally:
        session.post(f"{base}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})


def test_hires_fix_over_the_api(api, server):
    result = api.txt2img(prompt="a large red circle on a white background, top left", seed=3, width=64, height=64,
                         steps=4, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.5)
    assert result.image.size == (96, 96)
    params = infotext.parse(result.info["infotexts"][0])
    assert (params["Size-1"], params["Hires upscale"], params["Hires upscaler"], params["Denoising strength"]) == \
        ("64", "1.5", "Latent", "0.5")
    base, session = server["base"], server["session"]
    assert [u["name"] for u in session.get(f"{base}/sdapi/v1/upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert session.get(f"{base}/sdapi/v1/latent-upscale-modes").json()[0] == {"name": "Latent"}
