"""Tiling: for the job, every padded convolution of the UNet and the VAE wraps around the image's edges (as
A1111 sets ``padding_mode = "circular"``), so the picture tiles seamlessly; afterwards they pad with zeros
again."""
from __future__ import annotations

import torch

from webui.engine.patches import JobPatches
from webui.engine.request import GenerationRequest
from webui.jobs.parameters import extra_params


def _modes(model) -> set[str]:
    return {m.padding_mode for net in (model.unet, model.vae) for m in net.modules()
            if isinstance(m, torch.nn.Conv2d) and any(m.padding)}


@torch.no_grad()
def test_circular_padding_makes_the_decoder_wrap_around(engine):
    model = engine.model
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with engine.patched(JobPatches(conv_padding="circular")):
        assert _modes(model) == {"circular"}
        image, shifted = model.vae.decode(z), model.vae.decode(torch.roll(z, shifts=(3, 5), dims=(2, 3)))
        unet = model.unet(torch.roll(z, 2, 3), torch.tensor([500.0]), torch.zeros(1, 77, 64))
        rolled_unet = torch.roll(model.unet(z, torch.tensor([500.0]), torch.zeros(1, 77, 64)), 2, 3)
    assert _modes(model) == {"zeros"}
    # a shifted latent decodes to the shifted picture: the right edge continues into the left one
    torch.testing.assert_close(shifted, torch.roll(image, shifts=(24, 40), dims=(2, 3)), rtol=0, atol=1e-4)
    torch.testing.assert_close(unet, rolled_unet, rtol=0, atol=1e-4)      # a shift by whole downsampled pixels
    plain = model.vae.decode(torch.roll(z, shifts=(3, 5), dims=(2, 3)))
    assert (plain - torch.roll(model.vae.decode(z), shifts=(24, 40), dims=(2, 3))).abs().max() > 1e-2


def test_tiling_request(engine):
    base = dict(prompt="a red cat", steps=3, width=64, height=64, seed=4)
    tiled, plain = engine.generate(GenerationRequest(tiling=True, **base)), engine.generate(GenerationRequest(**base))
    assert extra_params(tiled.facts)["Tiling"] is True and "Tiling" not in extra_params(plain.facts)
    assert tiled.images[0].image.tobytes() != plain.images[0].image.tobytes()
    assert _modes(engine.model) == {"zeros"}
    again = engine.generate(GenerationRequest(**base))
    assert again.images[0].image.tobytes() == plain.images[0].image.tobytes()
