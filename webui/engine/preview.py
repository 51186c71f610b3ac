"""Live previews of a running generation: latents -> a small RGB picture, cheaply.

Three ways, as A1111 offers them:

- **Approx cheap**: one linear map from the 4 latent channels to RGB per pixel (A1111's
  ``cheap_approximation``). The factors are the family's (SD 1.x/2.x, SDXL), or the checkpoint's own when
  its metadata carries ``webui.latent_rgb`` (the demo model's are fitted when it is trained).
- **TAESD**: the tiny autoencoder's decoder (madebyollin/taesd; ``taesd_decoder.safetensors`` / ``.pth``
  for SD 1.x/2.x, ``taesdxl_decoder.*`` for SDXL in ``models/vae_approx/``); full-size previews.
- **Full**: the model's own VAE.

The module layout of ``TAESDDecoder`` mirrors the original file's keys (``1.weight``, ``3.conv.0.weight``
...), so weights load without a key table.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

LATENT_RGB_KEY = "webui.latent_rgb"  # {"factors": 4x3, "bias": 3}: latent (scaled) -> RGB in [-1, 1]

# A1111's sd_vae_approx.cheap_approximation factors (rows: latent channels, columns: R, G, B)
_SD1_FACTORS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SDXL_FACTORS = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
                 (-0.3730, -0.2499, -0.2088))


def latent_rgb(family_name: str, metadata: dict[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(factors (4, 3), bias (3,)) for the cheap approximation of this model's latents."""
    raw = (metadata or {}).get(LATENT_RGB_KEY)
    if raw:
        try:
            values = json.loads(raw)
            factors, bias = torch.tensor(values["factors"]), torch.tensor(values["bias"])
            if factors.shape == (4, 3) and bias.shape == (3,) and torch.isfinite(factors).all():
                return factors.float(), bias.float()
        except (ValueError, KeyError, TypeError):
            pass  # malformed metadata: the family's factors still give a usable preview
    if family_name.startswith("sdxl"):       # base, inpainting and refiner share SDXL's latent space
        return torch.tensor(_SDXL_FACTORS), torch.zeros(3)
    return torch.tensor(_SD1_FACTORS), torch.zeros(3)


def cheap_approximation(latents: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) scaled latents -> (B, 3, h, w) RGB in [-1, 1] (at latent resolution)."""
    x = torch.einsum("bchw,cr->brhw", latents.float(), factors.to(latents.device))
    return (x + bias.to(latents.device)[None, :, None, None]).clamp(-1.0, 1.0)


# ------------------------------------------------------------------------------------------------ TAESD

class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TAESDDecoder(nn.Sequential):
    """TAESD's decoder: scaled latents (B, 4, h, w) -> RGB (B, 3, 8h, 8w) in about [0, 1]."""

    def __init__(self, channels: int = 64, latent_channels: int = 4):
        c = channels
        layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, c), nn.ReLU()]
        for _ in range(3):
            layers += [_Block(c, c), _Block(c, c), _Block(c, c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False)]
        layers += [_Block(c, c), _conv(c, 3)]
        super().__init__(*layers)


TAESD_FILES = {"sdxl": ("taesdxl_decoder.safetensors", "taesdxl_decoder.pth"),
               "sd": ("taesd_decoder.safetensors", "taesd_decoder.pth")}


def find_taesd(folder: Path, family_name: str) -> Path | None:
    """The TAESD decoder file for this family in ``folder`` (``models/vae_approx``), if there is one."""
    for name in TAESD_FILES["sdxl" if family_name.startswith("sdxl") else "sd"]:
        path = folder / name
        if path.is_file():
            return path
    return None


def load_taesd(path: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> TAESDDecoder:
    """Load a TAESD decoder file (``.safetensors``, or ``.pth`` read with ``weights_only``: no code runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        import safetensors.torch
        state = safetensors.torch.load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    decoder = TAESDDecoder()
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path.name} is not a TAESD decoder: {len(missing)} keys missing "
                         f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def taesd_preview(decoder: TAESDDecoder, latents: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) scaled latents -> (B, 3, 8h, 8w) RGB in [-1, 1]."""
    param = next(decoder.parameters())
    with torch.no_grad():
        rgb = decoder(latents.to(param.device, param.dtype)).float()
    return (rgb * 2 - 1).clamp(-1.0, 1.0)
