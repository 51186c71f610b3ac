"""``--vae-decode taesd``: the final images come from TAESD's decoder instead of the model's VAE; without the
file the CLI says which one is missing and the server goes on with the VAE."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from webui.engine import preview as pv
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest
from webui.jobs.backend import Backend
from webui.options import Options
from webui.paths import PROJECT_ROOT, Paths


def _write_taesd(folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    safetensors.torch.save_file(pv.TAESDDecoder().state_dict(), str(folder / "taesd_decoder.safetensors"))


def _request() -> GenerationRequest:
    return GenerationRequest(prompt="a red circle", steps=3, seed=7, width=64, height=64, sampler_name="Euler",
                             batch_size=2)


def test_the_engine_decodes_with_taesd_when_set_and_with_the_vae_again_after(tiny_ckpt, tmp_path):
    folder = tmp_path / "vae_approx"
    engine = Engine("cpu", "full")
    engine.load(tiny_ckpt)
    with pytest.raises(ValueError, match="taesd_decoder.safetensors"):
        engine.set_fast_decoder(folder)                       # nothing there yet
    _write_taesd(folder)
    assert engine.set_fast_decoder(folder) == folder / "taesd_decoder.safetensors"
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = pv.taesd_preview(pv.load_taesd(folder / "taesd_decoder.safetensors"), latents)
    torch.testing.assert_close(engine.decode_latents(latents), reference)

    fast = [np.asarray(i.image, np.int16) for i in engine.generate(_request()).images]
    engine.set_fast_decoder(None)
    full = [np.asarray(i.image, np.int16) for i in engine.generate(_request()).images]
    assert all(np.abs(a - b).max() > 10 for a, b in zip(fast, full))   # a different decoder drew them
    with torch.no_grad():
        vae = engine.model.vae.decode(latents / engine.model.family.latent_scale)
    torch.testing.assert_close(engine.decode_latents(latents), vae)

    engine.set_fast_decoder(folder)
    engine.load(tiny_ckpt)                                     # a new model starts with its own VAE
    assert engine.fast_decoder is None


def test_cli_names_the_missing_file_and_decodes_with_taesd_when_there(tiny_ckpt, tmp_path):
    args = [sys.executable, "app.py", "txt2img", "--ckpt", str(tiny_ckpt), "--prompt", "a fox", "--steps",
            "2", "--width", "64", "--height", "64", "--seed", "3", "--data-dir", str(tmp_path)]
    missing = subprocess.run([*args, "--vae-decode", "taesd", "-o", str(tmp_path / "a.png")], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "taesd_decoder.safetensors" in missing.stderr and str(tmp_path / "models" / "vae_approx") in missing.stderr
    _write_taesd(tmp_path / "models" / "vae_approx")
    outs = {}
    for mode in ("taesd", "full"):
        proc = subprocess.run([*args, "--vae-decode", mode, "-o", str(tmp_path / f"{mode}.png")], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        with Image.open(tmp_path / f"{mode}.png") as img:
            outs[mode] = np.asarray(img.convert("RGB"), np.int16)
    assert np.abs(outs["taesd"] - outs["full"]).max() > 10


def test_the_server_without_the_file_logs_it_and_decodes_with_the_vae(tiny_ckpt, tmp_path):
    paths = Paths(root=tmp_path)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    (paths.checkpoints / "tiny.safetensors").write_bytes(tiny_ckpt.read_bytes())
    lines = []
    backend = Backend(paths, Options(tmp_path / "config.json"), device="cpu", precision="full", log=lines.append,
                      vae_decode="taesd", persist=False)
    backend.start("tiny.safetensors").wait()
    assert backend.status.state == "ready" and backend.models.engine.fast_decoder is None
    assert any("taesd_decoder.safetensors" in line and "model's VAE" in line for line in lines), lines
    _write_taesd(tmp_path / "models" / "vae_approx")
    backend.unload().wait()                                   # reload: now it is found
    backend.load("tiny.safetensors").wait()
    assert isinstance(backend.models.engine.fast_decoder, pv.TAESDDecoder)
    backend.stop()
