"""Live previews of a running job: a picture of the first latent of a batch, by the ``show_progress_type``
setting -- A1111's cheap latent-to-RGB map, TAESD (when its decoder is in ``models/vae_approx``) or the full VAE.
Made only every N steps (a host sync)."""
from __future__ import annotations

from PIL import Image


class Previews:
    def __init__(self, models):
        self.models = models
        self._taesd: tuple = (None, None)      # (the model it is for, its decoder or False when there is none)

    def picture(self, latents, mode: str) -> Image.Image:
        import torch.nn.functional as F

        from ..engine import images as im
        from ..engine import preview as pv

        engine = self.models.engine
        model = engine.model
        x = latents[:1]
        if mode == "Full":
            return im.to_pil(engine.decode_latents(x)[0])
        if mode == "TAESD":
            if self._taesd[0] is not model:        # looked for again after each load
                path = pv.find_taesd(self.models.vae_approx_dir, model.family.name)
                self._taesd = (model, pv.load_taesd(path, engine.device) if path else False)
            if self._taesd[1]:
                return im.to_pil(pv.taesd_preview(self._taesd[1], x)[0])
        factors, bias = pv.latent_rgb(model.family.name, model.metadata)
        rgb = pv.cheap_approximation(x, factors, bias)
        return im.to_pil(F.interpolate(rgb, scale_factor=8, mode="nearest")[0])
