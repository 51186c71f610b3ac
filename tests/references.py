"""Independent reference implementations, imported for the parity tests only.

k-diffusion's ``sampling.py`` and ``external.py`` are loaded from the installed distribution by file
path: its package ``__init__`` pulls training-only dependencies we do not install.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from functools import cache
from pathlib import Path

import torch


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _append_dims(x, target_dims):
    return x[(...,) + (None,) * (target_dims - x.ndim)]


@cache
def k_diffusion():
    """``(sampling, external)`` modules of k-diffusion."""
    dist = Path(importlib.util.find_spec("k_diffusion").submodule_search_locations[0])
    package = types.ModuleType("kdiff_ref")
    package.__path__ = [str(dist)]
    sys.modules["kdiff_ref"] = package
    # k_diffusion/utils.py imports torchvision; the two modules only need its append_dims
    utils = types.ModuleType("kdiff_ref.utils")
    utils.append_dims = _append_dims
    sys.modules["kdiff_ref.utils"] = package.utils = utils
    sampling = _load("kdiff_ref.sampling", dist / "sampling.py")
    package.sampling = sampling
    external = _load("kdiff_ref.external", dist / "external.py")
    return sampling, external


@cache
def open_clip_tokenizer():
    """open_clip's ``SimpleTokenizer`` module (open_clip's package __init__ needs torchvision)."""
    dist = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0])
    return _load("open_clip_tokenizer_ref", dist / "tokenizer.py")


class LDMShim(torch.nn.Module):
    """What k-diffusion's CompVisDenoiser expects of an LDM, around a diffusers pipeline's UNet:
    ``alphas_cumprod`` and ``apply_model`` (``c_concat``: the extra input of inpainting models)."""

    def __init__(self, pipe):
        super().__init__()
        self.unet = pipe.unet
        self.register_buffer("alphas_cumprod", pipe.scheduler.alphas_cumprod.float())

    def apply_model(self, x, t, cond, c_concat=None):
        if c_concat is not None:
            x = torch.cat([x, c_concat], dim=1)
        return self.unet(x, t, encoder_hidden_states=cond).sample
