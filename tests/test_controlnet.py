"""The ControlNet extension end to end: a ControlNet file applied by our engine through the hook, against
diffusers' ControlNetModel driving diffusers' UNet (down/mid residuals, as its ControlNet pipeline does)
in the same k-diffusion loop as tests/test_pipeline.py; unit semantics (guidance range, control modes,
pixel perfect); the API's sd-webui-controlnet fields."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from extensions.controlnet import cldm, units
from tests.references import LDMShim
from tests.test_controlnet_model import _diffusers_config, _randomize
from tests.test_pipeline import NEGATIVE, PROMPT, Reference, _max_diff
from tests.tiny_models import diffusers_config_dir
from webui.engine.cond import Cond
from webui.engine.patches import CallInfo
from webui.engine.request import GenerationRequest
from webui.hooks.registry import ExtensionManager
from webui.options import Options
from webui.paths import PROJECT_ROOT, Paths
from webui.jobs.parameters import extra_params

W = H = 64


def _hint_image() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    img[(xx - 20) ** 2 + (yy - 24) ** 2 < 150] = 255          # a white disc on black: an edge map
    img[40:56, 36:60, 1] = 200
    return img


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_engine, tiny_ckpt):
    root = tmp_path_factory.mktemp("cn")
    ckpt = tiny_ckpt
    folder = root / "models" / "controlnet"
    folder.mkdir(parents=True)
    from tests.tiny_models import unet_config
    net = cldm.ControlNet(unet_config())
    net.load_state_dict(_randomize(net, seed=5))
    cn_file = folder / "control_tiny.safetensors"
    safetensors.torch.save_file({f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()},
                                str(cn_file))
    options = Options(root / "config.json")
    manager = ExtensionManager(PROJECT_ROOT / "extensions", Paths(root=root), options, lambda m: None)
    manager.load()
    assert manager.extensions["controlnet"].state == "loaded", manager.extensions["controlnet"].errors
    engine = make_engine(ckpt)
    return {"root": root, "ckpt": ckpt, "cn_file": cn_file, "manager": manager, "engine": engine,
            "config": diffusers_config_dir(root / "config"), "cn_config": _diffusers_config(root / "cn_config", unet_config())}


class ControlShim(LDMShim):
    """The UNet with diffusers' ControlNetModel residuals added, as StableDiffusionControlNetPipeline does."""

    def __init__(self, pipe, controlnet, hint, scale):
        super().__init__(pipe)
        self.controlnet, self.hint, self.scale = controlnet, hint, scale

    def apply_model(self, x, t, cond, c_concat=None):
        down, mid = self.controlnet(x, t, encoder_hidden_states=cond, controlnet_cond=self.hint.expand(x.shape[0], -1, -1, -1),
                                    conditioning_scale=self.scale, return_dict=False)
        return self.unet(x, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample


def _generate(setup, unit_fields: dict | None, sampler="Euler", steps=6, seed=7):
    engine, manager = setup["engine"], setup["manager"]
    args = {}
    if unit_fields is not None:
        args = manager.api_script_args({"controlnet": {"args": [unit_fields]}})
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name=sampler, steps=steps,
                                seed=seed, width=W, height=H)
    return engine.generate(request, hooks=manager.job_hooks(args))


