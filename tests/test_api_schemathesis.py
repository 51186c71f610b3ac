"""Property-based tests of the HTTP API with Schemathesis, driven by the app's own OpenAPI (``/openapi.json``).

The app is built in-process as ``python app.py --nowebui`` builds it (``webui.server.build_app``, with the
project's extensions: ControlNet, LoRA, soft contrast) on a tiny checkpoint. Every operation the OpenAPI lists
(``/sdapi/v1``, ``/extensions-api/...`` and sd-webui-controlnet's ``/controlnet/...``) gets generated requests,
valid and invalid (Schemathesis' coverage and fuzzing phases); no answer may be a 5xx, and every answer must be
what the OpenAPI declares (status code, content type, headers, body schema). With ``--api-auth`` every operation,
``/docs`` and ``/openapi.json`` answer 401 without the login and work with it. Then one regression check per bug
the fuzzing found.

The budget is bounded (about a minute on two CPU cores): each operation gets at most ``EXAMPLES`` fuzzed cases,
the generation and image routes ``HEAVY_EXAMPLES``. On those routes the costly fields (size, steps, batch,
hires) are capped to tiny values when the server would accept them (invalid values go through unchanged), and
some fields get values the server knows (sampler names, scripts, settings, a real PNG ...) so that the cases
get past the first check into the code behind it. Generation is deterministic: the same cases on every run.
"""
from __future__ import annotations

import atexit
import base64
import collections
import io
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.tiny import tiny_checkpoint  # noqa: E402

# fuzzed cases per operation at most (operations without parameters need far fewer), and per generation / image
# route in each of the two tests (about 10 ms a case with tiny sizes); WEBUI_FUZZ_EXAMPLES=N for a longer hunt
EXAMPLES = HEAVY_EXAMPLES = int(os.environ.get("WEBUI_FUZZ_EXAMPLES", 100))
HEAVY = r"^/(sdapi/v1/(txt2img|img2img|extra-single-image|extra-batch-images|png-info)|(extensions-api/)?controlnet/detect)$"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
USER, PASSWORD = "fuzz", "p4ss"

CALLS: collections.Counter = collections.Counter()        # operation label -> cases sent
STATUSES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
SECONDS: collections.Counter = collections.Counter()      # operation label -> seconds spent in its calls


def _png(size=(64, 64), mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PNG, MASK = _png(), _png(mode="L")


def _make_app(root: Path, backend=None, *flags: str):
    """(the app ``python app.py --nowebui *flags`` serves, its backend): the extensions loaded, no model yet."""
    from webui.cli import build_parser
    from webui.hooks.registry import ExtensionManager
    from webui.jobs.backend import Backend
    from webui.options import Options
    from webui.paths import PROJECT_ROOT, Paths
    from webui.server import build_app, parse_auth

    args = build_parser().parse_args(["--nowebui", "--data-dir", str(root), *flags])
    if backend is None:
        paths = Paths(root=root)
        options = Options(root / "config.json", log=lambda m: None)
        extensions = ExtensionManager(PROJECT_ROOT / "extensions", paths, options, log=lambda m: None)
        extensions.load()
        backend = Backend(paths, options, device="cpu", precision="full", extensions=extensions, log=lambda m: None)
    return build_app(backend, args, [], parse_auth(args.api_auth, None)), backend


def _config(heavy_only: bool = False):
    config = {
        "generation": {"max-examples": HEAVY_EXAMPLES if heavy_only else EXAMPLES, "deterministic": True,
                       "database": "none", "no-shrink": os.environ.get("WEBUI_FUZZ_SHRINK") != "1"},  # 1: minimal cases
        "phases": {"stateful": {"enabled": False}}}
    if not heavy_only:     # (with an ``operations`` entry, ``schema.include`` no longer filters: a separate schema)
        config["operations"] = [{"include-path-regex": HEAVY, "generation": {"max-examples": HEAVY_EXAMPLES}}]
    return schemathesis.Config.from_dict(config)


# The app is built when the module is imported: Schemathesis makes one test per operation at collection, from
# the OpenAPI (its fixture-based loader, ``schemathesis.pytest.from_fixture``, fails under pytest 9.2). Only the
# OpenAPI is read here; the model is written and loaded by the ``served`` fixture.
DATA = Path(tempfile.mkdtemp(prefix="webui-schemathesis-"))
atexit.register(shutil.rmtree, DATA, ignore_errors=True)
(DATA / "styles.csv").write_text('name,prompt,negative_prompt\nTop,"{prompt}, top",blurry\n')
APP, BACKEND = _make_app(DATA)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=_config())
heavy_schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=_config(heavy_only=True)).include(
    path_regex=HEAVY)


