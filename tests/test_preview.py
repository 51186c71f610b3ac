"""webui/engine/preview.py: live previews (cheap linear map, TAESD) against their references."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from webui.engine import preview as pv


def test_cheap_approximation_is_a1111s_linear_map():
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    factors, bias = pv.latent_rgb("sd1")
    expected = torch.einsum("...lxy,lr -> ...rxy", latents, torch.tensor(pv._SD1_FACTORS))  # A1111's formula
    torch.testing.assert_close(pv.cheap_approximation(latents, factors, bias), expected.clamp(-1, 1))


def test_checkpoint_metadata_factors_win_and_bad_ones_fall_back():
    meta = {pv.LATENT_RGB_KEY: json.dumps({"factors": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]],
                                            "bias": [0.1, 0.2, 0.3]})}
    factors, bias = pv.latent_rgb("sd1", meta)
    x = torch.zeros(1, 4, 2, 2)
    x[:, 0] = 0.5
    out = pv.cheap_approximation(x, factors, bias)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.6, 0.2, 0.3]))
    for bad in ("{", json.dumps({"factors": [[1, 2]], "bias": [0]}), json.dumps({"bias": [0, 0, 0]})):
        f, b = pv.latent_rgb("sdxl", {pv.LATENT_RGB_KEY: bad})
        torch.testing.assert_close(f, torch.tensor(pv._SDXL_FACTORS))


def _diffusers_tiny_decoder():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderTiny().eval()


def test_taesd_decoder_matches_diffusers_autoencoder_tiny(tmp_path):
    reference = _diffusers_tiny_decoder()
    # diffusers keeps the decoder's layers after the clamp as decoder.layers.N: the original file's key is N+1
    state = {}
    for key, value in reference.decoder.state_dict().items():
        head, _, rest = key.partition(".")
        assert head == "layers"
        index, _, tail = rest.partition(".")
        state[f"{int(index) + 1}.{tail}"] = value.clone()
    path = tmp_path / "taesd_decoder.safetensors"
    safetensors.torch.save_file(state, str(path))
    assert pv.find_taesd(tmp_path, "sd1") == path and pv.find_taesd(tmp_path, "sdxl") is None
    ours = pv.load_taesd(path)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.decode(latents).sample    # diffusers: [-1, 1], scaling_factor 1
    torch.testing.assert_close(pv.taesd_preview(ours, latents), expected.clamp(-1, 1), atol=1e-5, rtol=1e-4)


def test_a_file_that_is_not_taesd_is_refused(tmp_path):
    path = tmp_path / "taesd_decoder.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a TAESD decoder"):
        pv.load_taesd(path)