def _b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_original_format_controlnet_matches_diffusers(setup, sampler):
    from diffusers import ControlNetModel, StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_single_file(str(setup["ckpt"]), config=str(setup["config"]),
                                                    local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
    controlnet = ControlNetModel.from_single_file(str(setup["cn_file"]), config=setup["cn_config"],
                                                  local_files_only=True)
    hint = torch.from_numpy(_hint_image()).permute(2, 0, 1)[None].float() / 255.0
    reference = Reference(pipe)
    from tests.references import k_diffusion
    _, external = k_diffusion()
    reference.model = external.CompVisDenoiser(ControlShim(pipe, controlnet, hint, 0.8), quantize=False)
    expected = reference.generate(sampler, 6, 7)[0]
    fields = {"enabled": True, "image": _b64(_hint_image()), "module": "none", "model": "control_tiny",
              "weight": 0.8, "resize_mode": "Just Resize"}
    result = _generate(setup, fields, sampler=sampler)
    assert not result.warnings, result.warnings
    plain = _generate(setup, None, sampler=sampler)
    diff = _max_diff(result.images[0].image, expected)
    assert diff <= 2, diff
    assert _max_diff(plain.images[0].image, expected) > 4        # the ControlNet did change the picture
    assert extra_params(result.facts)["ControlNet 0"].startswith("Module: none, Model: control_tiny [")


def test_guidance_range_and_control_modes():
    class Net(torch.nn.Module):
        input_blocks = [0, 1]
        config = type("Config", (), {"in_channels": 4, "adm_in_channels": None})

        def hint_features(self, hint):
            return hint

        def forward(self, x, hint, t, context, y=None, features=None):
            return [torch.ones_like(x) for _ in range(3)]
    x, cond = torch.zeros(2, 4, 2, 2), Cond(torch.zeros(2, 77, 8))
    info = lambda step: CallInfo(step, step, 10, [False, True])   # noqa: E731
    unit = units.Unit(enabled=True, weight=0.5, guidance_start=0.2, guidance_end=0.5)
    provider = units.control_residuals(Net(), torch.zeros(1, 3, 16, 16), unit)
    assert provider(x, None, cond, info(1)) is None and provider(x, None, cond, info(6)) is None
    extras = provider(x, None, cond, info(3))
    assert [float(r.max()) for r in extras.input_residuals] == [0.5, 0.5] and float(extras.middle_residual.max()) == 0.5
    soft = units.control_residuals(Net(), torch.zeros(1, 3, 16, 16), units.Unit(enabled=True, control_mode=1))
    extras = soft(x, None, cond, info(0))
    assert [float(r.max()) for r in extras.input_residuals] == pytest.approx([0.825 ** 2, 0.825])
    cfg = units.control_residuals(Net(), torch.zeros(1, 3, 16, 16), units.Unit(enabled=True, control_mode=2))
    extras = cfg(x, None, cond, info(0))
    assert float(extras.middle_residual[0].max()) == 1.0 and float(extras.middle_residual[1].abs().max()) == 0.0


def test_unit_fields_follow_sd_webui_controlnet():
    unit = units.unit_from_dict({"enabled": True, "module": "invert (from white bg & black line)",
                                 "model": "x [abcd]", "control_mode": "ControlNet is more important",
                                 "resize_mode": "Resize and Fill", "pixel_perfect": True, "threshold_a": 50}, 0)
    assert (unit.module, unit.control_mode, unit.resize_mode, unit.threshold_a) == ("invert", 2, 2, 50.0)
    for bad, message in (({"module": "depth_midas"}, "depth_midas"), ({"weight": 5}, "weight"),
                         ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance"), ({"color": 1}, "color"),
                         ({"image": "not base64!"}, "base64")):
        with pytest.raises(ValueError, match=message):
            units.unit_from_dict(bad, 0)
    # pixel perfect: the preprocessor resolution that lands on the target size
    img = np.zeros((300, 600, 3), np.uint8)
    assert units.pixel_perfect_resolution(img, 512, 512, 1) == 512      # crop: cover the target
    assert units.pixel_perfect_resolution(img, 512, 512, 2) == 256      # fill: fit inside it


def test_api_refuses_unknown_models(setup):
    with pytest.raises(ValueError, match="control_tiny"):
        setup["manager"].api_script_args({"controlnet": {"args": [{"enabled": True, "model": "nope"}]}})


def test_canny_unit_prepares_the_hint_like_the_preprocessor():
    from extensions.controlnet import preprocessors as pp
    unit = units.unit_from_dict({"module": "canny", "threshold_a": 50, "threshold_b": 150, "processor_res": 64,
                                 "resize_mode": 0}, 0)
    hint = units.prepare_hint(unit, _hint_image(), W, H)
    assert hint.shape == (H, W, 3)
    assert np.array_equal(hint, pp.run_preprocessor("canny", _hint_image(), 64, 50, 150))
