"""The extension hook: discovery and isolation, every kind of patch, and the example extension.

Extensions are written into temporary folders here (a copy of the shipped example beside broken ones) and
loaded through the real manager; jobs run on a tiny random checkpoint through the real engine.
"""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from webui.engine.patches import JobPatches, ModelPatcher, WeightPatch
from webui.engine.request import GenerationRequest
from webui.engine.unet import UNetExtras
from webui.hooks.registry import ExtensionManager
from webui.options import Options
from webui.paths import PROJECT_ROOT, Paths
from webui.jobs.parameters import extra_params

EXAMPLE = PROJECT_ROOT / "extensions" / "soft_contrast"


def write_extension(root: Path, name: str, body: str, manifest: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(manifest if manifest is not None else f'name = "{name}"\nversion = "0.1"\n')
    (folder / "__init__.py").write_text(textwrap.dedent(body))
    return folder


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red cat", "width": 64, "height": 64, "steps": 4, "seed": 2, **fields})


def manager_for(root: Path, tmp_path: Path, disabled=()) -> ExtensionManager:
    options = Options(tmp_path / "config.json")
    if disabled:
        options.update({"disabled_extensions": list(disabled)})
    logs = []
    manager = ExtensionManager(root, Paths(root=tmp_path), options, logs.append)
    manager.logs = logs
    manager.load()
    return manager


@pytest.fixture
def extensions(tmp_path):
    root = tmp_path / "extensions"
    root.mkdir()
    shutil.copytree(EXAMPLE, root / "soft_contrast")
    write_extension(root, "import_error", "raise RuntimeError('broken on import')\n")
    write_extension(root, "no_setup", "X = 1\n")
    write_extension(root, "bad_manifest", "def setup(hooks): pass\n", manifest="name = 'has space'\n")
    write_extension(root, "needs_missing", "def setup(hooks): pass\n",
                    manifest='name = "needs_missing"\nrequires = ["no_such_module_xyz"]\n')
    write_extension(root, "raises_in_job", """
        def setup(hooks):
            @hooks.on_job
            def prepare(ctx, args):
                raise ValueError("job callback broke")
    """)
    write_extension(root, "raises_in_sampling", """
        def setup(hooks):
            @hooks.on_job
            def prepare(ctx, args):
                def boom(x, t, context, info):
                    raise RuntimeError("residuals broke at step " + str(info.call))
                ctx.patches.residuals.append(boom)
                def wrap(apply, x, sigma, context, info):
                    raise RuntimeError("wrapper broke")
                ctx.patches.model_wrappers.append(wrap)
    """)
    (root / "not_an_extension").mkdir()            # a plain folder: ignored
    return manager_for(root, tmp_path)


def test_discovery_and_failures_are_reported(extensions):
    states = {name: ext.state for name, ext in extensions.extensions.items()}
    assert states == {"soft_contrast": "loaded", "import_error": "failed", "no_setup": "failed",
                      "bad_manifest": "failed", "needs_missing": "failed", "raises_in_job": "loaded",
                      "raises_in_sampling": "loaded"}
    errors = {name: " ".join(ext.errors) for name, ext in extensions.extensions.items()}
    assert "broken on import" in errors["import_error"] and "setup(hooks)" in errors["no_setup"]
    assert "letters, digits" in errors["bad_manifest"] and "no_such_module_xyz" in errors["needs_missing"]
    assert any("broken on import" in line for line in extensions.logs)


def test_a_failing_extension_is_skipped_and_the_job_goes_on(extensions, engine):
    hooks = extensions.job_hooks({"Soft contrast": {"enabled": True, "strength": 0.5}})
    result = engine.generate(request(), hooks=hooks)
    assert len(result.images) == 1 and extra_params(result.facts)["Soft contrast"] == 0.5
    joined = " | ".join(result.warnings)
    assert "raises_in_job: on_job failed: ValueError: job callback broke" in joined
    assert "residuals failed" in joined and "model wrapper failed" in joined
    assert sum("residuals failed" in w for w in result.warnings) == 1       # reported once per job
    # with the broken ones disabled the same job gives the same picture
    extensions.set_enabled(["soft_contrast"])
    clean = engine.generate(request(), hooks=extensions.job_hooks({"Soft contrast": {"enabled": True, "strength": 0.5}}))
    assert not clean.warnings
    assert clean.images[0].image.tobytes() == result.images[0].image.tobytes()


def test_example_extension_changes_the_picture_as_it_says(extensions, engine):
    plain = engine.generate(request())
    soft = engine.generate(request(), hooks=extensions.job_hooks({"Soft contrast": {"enabled": True, "strength": 0.6}}))
    off = engine.generate(request(), hooks=extensions.job_hooks({"Soft contrast": {"enabled": False}}))
    assert off.images[0].image.tobytes() == plain.images[0].image.tobytes() \
        and "Soft contrast" not in extra_params(off.facts)
    import numpy as np
    a, b = (np.asarray(r.images[0].image, dtype=np.float32) for r in (plain, soft))
    assert b.std() < a.std()          # softer contrast


def test_disabled_extensions_are_not_imported_and_api_titles_resolve(tmp_path):
    root = tmp_path / "extensions"
    root.mkdir()
    shutil.copytree(EXAMPLE, root / "soft_contrast")
    manager = manager_for(root, tmp_path, disabled=["soft_contrast"])
    assert manager.extensions["soft_contrast"].state == "disabled"
    with pytest.raises(ValueError, match="no extension titled"):
        manager.api_script_args({"Soft contrast": {"args": [True, 0.3]}})
    manager.set_enabled(["soft_contrast"])
    assert manager.api_script_args({"soft contrast": {"args": [True, 0.3]}}) == \
        {"Soft contrast": {"enabled": True, "strength": 0.3}}
    with pytest.raises(ValueError, match="strength"):
        manager.api_script_args({"Soft contrast": {"args": [True, 3]}})
    assert Options(tmp_path / "config.json")["disabled_extensions"] == []


# ---------------------------------------------------------------------- the patches themselves

def test_weight_patches_restore_bit_exactly_after_100_cycles(engine):
    model = engine.model
    original = {k: v.clone() for k, v in model.unet.state_dict().items()}
    original_text = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    patcher = ModelPatcher()
    generator = torch.Generator().manual_seed(0)
    names = [n for n, m in model.unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][:20]
    for cycle in range(100):
        scale = float(torch.rand(1, generator=generator)) * 2 - 1
        patches = [WeightPatch("unet", n, lambda w, s=scale: torch.randn(w.shape, generator=generator) * s,
                               key=None) for n in names]
        patches.append(WeightPatch("text", "encoder.layers.0.self_attn.q_proj", lambda w: w * 0.5, strength=0.3))
        with patcher.applied(model, JobPatches(weights=patches)):
            assert not torch.equal(model.unet.get_submodule(names[0]).weight, original[f"{names[0]}.weight"])
    assert all(torch.equal(v, original[k]) for k, v in model.unet.state_dict().items())
    assert all(torch.equal(v, original_text[k]) for k, v in model.text_model.state_dict().items())


def test_keyed_patches_stay_merged_for_the_next_job_and_go_when_it_differs(engine):
    model = engine.model
    name = "input_blocks.1.1.proj_in"
    original = model.unet.get_submodule(name).weight.clone()
    calls = []

    def delta(w):
        calls.append(1)
        return torch.ones_like(w)
    patcher = ModelPatcher()
    for _ in range(3):
        with patcher.applied(model, JobPatches(weights=[WeightPatch("unet", name, delta, 0.5, key=("same", 1))])):
            assert torch.equal(model.unet.get_submodule(name).weight, original + 0.5)
    assert len(calls) == 1                        # merged once, kept for the next two jobs
    with patcher.applied(model, JobPatches()):
        assert torch.equal(model.unet.get_submodule(name).weight, original)


def test_residuals_wrappers_and_callbacks_reach_the_unet(engine):
    unet = engine.model.unet
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 77, 64)
    with torch.no_grad():
        base = unet(x, t, context)
        skips = len(unet.input_blocks)
        zero = unet(x, t, context, extras=UNetExtras([None] * skips, None, [None] * len(unet.output_blocks)))
        assert torch.equal(base, zero)
        middle = unet(x, t, context, extras=UNetExtras(middle_residual=torch.ones(1)))
        assert not torch.equal(base, middle)
        seen = []
        identity = {"middle_block": [lambda apply, h, emb, ctx: (seen.append(h.shape), apply(h, emb, ctx))[1]]}
        assert torch.equal(base, unet(x, t, context, extras=UNetExtras(block_wrappers=identity)))
        assert len(seen) == 1
        with pytest.raises(ValueError, match="input residuals"):
            unet(x, t, context, extras=UNetExtras(input_residuals=[None]))


