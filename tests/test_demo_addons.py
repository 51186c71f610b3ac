"""The shipped demo LoRA and ControlNet do what they are for, judged on the pictures (like
tests/test_demo_model.py): the LoRA draws the shapes outlined, the ControlNet puts the shape where the
mask says. Both go through the real extensions, as a user's <lora:...> tag or ControlNet unit would."""
from __future__ import annotations

import numpy as np
import pytest

from webui.demo import dataset as ds
from webui.engine.request import GenerationRequest
from webui.hooks.registry import ExtensionManager
from webui.options import Options
from webui.paths import DEMO_CHECKPOINT, PROJECT_ROOT, Paths

LORA = PROJECT_ROOT / "models" / "lora" / "webui-demo-outline.safetensors"
CONTROLNET = PROJECT_ROOT / "models" / "controlnet" / "webui-demo-mask.safetensors"
pytestmark = pytest.mark.skipif(not (DEMO_CHECKPOINT.is_file() and LORA.is_file() and CONTROLNET.is_file()),
                                reason="the demo files are not shipped")
CORNERS = ("top left", "top right", "bottom left", "bottom right", "center")


@pytest.fixture(scope="module")
def env(tmp_path_factory, make_engine):
    root = tmp_path_factory.mktemp("addons")
    manager = ExtensionManager(PROJECT_ROOT / "extensions", Paths(root=root), Options(root / "config.json"),
                               lambda m: None)
    manager.load()
    engine = make_engine(DEMO_CHECKPOINT)
    return engine, manager


def cases(n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        colour, background = rng.choice(list(ds.COLOURS), 2, replace=False)
        shape = ("circle", "square")[i % 2]
        out.append((str(colour), str(background), shape, CORNERS[i % len(CORNERS)]))
    return out


def run(env, prompt: str, seed: int, script_args=None):
    engine, manager = env
    request = GenerationRequest(prompt=prompt, width=64, height=64, steps=20, cfg_scale=7, seed=seed)
    result = engine.generate(request, hooks=manager.job_hooks(script_args or {}))
    assert not result.warnings, result.warnings
    return result.images[0].image


def test_demo_lora_draws_outlines(env):
    outlined, plain_outlined, n = 0, 0, 20
    for i, (colour, background, shape, position) in enumerate(cases(n, seed=1)):
        prompt = f"a large {colour} {shape} on a {background} background, {position}"
        with_lora = ds.interior_share(run(env, prompt + " <lora:webui-demo-outline:1>", seed=100 + i), background)
        without = ds.interior_share(run(env, prompt, seed=100 + i), background)
        outlined += with_lora is not None and with_lora > 0.5
        plain_outlined += without is not None and without > 0.5
    print(f"outlined with the LoRA: {outlined}/{n}; without: {plain_outlined}/{n}")
    assert outlined >= 0.8 * n and plain_outlined <= 0.2 * n


def test_demo_controlnet_puts_the_shape_where_the_mask_is(env):
    import base64
    import io
    placed, unguided, n = 0, 0, 20
    for i, (colour, background, shape, position) in enumerate(cases(n, seed=2)):
        scene = ds.Scene(background, (ds.Obj(shape, colour, "large", position),))
        buf = io.BytesIO()
        ds.render(scene, 64, style="mask").save(buf, format="PNG")
        unit = {"enabled": True, "image": base64.b64encode(buf.getvalue()).decode(), "module": "none",
                "model": "webui-demo-mask", "weight": 1.0, "resize_mode": "Just Resize"}
        args = env[1].api_script_args({"controlnet": {"args": [unit]}})
        prompt = f"a large {colour} {shape} on a {background} background"          # no position said
        guided = ds.analyse(run(env, prompt, seed=200 + i, script_args=args), background)
        free = ds.analyse(run(env, prompt, seed=200 + i), background)
        placed += guided.get("found", False) and guided["position"] == position
        unguided += free.get("found", False) and free["position"] == position
    print(f"placed where the mask is: {placed}/{n}; without the ControlNet: {unguided}/{n}")
    assert placed >= 0.8 * n and unguided <= 0.4 * n     # the ControlNet, not chance, put it there
