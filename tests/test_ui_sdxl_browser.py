"""An SDXL model and its refiner in the web UI, in headless Chromium: the sliders start at SDXL's native
size, the Refiner section switches models mid-sampling and the infotext says so.

Screenshots go to ``$WEBUI_TEST_ARTIFACTS`` (default: ``<pytest tmp>/screenshots``).
"""
from __future__ import annotations

import pytest

from tests.test_ui_browser import CHROMIUM, FLAGS, artifacts, generate, infotext_of, set_number  # noqa: F401
from tests.tiny import tiny_checkpoint

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason="no Debian chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    data = tmp_path_factory.mktemp("ui-sdxl")
    ckpts = data / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    base = tiny_checkpoint(ckpts / "xl-base.safetensors", "sdxl")
    return app_server("--ckpt", base, data=data, checkpoints=ckpts)


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(server["url"])
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        page.wait_for_function("document.querySelector('#model_status').innerText.includes('Model:')",
                               timeout=120_000)
        yield page
        browser.close()


def test_sdxl_starts_at_its_native_size_and_refines(server, page, artifacts):  # noqa: F811
    assert "xl-base.safetensors (SDXL, eps-prediction)" in page.inner_text("#model_status")
    assert page.locator("#txt2img_width input[type=number]").input_value() == "1024"
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 4)
    plain = generate(page, "txt2img", "a red cat", seed=11)
    assert "Refiner" not in plain
    # a refiner copied in while the page is open appears after the refresh button
    tiny_checkpoint(server["checkpoints"] / "xl-refiner.safetensors", "sdxl-refiner")
    page.click("#refresh_checkpoints")
    page.click("#txt2img_refiner")                                  # open the accordion
    page.click("#txt2img_refiner_checkpoint input")
    page.click("ul[role=listbox] li:has-text('xl-refiner')")
    set_number(page, "txt2img_refiner_switch_at", 0.5)
    text = generate(page, "txt2img", "a red cat", seed=12)
    assert "Refiner: xl-refiner [" in text and "Refiner switch at: 0.5" in text
    page.screenshot(path=str(artifacts / "sdxl-refiner.png"), full_page=True)