def test_hooks_see_each_call_and_step(engine):
    from webui.engine.job_hooks import JobHooks
    log = {"calls": [], "steps": [], "text": 0}

    def prepare(ctx):
        p = ctx.patches

        def unet_wrapper(apply, x, t, context, extras):
            log["calls"].append(x.shape[0])
            return apply(x, t, context, extras)

        def residuals(x, t, context, info):
            log.setdefault("info", []).append((info.call, info.sampling_step, info.total_steps, info.uncond_rows))
            return None

        def text_hook(module, args, output):
            log["text"] += 1
        p.unet_wrappers.append(unet_wrapper)
        p.residuals.append(residuals)
        p.step_callbacks.append(lambda progress: log["steps"].append(progress.step))
        p.text_hooks.append(("final_layer_norm", text_hook))
    result = engine.generate(request(steps=3), hooks=JobHooks(prepare=[prepare]))
    assert len(result.images) == 1
    assert log["calls"] == [2, 2, 2] and log["steps"] == [1, 2, 3] and log["text"] == 2   # cond + uncond
    # A1111's sampling_step: the last finished step (0 during the first two calls)
    assert log["info"] == [(0, 0, 3, [False, True]), (1, 0, 3, [False, True]), (2, 1, 3, [False, True])]


# ---------------------------------------------------------------------- through the server: API and browser

