"""A1111's hires fix, X/Y/Z plot and Extras in the web UI, in headless Chromium on the shipped demo model:
the picture and its infotext come out as A1111's would.

Screenshots go to ``$WEBUI_TEST_ARTIFACTS`` (default: ``<pytest tmp>/screenshots``).
"""
from __future__ import annotations

import pytest

from tests.test_ui_browser import (CHROMIUM, artifacts, browser, gallery_images, generate,  # noqa: F401
                                   open_page, set_number)
from webui.paths import DEMO_CHECKPOINT

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason="no Debian chromium"),
              pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not shipped")]


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    return app_server(data=tmp_path_factory.mktemp("a1111-features"))


def _pick(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.click(f"ul[role=listbox] li:has-text('{option}')")


def test_hires_fix_in_the_browser(server, browser, artifacts):  # noqa: F811
    page = open_page(browser, server)
    set_number(page, "txt2img_steps", 6)
    page.click("#txt2img_hr")                                # open "Hires. fix"
    page.check("#txt2img_enable_hr input")
    set_number(page, "txt2img_hr_scale", 1.5)
    set_number(page, "txt2img_denoising_strength", 0.5)
    text = generate(page, "txt2img", "a large red circle on a white background, top left", seed=41)
    assert "Size: 64x64" in text and "Hires upscale: 1.5" in text and "Denoising strength: 0.5" in text
    images = gallery_images(page, "txt2img")
    assert [im.size for im in images] == [(96, 96)]
    page.screenshot(path=str(artifacts / "hires-fix.png"), full_page=True)
    page.close()


def test_xyz_plot_in_the_browser(server, browser, artifacts):  # noqa: F811
    page = open_page(browser, server)
    set_number(page, "txt2img_steps", 4)
    _pick(page, "txt2img_script", "X/Y/Z plot")
    _pick(page, "txt2img_script_XYZ_plot_0", "Steps")
    page.fill("#txt2img_script_XYZ_plot_1 textarea, #txt2img_script_XYZ_plot_1 input", "2, 8")
    _pick(page, "txt2img_script_XYZ_plot_3", "CFG Scale")
    page.fill("#txt2img_script_XYZ_plot_4 textarea, #txt2img_script_XYZ_plot_4 input", "3, 9")
    text = generate(page, "txt2img", "a large blue square on a yellow background, center", seed=8, timeout=120_000)
    assert "Script: X/Y/Z plot" in text and "X Type: Steps" in text and "Y Type: CFG Scale" in text
    grid = gallery_images(page, "txt2img")[0]
    assert grid.width > 2 * 64 and grid.height > 2 * 64           # 2 x 2 cells plus the labels
    page.screenshot(path=str(artifacts / "xyz-plot.png"), full_page=True)
    grid.save(artifacts / "xyz-grid.png")
    page.close()


def test_variation_seed_in_the_browser(server, browser):  # noqa: F811
    page = open_page(browser, server)
    set_number(page, "txt2img_steps", 4)
    page.check("#txt2img_subseed_show input")
    set_number(page, "txt2img_subseed", 5)
    set_number(page, "txt2img_subseed_strength", 0.5)
    text = generate(page, "txt2img", "a large red circle on a white background, top left", seed=9)
    assert "Variation seed: 5" in text and "Variation seed strength: 0.5" in text
    page.close()
