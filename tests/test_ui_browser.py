"""The web UI end to end in headless Chromium (Debian's chromium, driven by Playwright), on the shipped demo
model: start ``python app.py`` as a user does, generate, read the infotext, PNG Info round trip, img2img and
inpaint, interrupt, and two browsers at once each getting their own results.

Screenshots go to ``$WEBUI_TEST_ARTIFACTS`` (default: ``<pytest tmp>/screenshots``).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.demo import dataset as ds
from webui.jobs import infotext, saving
from webui.paths import DEMO_CHECKPOINT

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not in the repository"),
]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("WEBUI_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    """``python app.py`` on a free port, data in a temporary folder (no checkpoints: the demo model is used)."""
    data = tmp_path_factory.mktemp("data")
    (data / "styles.csv").write_text('name,prompt,negative_prompt\nOn white,"{prompt} on a white background",\n')
    return app_server(data=data)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def open_page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(server["url"])
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    page.wait_for_function("document.querySelector('#model_status').innerText.includes('Model:')", timeout=120_000)
    return page


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def infotext_of(page, kind: str) -> str:
    return page.inner_text(f"#html_info_{kind}")


def gallery_images(page, kind: str) -> list[Image.Image]:
    """The images the gallery shows, fetched from the server like the browser does."""
    import urllib.request

    srcs = page.eval_on_selector_all(f"#{kind}_gallery img", "els => els.map(e => e.src)")
    images = []
    for src in dict.fromkeys(srcs):
        with urllib.request.urlopen(src) as r:
            from io import BytesIO
            images.append(Image.open(BytesIO(r.read())).convert("RGB"))
    return images


def generate(page, kind: str, prompt: str, seed: int, timeout: float = 60_000) -> str:
    page.fill(f"#{kind}_prompt textarea", prompt)
    set_number(page, f"{kind}_seed", seed)
    page.keyboard.press("Control+Enter")
    page.wait_for_function(f"document.querySelector('#html_info_{kind}').innerText.includes('Seed: {seed}')",
                           timeout=timeout)
    return infotext_of(page, kind)


def test_page_loads_and_shows_the_model(server, browser, artifacts):
    page = open_page(browser, server)       # the start-up time is measured by bench/bench_startup.py
    assert "webui-demo-64px" in page.inner_text("#model_status")
    tabs = page.inner_text("#tabs")
    for name in ("txt2img", "img2img", "PNG Info", "Settings", "Extensions"):
        assert name in tabs
    # the sliders start at the model's native size
    assert page.locator("#txt2img_width input[type=number]").input_value() == "64"
    page.fill("#txt2img_prompt textarea", "a large red circle on a white background, top left")
    page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText.trim() === '11/75'")
    page.screenshot(path=str(artifacts / "start.png"), full_page=True)
    page.close()


def test_styles_token_counter_and_clip_skip(server, browser, artifacts):
    page = open_page(browser, server)
    counter = "document.querySelector('#txt2img_token_counter').innerText.trim()"
    page.fill("#txt2img_prompt textarea", ", ".join(["cat"] * 40))        # 79 tokens: two chunks
    page.wait_for_function(f"{counter} === '79/150'")
    page.fill("#txt2img_prompt textarea", "(a large red circle:1.2) [top left]")
    page.wait_for_function(f"{counter} === '6/75'")                       # emphasis syntax is not counted
    page.click("#txt2img_styles input")
    page.click("ul[role=listbox] li:has-text('On white')")
    page.wait_for_function(f"{counter} === '10/75'")                      # the style's words count
    page.keyboard.press("Escape")
    set_number(page, "txt2img_clip_skip", 2)
    text = generate(page, "txt2img", "(a large red circle:1.2) [top left]", seed=21)
    assert text.startswith("(a large red circle:1.2) [top left] on a white background")
    assert "Clip skip: 2" in text
    page.screenshot(path=str(artifacts / "styles.png"), full_page=True)
    page.click("#txt2img_style_apply")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.endsWith('white background')")
    page.close()


def test_txt2img_generates_saves_and_png_info_round_trips(server, browser, artifacts):
    page = open_page(browser, server)
    prompt = "a large red square on a white background, center"
    text = generate(page, "txt2img", prompt, seed=1234)
    assert prompt in text and "Steps: 20" in text and "Sampler: Euler" in text and "Size: 64x64" in text
    assert "Model: webui-demo-64px" in text
    images = gallery_images(page, "txt2img")
    assert len(images) == 1 and images[0].size == (64, 64)
    judged = ds.analyse(images[0])
    assert judged["found"] and judged["colour"] == "red", judged
    page.screenshot(path=str(artifacts / "txt2img.png"), full_page=True)

    saved = sorted((server["data"] / "outputs" / "txt2img-images").rglob("*-1234.png"))
    assert saved, "the image was not saved under outputs/txt2img-images/<date>/"
    stored = saving.read_infotext(saved[-1])
    assert infotext.parse_typed(stored).seed == 1234 and infotext.parse_typed(stored).prompt == prompt

    # PNG Info: drop the saved file, send its parameters to txt2img after changing the fields
    page.fill("#txt2img_prompt textarea", "something else")
    set_number(page, "txt2img_seed", 5)
    page.click("#tab_pnginfo-button")
    page.set_input_files("#pnginfo_image input[type=file]", str(saved[-1]))
    page.wait_for_function("document.querySelector('#pnginfo_html').innerText.includes('Seed: 1234')")
    page.screenshot(path=str(artifacts / "pnginfo.png"), full_page=True)
    page.click("#pnginfo_send_txt2img")
    page.wait_for_function(
        f"document.querySelector('#txt2img_prompt textarea').value === {prompt!r}", timeout=20_000)
    assert page.locator("#txt2img_seed input").input_value() == "1234"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "20"
    page.close()


def _upload_scene(tmp_path: Path, scene: ds.Scene) -> Path:
    path = tmp_path / "init.png"
    ds.render(scene, 64).save(path)
    return path


def test_img2img_and_inpaint_run_in_the_browser(server, browser, artifacts, tmp_path):
    page = open_page(browser, server)
    page.click("#tab_img2img-button")
    scene = ds.Scene("white", (ds.Obj("square", "blue", "large", "top left"),))
    init = _upload_scene(tmp_path, scene)
    page.set_input_files("#img2img_image input[type=file]", str(init))
    page.wait_for_selector("#img2img_image img")
    set_number(page, "img2img_denoising_strength", 0.3)
    text = generate(page, "img2img", "a large blue square on a white background, top left", seed=42)
    assert "Denoising strength: 0.3" in text
    [out] = gallery_images(page, "img2img")
    judged = ds.analyse(out)
    assert judged["found"] and judged["position"] == "top left" and judged["colour"] == "blue", judged
    page.screenshot(path=str(artifacts / "img2img.png"), full_page=True)

    # inpaint upload: image + mask; only the masked half may change
    page.click("#img2img_inpaint_upload_tab-button")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    page.set_input_files("#img2img_inpaint_base input[type=file]", str(init))
    page.set_input_files("#img2img_inpaint_mask input[type=file]", str(mask_path))
    page.wait_for_selector("#img2img_inpaint_mask img")
    set_number(page, "img2img_denoising_strength", 1.0)
    text = generate(page, "img2img", "a large red circle on a white background, top right", seed=43)
    assert "Mask blur: 4" in text
    [out] = gallery_images(page, "img2img")
    before, after = np.asarray(Image.open(init).convert("RGB"), np.int16), np.asarray(out, np.int16)
    left = np.abs(after[:, :24] - before[:, :24]).mean()
    right = np.abs(after[:, 40:] - before[:, 40:]).mean()
    assert left < 6 and right > left, (left, right)

    # inpaint with the brush: send the result to the Inpaint tab, paint a stroke, generate
    page.click("#img2img_send_to_inpaint")
    page.wait_for_function("document.querySelector('#img2img_inpaint_editor canvas') !== null")
    time.sleep(3)  # the editor loads the image after the tab switch
    page.click("#img2img_inpaint_editor button[aria-label='Brush']")
    canvas = page.locator("#img2img_inpaint_editor canvas").first
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 30, y)
    page.mouse.down()
    for dx in range(-30, 31, 5):
        page.mouse.move(x + dx, y)
    page.mouse.up()
    page.screenshot(path=str(artifacts / "inpaint_mask.png"), full_page=True)
    text = generate(page, "img2img", "a large green circle on a white background, top left", seed=44)
    assert "Mask blur: 4" in text
    page.screenshot(path=str(artifacts / "inpaint_result.png"), full_page=True)
    page.close()


def test_interrupt_stops_the_job_and_keeps_finished_images(server, browser, artifacts):
    page = open_page(browser, server)
    page.fill("#txt2img_prompt textarea", "a small yellow diamond on a black background, bottom left")
    set_number(page, "txt2img_steps", 150)
    set_number(page, "txt2img_batch_count", 40)
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_interrupt", state="visible")
    page.wait_for_function("/Step \\d+\\/6000/.test(document.querySelector('#txt2img_progress').innerText)")
    page.screenshot(path=str(artifacts / "progress.png"), full_page=True)
    page.click("#txt2img_interrupt")
    page.wait_for_function("document.querySelector('#html_info_txt2img').innerText.includes('interrupted')",
                           timeout=60_000)
    assert page.locator("#txt2img_generate").is_visible()
    assert 0 < len(gallery_images(page, "txt2img")) < 40
    page.close()


def test_two_browsers_each_get_their_own_results(server, browser):
    a, b = browser.new_context(), browser.new_context()
    pages = []
    for context in (a, b):
        page = context.new_page()
        page.goto(server["url"])
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        pages.append(page)
    jobs = [("a large red circle on a white background, top left", 111, pages[0]),
            ("a large blue square on a yellow background, bottom right", 222, pages[1])]
    for prompt, seed, page in jobs:
        page.fill("#txt2img_prompt textarea", prompt)
        set_number(page, "txt2img_seed", seed)
        set_number(page, "txt2img_batch_count", 3)
    for _, _, page in jobs:
        page.click("#txt2img_generate")
    for prompt, seed, page in jobs:
        page.wait_for_function(f"document.querySelector('#html_info_txt2img').innerText.includes('Seed: {seed}')",
                               timeout=60_000)
        text = infotext_of(page, "txt2img")
        other = [s for _, s, _ in jobs if s != seed][0]
        assert prompt in text and f"Seed: {other}" not in text
        assert len(gallery_images(page, "txt2img")) == 3
    a.close()
    b.close()