@pytest.fixture(scope="module")
def served():
    """The tiny checkpoint loaded and the queue running."""
    (DATA / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    tiny_checkpoint(DATA / "models" / "checkpoints" / "tiny.safetensors")
    BACKEND.start("tiny.safetensors").wait()
    yield APP
    BACKEND.stop()


@pytest.fixture(scope="module")
def client(served):
    return TestClient(served, raise_server_exceptions=False)


# ---- what the generation routes get -------------------------------------------------------------------------
# Costly values the server would accept -> the cheapest ones (invalid values are sent unchanged): name -> (cap,
# the largest value the server accepts; None: no upper limit)
_CAPS = {"width": (64, 2048), "height": (64, 2048), "steps": (2, 150), "batch_size": (2, 16), "n_iter": (1, 64),
         "hr_scale": (1.5, 8), "hr_second_pass_steps": (1, None), "hr_resize_x": (128, 16384),
         "hr_resize_y": (128, 16384), "upscaling_resize": (2, 8), "upscaling_resize_w": (128, 8192),
         "upscaling_resize_h": (128, 8192), "controlnet_processor_res": (64, None)}
_GENERATION_DEFAULTS = {"width": 512, "height": 512, "steps": 50}   # what an absent field means (A1111's)


def _cheap(body: dict, path: str) -> dict:
    body = dict(body)
    defaults = _GENERATION_DEFAULTS if path.endswith(("txt2img", "img2img")) else {}
    for key, (cap, accepted) in _CAPS.items():
        value = body.get(key, defaults.get(key))
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not cap < value:
            continue
        if (accepted is None or value <= accepted) and not (key in ("width", "height") and value % 8):
            body[key] = cap
    if isinstance(body.get("script_name"), str) and "x/y/z" in body["script_name"].lower():
        body["script_args"] = [a if not isinstance(a, str) else a[:3] for a in body.get("script_args") or []]
    return body


def _known_values(path: str) -> dict:
    """Field -> a strategy of values the server knows (and their edges), for the body of ``path``."""
    ints = st.one_of(st.integers(-2, 3), st.integers(-2**70, 2**70))
    numbers = st.one_of(ints, st.floats(-2, 1e12, allow_nan=False))
    image = st.sampled_from([PNG, MASK, _png((8, 200)), _png((64, 64), "RGBA"), _png((1, 1)), "data:image/png;base64,"
                             + PNG, "", "not base64"])
    if path.endswith(("txt2img", "img2img")):
        from webui.engine.sampling import registry
        from webui.options import OPTIONS
        fields = {
            "sampler_name": st.sampled_from([s.name for s in registry.SAMPLERS] + ["k_euler", "DPM++ 2M Karras"]),
            "scheduler": st.sampled_from(list(registry.SCHEDULERS.values()) + ["karras", ""]),
            "styles": st.lists(st.sampled_from(["Top", "top", ""]), max_size=2),
            "seed": ints, "subseed": ints, "subseed_strength": numbers, "cfg_scale": numbers,
            "seed_resize_from_w": ints, "seed_resize_from_h": ints,
            "override_settings": st.dictionaries(
                st.sampled_from(list(OPTIONS)),
                st.one_of(numbers, st.booleans(), st.none(), st.sampled_from(
                    ["Original", "No norm", "png", "tiny.safetensors", "Automatic", "None", "x"]),
                          st.lists(st.sampled_from(["lora", "x"]), max_size=2)), max_size=2),
            "override_settings_restore_afterwards": st.booleans(),
            "refiner_checkpoint": st.sampled_from(["tiny.safetensors", "tiny", "None", "nope"]),
            "refiner_switch_at": numbers,
            "enable_hr": st.booleans(), "hr_scale": numbers, "hr_second_pass_steps": ints,
            "hr_resize_x": ints, "hr_resize_y": ints, "denoising_strength": numbers,
            "hr_upscaler": st.sampled_from(["Latent", "Lanczos", "None", "nope"]),
            "hr_sampler_name": st.sampled_from(["Euler a", "Use same sampler", "nope"]),
            "hr_scheduler": st.sampled_from(["Karras", "Use same scheduler", "nope"]),
            "hr_checkpoint_name": st.sampled_from(["tiny.safetensors", "Use same checkpoint", "nope"]),
            "script_name": st.sampled_from(["X/Y/Z plot", "Prompt matrix", "Prompts from file or textbox",
                                            "SD upscale", "Poor man's outpainting", "nope"]),
            "script_args": st.lists(st.one_of(st.integers(-1, 12), st.text("0123456789-+,.[]() ab", max_size=6),
                                              st.booleans(), st.none(), st.floats(0, 4, allow_nan=False),
                                              st.lists(st.sampled_from(["left", "1", "Euler"]), max_size=2)),
                                    max_size=18),
            "alwayson_scripts": st.dictionaries(
                st.sampled_from(["controlnet", "ControlNet", "Soft contrast", "lora", "nope"]),
                st.fixed_dictionaries({"args": st.lists(st.one_of(
                    st.booleans(), numbers, st.fixed_dictionaries({}, optional={
                        "enabled": st.booleans(), "image": image, "module": st.sampled_from(["canny", "none", "x"]),
                        "model": st.sampled_from(["None", "nope"]), "weight": numbers, "processor_res": ints,
                        "threshold_a": numbers, "guidance_start": numbers, "control_mode": ints,
                        "resize_mode": st.one_of(ints, st.sampled_from(["Just Resize", "Crop and Resize"])),
                        "pixel_perfect": st.booleans()})), max_size=2)}), max_size=2),
            "infotext": st.builds(lambda steps, seed, size, extra: f"a cat\nSteps: {steps}, Seed: {seed}, "
                                                                     f"Size: {size}{extra}",
                                  ints, ints, st.sampled_from(["64x64", "64x72", "0x0", "64", "x"]),
                                  st.sampled_from(["", ", Clip skip: 2", ", Sampler: Euler a", ", CFG scale: x"])),
            "prompt": st.sampled_from(["a cat", "<lora:nope:1> a cat", "[a:b:0.5] AND c :2", "a|b|c", "(x:1e400)"]),
        }
        if path.endswith("img2img"):
            fields.update({
                "init_images": st.lists(image, min_size=1, max_size=2), "mask": image, "latent_mask": image,
                "mask_blur": ints, "mask_blur_x": ints, "mask_blur_y": ints, "inpainting_fill": ints,
                "inpaint_full_res": st.booleans(), "inpaint_full_res_padding": ints, "resize_mode": ints,
                "inpainting_mask_invert": ints, "initial_noise_multiplier": numbers})
        return fields
    if path.endswith(("extra-single-image", "png-info")):
        return dict(image=image, upscaler_1=st.sampled_from(
            ["Lanczos", "Nearest", "None"]), upscaler_2=st.sampled_from(["Lanczos", "nope"]),
            extras_upscaler_2_visibility=numbers, resize_mode=ints, upscaling_resize=numbers,
            upscaling_resize_w=ints, upscaling_resize_h=ints, upscaling_crop=st.booleans())
    if path.endswith("extra-batch-images"):
        return dict(imageList=st.lists(st.fixed_dictionaries({"data": image}), max_size=2),
                    upscaler_1=st.sampled_from(["Lanczos", "None"]), resize_mode=ints, upscaling_resize=numbers)
    if path.endswith("detect"):
        return {
            "controlnet_module": st.sampled_from(["canny", "none", "invert", "binary", "threshold", "scribble_xdog",
                                                  "invert (from white bg & black line)", "nope"]),
            "controlnet_input_images": st.one_of(st.lists(image, max_size=2), ints),
            "controlnet_processor_res": st.one_of(ints, st.sampled_from([-1, 64, 2048, "512", "x", None])),
            "controlnet_threshold_a": st.one_of(numbers, st.sampled_from(["1", "x", None])),
            "controlnet_threshold_b": numbers}
    return {}


_REQUIRED = {"img2img": {"init_images": [PNG]}, "extra-single-image": {"image": PNG}, "png-info": {"image": PNG},
             "extra-batch-images": {"imageList": [{"data": PNG}]}, "detect": {"controlnet_input_images": [PNG]}}


def _send(case):
    started = time.perf_counter()
    response = case.call()
    SECONDS[case.operation.label] += time.perf_counter() - started
    CALLS[case.operation.label] += 1
    STATUSES[case.operation.label][response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
def test_every_operation_answers_as_declared(case, served):
    """No 5xx, and status, content type, headers and body as the OpenAPI declares, for generated requests."""
    if re.match(HEAVY, case.path) and isinstance(case.body, dict):
        case.body = _cheap(case.body, case.path)
    _send(case)


@heavy_schema.parametrize()
@heavy_schema.given(data=st.data())
def test_generation_routes_with_known_values(case, data, served):
    """The same for the generation and image routes, with up to 5 fields set to values the server knows (or
    their edges), so that the cases get past the first check."""
    if isinstance(case.body, dict):
        known = _known_values(case.path)
        chosen = data.draw(st.lists(st.sampled_from(sorted(known)), max_size=5, unique=True), label="fields")
        base = case.body if data.draw(st.booleans(), label="generated base") else {}
        required = next((v for k, v in _REQUIRED.items() if case.path.endswith(k)), {})
        case.body = _cheap({**base, **required, **data.draw(st.fixed_dictionaries(
            {key: known[key] for key in chosen}), label="known")}, case.path)
    _send(case)


def test_every_operation_was_exercised(client):
    """(After the fuzzing above, in this module.) Every operation of the OpenAPI got cases, the extensions'
    included; the tally is printed (``-s``)."""
    spec = client.get("/openapi.json").json()
    operations = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}
    assert {"GET /controlnet/model_list", "POST /controlnet/detect", "POST /extensions-api/controlnet/detect",
            "GET /extensions-api/soft_contrast/status", "GET /sdapi/v1/loras", "POST /sdapi/v1/txt2img"} <= operations
    missing = sorted(operations - set(CALLS))
    assert not missing, f"never called (run the whole module): {missing}"
    print(f"\nschemathesis: {len(CALLS)} operations, {sum(CALLS.values())} cases, "
          f"{sum(SECONDS.values()):.1f} s in the calls")
    for label in sorted(CALLS):
        print(f"  {label}: {CALLS[label]} cases in {SECONDS[label]:.1f} s, statuses "
              f"{dict(sorted(STATUSES[label].items()))}")
    for label in ("POST /sdapi/v1/txt2img", "POST /sdapi/v1/img2img", "POST /sdapi/v1/extra-single-image",
                  "POST /controlnet/detect"):
        assert STATUSES[label][200] >= 3, f"{label}: too few cases got through ({dict(STATUSES[label])})"


# ---- --api-auth ---------------------------------------------------------------------------------------------
def _cheap_request(path: str) -> dict | None:
    """A body each operation accepts (cheap), or None for no body."""
    bodies = {"/sdapi/v1/txt2img": {"prompt": "a cat", "width": 64, "height": 64, "steps": 1},
              "/sdapi/v1/img2img": {"init_images": [PNG], "width": 64, "height": 64, "steps": 1},
              "/sdapi/v1/png-info": {"image": PNG}, "/sdapi/v1/extra-single-image": {"image": PNG},
              "/sdapi/v1/extra-batch-images": {"imageList": [{"data": PNG}]},
              "/controlnet/detect": {"controlnet_module": "canny", "controlnet_input_images": [PNG]},
              "/extensions-api/controlnet/detect": {"controlnet_input_images": [PNG]}, "/sdapi/v1/options": {}}
    return bodies.get(path)


def test_no_route_answers_without_the_login(served):
    """``--api-auth``: every operation of the OpenAPI, ``/docs`` and ``/openapi.json`` answer 401 without the
    login (or with a wrong one) and work with it."""
    app, _ = _make_app(DATA, BACKEND, "--api-auth", f"{USER}:{PASSWORD}")
    anonymous, logged_in = TestClient(app, raise_server_exceptions=False), TestClient(app)
    logged_in.auth = (USER, PASSWORD)
    spec = logged_in.get("/openapi.json").json()
    operations = [(method.upper(), path) for path, item in spec["paths"].items() for method in item]
    open_spec = TestClient(APP).get("/openapi.json").json()                     # (without --api-auth: open)
    assert operations == [(m.upper(), p) for p, item in open_spec["paths"].items() for m in item]
    assert ("GET", "/controlnet/version") in operations and ("GET", "/extensions-api/soft_contrast/status") in operations
    wrong = [("Authorization", "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()),
             ("Authorization", "Basic !!!"), ("Authorization", "Bearer x")]
    extra = [("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/docs/oauth2-redirect"),
             ("OPTIONS", "/sdapi/v1/txt2img"), ("HEAD", "/sdapi/v1/options"), ("GET", "/sdapi/v1/options/"),
             ("GET", "/controlnet/nothing-here")]
    for method, path in operations + extra:
        url = path.replace("{task_id}", "some-task")
        body = _cheap_request(path)
        for headers in [{}] + [dict([h]) for h in wrong]:
            r = anonymous.request(method, url, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Basic")
            assert method == "HEAD" or "--api-auth" in r.json()["detail"]
    for method, path in operations + [("GET", "/docs"), ("GET", "/openapi.json")]:
        r = logged_in.request(method, path.replace("{task_id}", "some-task"), json=_cheap_request(path))
        assert r.status_code < 500 and r.status_code != 401, (method, path, r.status_code, r.text)
        assert r.status_code in ((404,) if "{task_id}" in path else (200,)), (method, path, r.status_code, r.text)
    for path in ("//sdapi/v1/options", "/sdapi", "/controlnet", "/extensions-api", "/SDAPI/v1/options"):
        assert anonymous.get(path).status_code in (401, 404), path                  # nothing answers there


# ---- one regression check per bug the fuzzing found ---------------------------------------------------------
T2I, I2I = "/sdapi/v1/txt2img", "/sdapi/v1/img2img"
TINY = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1}
INPAINT = {**TINY, "init_images": [PNG], "mask": MASK}
XYZ = "X/Y/Z plot"


@pytest.mark.parametrize("path, body, field", [
    # seeds beyond what a torch generator takes: a 500 "Overflow when unpacking long long" from the job
    (T2I, {**TINY, "seed": 2**64}, "seed"),
    (T2I, {**TINY, "seed": 2**64 - 1, "batch_size": 2}, "seed"),
    (T2I, {**TINY, "subseed": 2**70, "subseed_strength": 0.5}, "subseed"),
    (T2I, {**TINY, "infotext": "a cat\nSteps: 1, Seed: 99999999999999999999999999, Size: 64x64"}, "seed"),
    (T2I, {**TINY, "script_name": "Prompts from file or textbox",
           "script_args": [False, False, "--seed 18446744073709551616"]}, "seed"),
    (T2I, {**TINY, "script_name": XYZ, "script_args": ["Seed", "1, 18446744073709551616"]}, "seed"),
    # override_settings kept afterwards (restore false) with a wrong value: a 500 after the image was made
    (T2I, {**TINY, "override_settings": {"samples_format": 5}, "override_settings_restore_afterwards": False},
     "samples_format"),
    (T2I, {**TINY, "override_settings": {"disabled_extensions": "x"}}, "disabled_extensions"),
    # hires fix: sampler / schedule type only checked after the first pass (500); steps and size unbounded
    (T2I, {**TINY, "enable_hr": True, "hr_scale": 1.5, "hr_sampler_name": "nope"}, "hr_sampler_name"),
    (T2I, {**TINY, "enable_hr": True, "hr_scale": 1.5, "hr_scheduler": "nope"}, "hr_scheduler"),
    (T2I, {**TINY, "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 10**9}, "hr_second_pass_steps"),
    (T2I, {**TINY, "width": 512, "height": 512, "enable_hr": True, "hr_scale": 8}, "hr_scale"),
    # img2img: a huge mask blur tried to allocate 37 GiB (500), a negative padding failed in PIL's crop (500)
    (I2I, {**INPAINT, "mask_blur": 10**9}, "mask_blur"),
    (I2I, {**INPAINT, "mask_blur_x": 10**9, "mask_blur_y": 10**9}, "mask_blur_x"),
    (I2I, {**INPAINT, "mask_blur_y": 10**9}, "mask_blur_y"),
    (I2I, {**INPAINT, "inpaint_full_res_padding": -10**9}, "inpaint_full_res_padding"),
    # X/Y/Z plot and prompt matrix built their runs before counting them: the first one ran the server out of memory
    (T2I, {**TINY, "script_name": XYZ, "script_args": ["Seed", "1-1000000000"]}, "at most 10000 values"),
    (T2I, {**TINY, "script_name": XYZ, "script_args": ["Seed", "1-2 [99999999999]"]}, "at most 10000 values"),
    (T2I, {**TINY, "script_name": XYZ, "script_args": ["CFG Scale", "0-1000000 (+0.0001)"]}, "at most 10000 values"),
    (T2I, {**TINY, "script_name": XYZ, "script_args": ["Prompt order", ",".join("abcdefghijklmnop")]}, "too many"),
    (T2I, {**TINY, "prompt": "a" + "|b" * 60, "script_name": "Prompt matrix",
           "script_args": [False, False, "positive", "comma", 0]}, "images"),
    # ControlNet: a huge preprocessor resolution reached OpenCV (500, or gigabytes allocated)
    ("/controlnet/detect", {"controlnet_module": "canny", "controlnet_input_images": [PNG],
                            "controlnet_processor_res": 10**6}, "controlnet_processor_res"),
    ("/controlnet/detect", {"controlnet_module": "canny", "controlnet_input_images": [PNG],
                            "controlnet_processor_res": 10**30}, "controlnet_processor_res"),
    ("/controlnet/detect", {"controlnet_module": "canny", "controlnet_input_images": 5}, "controlnet_input_images"),
    ("/controlnet/detect", {"controlnet_module": "canny", "controlnet_input_images": [PNG],
                            "controlnet_threshold_a": "x"}, "controlnet_threshold_a"),
    ("/controlnet/detect", {"controlnet_module": "canny", "controlnet_input_images": [_png((1, 4000))],
                            "controlnet_processor_res": 2048}, "pixels"),
    (T2I, {**TINY, "alwayson_scripts": {"controlnet": {"args": [{"processor_res": 99999999}]}}}, "processor_res"),
    (T2I, {**TINY, "alwayson_scripts": {"controlnet": {"args": [{"threshold_a": "inf"}]}}}, "threshold_a"),
])
def test_refused_with_a_message_naming_the_field(client, path, body, field):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"], r.json()


@pytest.mark.parametrize("path, text, field", [
    # non-standard JSON numbers (Python's json reads them): int(inf) raised OverflowError (500)
    ("/sdapi/v1/options", '{"comma_padding_backtrack": Infinity}', "comma_padding_backtrack"),
    (T2I, '{"width": 64, "height": 64, "steps": 1, "override_settings": {"comma_padding_backtrack": Infinity}}',
     "comma_padding_backtrack"),
    ("/controlnet/detect", '{"controlnet_processor_res": Infinity, "controlnet_input_images": ["%s"]}' % PNG,
     "controlnet_processor_res"),
    ("/controlnet/detect", '{"controlnet_threshold_a": NaN, "controlnet_input_images": ["%s"]}' % PNG,
     "controlnet_threshold_a"),
])
def test_non_finite_numbers_are_refused(client, path, text, field):
    r = client.post(path, content=text, headers={"content-type": "application/json"})
    assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_kept_override_of_the_vae_by_name(client):
    """``override_settings: {"sd_vae": null}`` with restore false answered 500 after the image was made."""
    r = client.post(T2I, json={**TINY, "override_settings": {"sd_vae": None},
                               "override_settings_restore_afterwards": False})
    assert r.status_code == 200, r.text
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "None"
    assert client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"}).status_code == 200


def test_error_answers_are_declared(client):
    """404 / 409 / 413 / 422 / 500 that the routes raise are in the OpenAPI, as ``{"detail": ...}`` (a message
    string, or FastAPI's list of field errors); before, a 404 was undeclared and every 422 claimed the list."""
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"404", "422"} <= set(paths["/sdapi/v1/tasks/{task_id}"]["get"]["responses"])
    assert {"404", "409"} <= set(paths["/sdapi/v1/tasks/{task_id}"]["delete"]["responses"])
    assert {"400", "409", "413", "422", "500"} <= set(paths["/sdapi/v1/txt2img"]["post"]["responses"])
    assert {"404", "500"} <= set(paths["/controlnet/detect"]["post"]["responses"])
    error = spec["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]
    assert {a.get("type") for a in error["anyOf"]} == {"string", "array"}
    r = client.get("/sdapi/v1/tasks/none-such")
    assert r.status_code == 404 and "none-such" in r.json()["detail"]
    r = client.post(T2I, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and "detail" in r.json()
