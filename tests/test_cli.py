"""``python app.py txt2img|img2img`` end to end, run as subprocesses on tiny checkpoints.

Every generation passes ``--data-dir tmp`` (hash cache, default outputs) so nothing is written in the
project folder. 64x64 images and 2-3 steps keep each run to a few seconds on CPU.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tiny import tiny_checkpoint
from tests.tiny_models import write_vae_file
from webui.jobs.infotext import parse_typed
from webui.jobs.saving import read_infotext

ROOT = Path(__file__).resolve().parents[1]
SIZE = ("--width", "64", "--height", "64")
PROMPT, NEGATIVE = "a red fox, photo: 35mm", "blurry, text"
BASE = ("--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--sampler", "DPM++ 2M", "--scheduler", "karras",
        "--steps", "3", "--cfg-scale", "5.5", "--seed", "1234", *SIZE)
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def app(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "app.py", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def info(path: Path):
    text = read_infotext(path)
    assert text, f"{path} has no parameters chunk"
    return parse_typed(text)


def printed_paths(proc) -> list[Path]:
    return [Path(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt_dir = root / "checkpoints"
    ckpt_dir.mkdir()
    return {"root": root, "ckpt": tiny_checkpoint(root / "tiny-model.safetensors"),
            "other": tiny_checkpoint(root / "other.safetensors", seed=3), "ckpt_dir": ckpt_dir}


@pytest.fixture(scope="module")
def single(files, tmp_path_factory):
    """One txt2img run to a .png path; the baseline the --vae runs are compared with."""
    out_dir = tmp_path_factory.mktemp("single")
    out = out_dir / "out.png"
    proc = ok(app("txt2img", "--ckpt", files["ckpt"], *BASE, "--data-dir", files["root"], "-o", out))
    return out, proc


def test_txt2img_to_png_path_writes_one_image_with_full_infotext(files, single):
    out, proc = single
    assert printed_paths(proc) == [out]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.png"]
    with Image.open(out) as img:
        assert img.size == (64, 64)
    parsed = info(out)
    assert (parsed.prompt, parsed.negative_prompt) == (PROMPT, NEGATIVE)
    assert (parsed.steps, parsed.sampler, parsed.scheduler, parsed.cfg_scale) == (3, "DPM++ 2M", "Karras", 5.5)
    assert (parsed.seed, parsed.width, parsed.height) == (1234, 64, 64)
    assert parsed.model == "tiny-model"
    assert parsed.model_hash == sha256(files["ckpt"])[:10]
    assert "VAE" not in parsed.extra and "VAE hash" not in parsed.extra
    assert "Version" in parsed.extra
    # nothing written next to the project: the hash cache lives in --data-dir
    assert (files["root"] / "cache" / "hashes.json").is_file()


def test_txt2img_shows_a_progress_bar_on_stderr_when_not_a_tty(single):
    _, proc = single
    # stderr is a pipe here; tqdm still draws (with \r updates) and the job completes
    assert "batch 1/1" in proc.stderr
    assert "3/3" in proc.stderr and "100%" in proc.stderr
    assert "step" in proc.stderr


def test_txt2img_to_folder_uses_a1111_names_seed_plus_i_and_a_grid(files, tmp_path):
    out = tmp_path / "imgs"
    proc = ok(app("txt2img", "--ckpt", files["ckpt"], "-p", "a cat", *SIZE, "--steps", "2", "--seed", "77",
                  "--batch-size", "2", "--n-iter", "2", "--quiet", "--data-dir", files["root"], "-o", out))
    assert "batch 1/2" not in proc.stderr and "%|" not in proc.stderr     # --quiet: no progress bar
    names = ["00000-77.png", "00001-78.png", "00002-79.png", "00003-80.png"]
    assert sorted(p.name for p in out.iterdir()) == names + ["grid-0000.png"]
    assert printed_paths(proc) == [out / n for n in names] + [out / "grid-0000.png"]
    for seed, name in zip(range(77, 81), names):
        parsed = info(out / name)
        assert parsed.seed == seed and parsed.prompt == "a cat"
        assert (parsed.width, parsed.height) == (64, 64)
    # the four images differ (different seeds) and the grid is 2x2 of them
    images = [pixels(out / n) for n in names]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(images, images[1:]))
    grid = pixels(out / "grid-0000.png")
    assert grid.shape == (128, 128, 3)
    assert np.array_equal(grid[:64, 64:], images[1]) and np.array_equal(grid[64:, :64], images[2])
    assert info(out / "grid-0000.png").seed == 77
    assert not (files["root"] / "outputs").exists()


def test_random_seed_default_folders_and_first_checkpoint_of_ckpt_dir(files, tmp_path):
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    os.link(files["other"], ckpt_dir / "b-second.safetensors")
    os.link(files["ckpt"], ckpt_dir / "a-first.safetensors")
    outdir = tmp_path / "outs"
    before = datetime.date.today().isoformat()
    proc = ok(app("txt2img", "--ckpt-dir", ckpt_dir, "-p", "x", *SIZE, "--steps", "2", "--seed", "-1",
                  "--batch-size", "2", "--data-dir", tmp_path / "data", "--outdir", outdir))
    after = datetime.date.today().isoformat()
    m = re.search(r"^seed: (\d+)$", proc.stderr, re.M)
    assert m, proc.stderr
    seed = int(m.group(1))

    (images_day,) = (outdir / "txt2img-images").iterdir()
    (grids_day,) = (outdir / "txt2img-grids").iterdir()
    assert images_day.name == grids_day.name and images_day.name in (before, after)
    assert DATE_RE.match(images_day.name)
    assert sorted(p.name for p in images_day.iterdir()) == [f"00000-{seed}.png", f"00001-{seed + 1}.png"]
    assert sorted(p.name for p in grids_day.iterdir()) == ["grid-0000.png"]
    assert sorted(printed_paths(proc)) == sorted([*images_day.iterdir(), grids_day / "grid-0000.png"])
    for i, path in enumerate(sorted(images_day.iterdir())):
        parsed = info(path)
        assert parsed.seed == seed + i
        assert parsed.model == "a-first"
        assert parsed.model_hash == sha256(files["ckpt"])[:10]
    assert not (tmp_path / "data" / "outputs").exists()   # --outdir replaces <data-dir>/outputs


def test_img2img_with_mask_writes_inpainted_image_to_default_folder(files, tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    init = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], -1).astype(np.uint8)
    Image.fromarray(init).save(tmp_path / "init.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    data = tmp_path / "data"
    proc = ok(app("img2img", "--ckpt", files["ckpt"], "-p", "a dog", *SIZE, "--steps", "3", "--seed", "5",
                  "--init-image", tmp_path / "init.png", "--mask", tmp_path / "mask.png",
                  "--denoising-strength", "0.6", "--mask-blur", "2", "--data-dir", data))
    (day,) = (data / "outputs" / "img2img-images").iterdir()
    assert DATE_RE.match(day.name)
    assert sorted(p.name for p in day.iterdir()) == ["00000-5.png"]
    assert printed_paths(proc) == [day / "00000-5.png"]
    assert not (data / "outputs" / "img2img-grids").exists()     # one image: no grid
    parsed = info(day / "00000-5.png")
    assert parsed.denoising_strength == 0.6
    assert parsed.extra["Mask blur"] == "2"
    assert (parsed.seed, parsed.steps, parsed.prompt) == (5, 3, "a dog")
    out = pixels(day / "00000-5.png")
    assert out.shape == (64, 64, 3)
    # outside the (blurred) mask the original is pasted back; inside it was repainted
    assert np.abs(out[:8, :8] - init[:8, :8]).max() <= 1
    assert np.abs(out[24:40, 24:40] - init[24:40, 24:40]).mean() > 4


def test_external_vae_changes_the_image_and_is_named_in_infotext(files, single, tmp_path):
    # bare encoder.*/decoder.* keys, as vae-ft-mse-840000-ema-pruned has; the first_stage_model.* variant
    # is loaded in test_engine.py (Engine.set_vae), which runs the same load_vae code in-process
    vae = write_vae_file(tmp_path / "my-vae.safetensors", files["other"], prefix=False)
    out = tmp_path / "vae.png"
    ok(app("txt2img", "--ckpt", files["ckpt"], *BASE, "--vae", vae, "--data-dir", files["root"], "-o", out))
    base_png, _ = single
    assert np.abs(pixels(out) - pixels(base_png)).max() > 8
    parsed = info(out)
    assert parsed.extra["VAE"] == vae.name
    assert parsed.extra["VAE hash"] == sha256(vae)[:10]
    assert parsed.model_hash == sha256(files["ckpt"])[:10] and parsed.seed == 1234


def _garbage(path: Path, data: bytes = b"this is not a model\n" * 20) -> Path:
    path.write_bytes(data)
    return path


# (setup(tmp_path, files) -> extra args, subcommand, texts that must appear in stderr)
ERRORS = {
    "missing-ckpt": (lambda t, f: ["--ckpt", t / "nope.safetensors"], "txt2img", ["nope.safetensors", "not found"]),
    "corrupt-ckpt": (lambda t, f: ["--ckpt", _garbage(t / "broken.safetensors")], "txt2img", ["broken.safetensors"]),
    "corrupt-ckpt-pickle": (lambda t, f: ["--ckpt", _garbage(t / "broken.ckpt")], "txt2img", ["broken.ckpt"]),
    "unknown-sampler": (lambda t, f: ["--ckpt", f["ckpt"], "--sampler", "Eulerish"], "txt2img",
                        ["unknown sampler", "Eulerish", "Euler a", "DPM++ 2M", "UniPC"]),
    "width-not-multiple-of-8": (lambda t, f: ["--ckpt", f["ckpt"], "--width", "100"], "txt2img",
                                ["width", "multiple of 8", "100"]),
    "unreadable-init-image": (lambda t, f: ["--ckpt", f["ckpt"], "--init-image", _garbage(t / "init.png")],
                              "img2img", ["init image", "init.png"]),
    "missing-init-image": (lambda t, f: ["--ckpt", f["ckpt"], "--init-image", t / "gone.png"], "img2img",
                           ["init image", "gone.png"]),
    "missing-vae": (lambda t, f: ["--ckpt", f["ckpt"], "--vae", t / "novae.safetensors"], "txt2img",
                    ["novae.safetensors", "not found"]),
}


@pytest.fixture(scope="module")
def error_runs(files, tmp_path_factory):
    """All error cases started at once (most of each is importing torch), then collected."""
    started = {}
    for case, (setup, command, _) in ERRORS.items():
        tmp = tmp_path_factory.mktemp(case)
        args = [command, *setup(tmp, files), "--steps", "1", "--data-dir", tmp / "data", "-o", tmp / "out"]
        started[case] = (tmp, subprocess.Popen([sys.executable, "app.py", *map(str, args)], cwd=ROOT, text=True,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    runs = {}
    for case, (tmp, popen) in started.items():
        stdout, stderr = popen.communicate(timeout=300)
        runs[case] = (tmp, subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr))
    return runs


@pytest.mark.parametrize("case", list(ERRORS))
def test_clear_errors_without_traceback(error_runs, case):
    expected = ERRORS[case][2]
    tmp_path, proc = error_runs[case]
    out = tmp_path / "out"
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") or "\nerror: " in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, (text, proc.stderr)
    assert not out.exists() and proc.stdout == ""


def test_help_lists_the_subcommands_and_the_web_ui_flags():
    proc = app("--help")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    text = proc.stdout
    for word in ("usage:", "txt2img", "img2img", "train-demo", "--listen", "--gradio-auth", "--api-auth", "--nowebui"):
        assert word in text, word


def test_an_empty_checkpoint_folder_uses_the_shipped_demo_model(tmp_path):
    from webui.jobs import infotext, saving
    from webui.paths import DEMO_CHECKPOINT
    if not DEMO_CHECKPOINT.is_file():
        pytest.skip("no demo checkpoint in this checkout")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "demo.png"
    ok(app("txt2img", "--ckpt-dir", tmp_path / "empty", "--prompt", "a large red circle", "--steps", 2, "-o", out))
    info = infotext.parse_typed(saving.read_infotext(out))
    assert info.model == "webui-demo-64px" and (info.width, info.height) == (64, 64)


def test_default_checkpoint_prefers_the_users_own_files(tmp_path):
    from webui.paths import DEMO_CHECKPOINT, Paths, default_checkpoint
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    paths = Paths(root=tmp_path, ckpt_dir=folder)
    assert default_checkpoint(paths) == (DEMO_CHECKPOINT if DEMO_CHECKPOINT.is_file() else None)
    (folder / "webui-demo-64px.safetensors").write_bytes(b"")
    assert default_checkpoint(paths) == folder / "webui-demo-64px.safetensors"
    (folder / "z-mine.safetensors").write_bytes(b"")
    assert default_checkpoint(paths) == folder / "z-mine.safetensors"


def test_size_defaults_to_the_models_native_size(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "native.safetensors", metadata={"webui.native_size": "80"})
    out = tmp_path / "out.png"
    ok(app("txt2img", "--ckpt", ckpt, "-p", "x", "--steps", "2", "--data-dir", tmp_path, "-o", out))
    with Image.open(out) as img:
        assert img.size == (80, 80)
    assert (info(out).width, info(out).height) == (80, 80)
    ok(app("txt2img", "--ckpt", ckpt, "-p", "x", "--steps", "2", "--width", "64", "--data-dir", tmp_path, "-o", out))
    with Image.open(out) as img:
        assert img.size == (64, 80)   # a size the user gives wins


# ------------------------------------------------------------------------------------- SDXL, refiner

def test_sdxl_with_refiner_sizes_and_prediction(tmp_path):
    from tests.tiny import tiny_checkpoint

    base = tiny_checkpoint(tmp_path / "xl.safetensors", "sdxl")
    refiner = tiny_checkpoint(tmp_path / "xl-refiner.safetensors", "sdxl-refiner")
    common = ("--ckpt", base, "--data-dir", tmp_path, "--prompt", "a cat", "--steps", "4", "--seed", "3", *SIZE,
              "--quiet")
    plain = ok(app("txt2img", *common, "-o", tmp_path / "plain.png"))
    assert "Refiner" not in read_infotext(printed_paths(plain)[0])
    refined = printed_paths(ok(app("txt2img", *common, "--refiner", refiner, "--refiner-switch-at", "0.5",
                                   "--original-size", "128x96", "--crop-top-left", "8,0",
                                   "-o", tmp_path / "refined.png")))[0]
    parsed = info(refined)
    assert parsed.refiner.startswith("xl-refiner [") and parsed.refiner_switch_at == 0.5
    assert (parsed.extra["Original size"], parsed.extra["Crop top-left"]) == ("128x96", "8,0")
    assert np.abs(pixels(refined) - pixels(tmp_path / "plain.png")).max() > 2
    # the prediction override reaches the engine: v instead of eps is another picture
    forced = printed_paths(ok(app("txt2img", *common, "--prediction", "v", "-o", tmp_path / "v.png")))[0]
    assert np.abs(pixels(forced) - pixels(tmp_path / "plain.png")).max() > 2
    bad = app("txt2img", *common, "--original-size", "128")
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr
    wrong = app("txt2img", *common, "--refiner", files_sd1(tmp_path))
    assert wrong.returncode == 2 and "is a SD 1.x model; it cannot refine SDXL" in wrong.stderr \
        and "Traceback" not in wrong.stderr


def files_sd1(folder: Path) -> Path:
    return tiny_checkpoint(folder / "sd1.safetensors")


# ------------------------------------------------------------------------------ the server's door

def test_extensions_work_from_the_command_line(tmp_path):
    """The CLI loads the same extensions as the server: a LoRA tag and a ControlNet unit change the picture and are
    recorded; no "no extension handles" warning."""
    from webui.paths import DEMO_CHECKPOINT
    if not DEMO_CHECKPOINT.is_file():
        pytest.skip("no demo checkpoint in this checkout")
    common = ("--prompt", "a large red circle on a white background", "--steps", "6", "--seed", "3",
              "--data-dir", tmp_path, "--quiet")
    plain = ok(app("txt2img", *common, "-o", tmp_path / "plain.png"))
    lora = ok(app("txt2img", *common[:1], common[1] + " <lora:webui-demo-outline:1>", *common[2:],
                  "-o", tmp_path / "lora.png"))
    assert "no extension handles" not in lora.stderr and "warning" not in plain.stderr
    assert 'Lora hashes: "webui-demo-outline: ' in read_infotext(tmp_path / "lora.png")
    assert np.abs(pixels(tmp_path / "lora.png") - pixels(tmp_path / "plain.png")).max() > 8
    hint = np.zeros((64, 64), np.uint8)
    hint[36:60, 36:60] = 255
    Image.fromarray(hint).save(tmp_path / "hint.png")
    ok(app("txt2img", *common, "--controlnet", f"model=webui-demo-mask,image={tmp_path / 'hint.png'},weight=1",
           "-o", tmp_path / "control.png"))
    assert 'ControlNet 0: "Module: none, Model: webui-demo-mask [' in read_infotext(tmp_path / "control.png")
    assert np.abs(pixels(tmp_path / "control.png") - pixels(tmp_path / "plain.png")).max() > 8


def test_a_request_file_takes_the_apis_body(files, tmp_path):
    """``--request FILE.json``: the body of POST /sdapi/v1/txt2img, hires fix included; the generation flags are
    refused beside it."""
    import json
    body = {"prompt": "a cat", "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64, "seed": 11,
            "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    (tmp_path / "body.json").write_text(json.dumps(body))
    proc = ok(app("txt2img", "--ckpt", files["ckpt"], "--request", tmp_path / "body.json", "--data-dir", tmp_path,
                  "--quiet", "-o", tmp_path / "hires.png"))
    assert printed_paths(proc) == [tmp_path / "hires.png"]
    with Image.open(tmp_path / "hires.png") as img:
        assert img.size == (96, 96)
    parsed = info(tmp_path / "hires.png")
    assert (parsed.prompt, parsed.seed, parsed.steps, parsed.denoising_strength) == ("a cat", 11, 2, 0.5)
    assert parsed.extra["Hires upscale"] == "1.5" and parsed.model == "tiny-model"
    both = app("txt2img", "--ckpt", files["ckpt"], "--request", tmp_path / "body.json", "--steps", "5",
               "--data-dir", tmp_path, "-o", tmp_path / "no.png")
    assert both.returncode == 2 and "--request takes the whole request; drop --steps" in both.stderr
    assert not (tmp_path / "no.png").exists()