@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    from webui.paths import DEMO_CHECKPOINT

    data = tmp_path_factory.mktemp("ext_server")
    root = data / "extensions"
    root.mkdir()
    shutil.copytree(EXAMPLE, root / "soft_contrast")
    write_extension(root, "import_error", "raise RuntimeError('broken on import')\n")
    write_extension(root, "raises_in_job", """
        def setup(hooks):
            hooks.on_job(lambda ctx, args: 1 / 0)
            hooks.route("/boom", lambda: 1 / 0)
    """)
    # wait_model: against a hang, the demo model loads in seconds
    return app_server("--api", "--api-auth", "u:p", "--extensions-dir", root, "--ckpt", DEMO_CHECKPOINT, data=data,
                      auth=("u", "p"), wait_model=180)


def test_extensions_over_the_api(server):
    import json

    import requests
    base, session = server["base"], server["session"]
    listed = {e["name"]: e for e in session.get(f"{base}/sdapi/v1/extensions").json()}
    assert listed["soft_contrast"]["state"] == "loaded" and listed["soft_contrast"]["version"] == "1.0.0"
    assert listed["import_error"]["state"] == "failed" and "broken on import" in listed["import_error"]["errors"][0]
    assert sorted(session.get(f"{base}/sdapi/v1/scripts").json()["txt2img"]) == [
        "prompt matrix", "prompts from file or textbox", "raises_in_job", "soft contrast", "x/y/z plot"]
    body = {"prompt": "a large red circle on a white background", "steps": 6, "width": 64, "height": 64,
            "seed": 4, "alwayson_scripts": {"Soft contrast": {"args": [True, 0.5]}}}
    info = json.loads(session.post(f"{base}/sdapi/v1/txt2img", json=body).json()["info"])
    text = info["infotexts"][0]
    assert "Soft contrast: 0.5" in text and "Soft contrast version: 1.0.0" in text
    assert any("raises_in_job: on_job failed: ZeroDivisionError" in w for w in info["warnings"])
    bad = session.post(f"{base}/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"Nope": {"args": []}}})
    assert bad.status_code == 422 and "Soft contrast" in bad.text
    bad = session.post(f"{base}/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"Soft contrast": {"args": [1]}}})
    assert bad.status_code == 422 and "enabled: bool" in bad.text
    # extension routes: behind --api-auth like every route; a route that raises answers 500, the app goes on
    assert requests.get(f"{base}/extensions-api/soft_contrast/status").status_code == 401
    status = session.get(f"{base}/extensions-api/soft_contrast/status").json()
    assert status["jobs"] >= 1 and status["model"] == "webui-demo-64px.safetensors"
    boom = session.get(f"{base}/extensions-api/raises_in_job/boom")
    assert boom.status_code == 500 and "ZeroDivisionError" in boom.text
    assert session.get(f"{base}/sdapi/v1/progress").status_code == 200


def test_example_extension_in_the_browser(server, tmp_path):
    import os

    from tests.test_ui_browser import CHROMIUM, FLAGS, infotext_of, open_page
    playwright = pytest.importorskip("playwright.sync_api")
    artifacts = Path(os.environ.get("WEBUI_TEST_ARTIFACTS") or tmp_path)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = open_page(browser, server)
        page.click("#txt2img_ext_soft_contrast")                     # open the accordion
        page.check("#txt2img_soft_contrast_enabled input")
        box = page.locator("#txt2img_soft_contrast_strength input[type=number]").first
        box.fill("0.45")
        box.press("Enter")
        page.fill("#txt2img_prompt textarea", "a large red circle on a white background")
        page.keyboard.press("Control+Enter")
        page.wait_for_function("document.querySelector('#html_info_txt2img').innerText.includes('Soft contrast')",
                               timeout=60_000)
        text = infotext_of(page, "txt2img")
        assert "Soft contrast: 0.45" in text and "raises_in_job" in text           # the warning is shown
        page.click("#tab_extensions-button")
        page.wait_for_selector("#extensions_list")
        listing = page.inner_text("#extensions_list")
        assert "broken on import" in listing and "Soft contrast" in listing
        page.screenshot(path=str(artifacts / "extensions_tab.png"), full_page=True)
        browser.close()


def _pixels_shown(page, selector: str):
    """The pixels of the ``<img>`` at ``selector`` as the browser decoded them (drawn on a canvas), HWC uint8 RGB."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    url = page.eval_on_selector(selector, """img => {
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        canvas.getContext('2d').drawImage(img, 0, 0);
        return canvas.toDataURL('image/png');
    }""")
    assert url.startswith("data:image/png;base64,"), url[:80]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_lora_browser_and_controlnet_preview_in_the_browser(tmp_path):
    """The shipped LoRA and ControlNet sections: a card click writes the tag, Preview shows the hint (the
    preprocessor's output for the uploaded picture, not the picture itself)."""
    import os

    from tests.app_server import run_app
    from tests.test_ui_browser import CHROMIUM, FLAGS, open_page
    from webui.demo import dataset as ds
    playwright = pytest.importorskip("playwright.sync_api")
    artifacts = Path(os.environ.get("WEBUI_TEST_ARTIFACTS") or tmp_path)
    lora_dir = tmp_path / "models" / "lora"
    lora_dir.mkdir(parents=True)
    import safetensors.torch
    safetensors.torch.save_file({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 8)},
                                str(lora_dir / "tiny-style.safetensors"), metadata={"ss_network_dim": "4"})
    picture = tmp_path / "scene.png"
    ds.render(ds.Scene("white", (ds.Obj("square", "red", "large", "top left"),)), 64).save(picture)
    with run_app("--data-dir", tmp_path, log_dir=tmp_path) as app, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = open_page(browser, {"url": app.base + "/"})
        page.fill("#txt2img_prompt textarea", "a red square")
        page.click("#txt2img_ext_lora")
        page.click("#txt2img_lora_cards >> text=tiny-style")
        page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === "
                               "'a red square, <lora:tiny-style:1>'")
        page.click("#txt2img_ext_controlnet")
        page.set_input_files("#txt2img_controlnet_0_image input[type=file]", str(picture))
        page.wait_for_timeout(500)
        page.click("#txt2img_controlnet_0_module input")
        page.click("ul[role=listbox] li:has-text('canny')")
        page.click("#txt2img_controlnet_0_run_preview")
        shown = "#txt2img_controlnet_0_preview img"
        page.wait_for_function("sel => { const img = document.querySelector(sel); "
                               "return img !== null && img.complete && img.naturalWidth > 0; }", arg=shown,
                               timeout=30_000)
        page.screenshot(path=str(artifacts / "lora_controlnet.png"), full_page=True)
        box = page.locator(shown).bounding_box()
        assert page.locator(shown).is_visible() and box["width"] > 50 and box["height"] > 50, box
        hint = _pixels_shown(page, shown)
        browser.close()
    # the hint shown is canny's edges of the picture at the preprocessor resolution (512, thresholds 100 / 200)
    import numpy as np
    from PIL import Image

    from extensions.controlnet import preprocessors as pp
    source = np.asarray(Image.open(picture).convert("RGB"))
    expected = pp.run_preprocessor("canny", source, 512, 100, 200)
    assert hint.shape == expected.shape == (512, 512, 3), (hint.shape, expected.shape)
    edges, expected_edges = hint.min(axis=2) > 127, expected.min(axis=2) > 127
    assert 0.001 < edges.mean() < 0.2, edges.mean()                 # white edge lines on black, not blank
    overlap = (edges & expected_edges).sum() / (edges | expected_edges).sum()
    assert overlap > 0.95, overlap                                   # the same edges (up to lossy image encoding)
    upscaled = np.asarray(Image.open(picture).convert("RGB").resize((512, 512)), np.int16)
    assert np.abs(hint.astype(np.int16) - upscaled).mean() > 100     # not the uploaded picture
