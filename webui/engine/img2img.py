"""img2img and inpainting inputs, A1111's ``StableDiffusionProcessingImg2Img.init`` step by step: the init image
resized (or cropped to the mask's region for "Only masked"), the mask blurred and rounded, the masked content
filled, the init latent, the latent-size mask of what is kept, and the overlay pasted over the result. Also the
extra UNet input of 9-channel inpainting models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from . import images as im
from .request import GenerationRequest
from .result import MaskFacts
from .seeds import ImageRNG


@dataclass(frozen=True)
class Img2ImgInputs:
    init_latent: torch.Tensor                  # (B, C, h, w), in the latent format
    source: torch.Tensor                       # (B, 3, H, W) in [-1, 1] after fill
    image_mask: Image.Image | None             # processing-size mask (white = repaint)
    keep_mask: torch.Tensor | None = None      # latent-size, 1 = keep
    overlay: Image.Image | None = None         # original with alpha = keep
    paste_box: tuple | None = None

    def mask_facts(self, request: GenerationRequest) -> MaskFacts | None:
        """The inpainting settings that applied (None without a mask). "Only masked" and the masked content
        count only when there was something to mask (a blank mask falls back to plain img2img, as A1111)."""
        if request.mask is None:
            return None
        masked = self.image_mask is not None
        return MaskFacts(invert=request.inpainting_mask_invert, blur=request.mask_blur,
                         only_masked_padding=(request.inpaint_full_res_padding
                                              if masked and request.inpaint_full_res else None),
                         fill=request.inpainting_fill if masked and request.inpainting_fill != 1 else None)

    def finish(self, samples: torch.Tensor) -> torch.Tensor:
        """The sampled latents with the kept region put back (inpainting)."""
        if self.keep_mask is None:
            return samples
        return samples * (1.0 - self.keep_mask) + self.init_latent * self.keep_mask

    def paste(self, image: Image.Image) -> Image.Image:
        """The decoded image with the original pasted over what was kept."""
        return image if self.overlay is None else im.apply_overlay(image, self.paste_box, self.overlay)


def prepare_img2img(engine, request: GenerationRequest, first_seeds: list[int]) -> Img2ImgInputs:
    """A1111's ``StableDiffusionProcessingImg2Img.init``; ``engine`` encodes (``Engine.encode_images``)."""
    width, height, batch = request.width, request.height, request.batch_size
    image = im.flatten(request.init_image)
    image_mask = overlay_mask = region = paste_box = overlay = None
    if request.mask is not None:
        mask = im.binary_mask(request.mask)
        if request.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        if request.mask_blur > 0:
            mask = im.blur_mask(mask, request.mask_blur)
        if request.inpaint_full_res:
            overlay_mask = mask
            region = im.crop_region(mask, request.inpaint_full_res_padding)
            if region is not None:
                region = im.expand_crop_region(region, width, height, mask.width, mask.height)
                image_mask = im.resize_image(2, mask.crop(region), width, height)
                x1, y1, x2, y2 = region
                paste_box = (x1, y1, x2 - x1, y2 - y1)
            else:
                overlay_mask = None            # blank mask: plain img2img, as A1111
        else:
            image_mask = im.resize_image(request.resize_mode, mask, width, height)
            doubled = np.clip(np.asarray(image_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
            overlay_mask = Image.fromarray(doubled)
    if region is None and request.resize_mode != 3:
        image = im.resize_image(request.resize_mode, image, width, height)
    if image_mask is not None:
        if overlay_mask.size != image.size:
            overlay_mask = im.resize_image(request.resize_mode, overlay_mask, image.width, image.height)
        overlay = im.overlay(image, ImageOps.invert(overlay_mask))
    if region is not None:
        image = im.resize_image(2, image.crop(region), width, height)
    if image_mask is not None and request.inpainting_fill != 1:
        image = im.fill(image, image_mask)

    source = im.to_tensor(image)[None].expand(batch, -1, -1, -1).to(engine.device)
    init_latent = engine.encode_images(source)
    if request.resize_mode == 3 and region is None:
        init_latent = torch.nn.functional.interpolate(init_latent, size=(height // 8, width // 8), mode="bilinear")
    keep_mask = None
    if image_mask is not None:
        size = (init_latent.shape[3], init_latent.shape[2])
        blend_mask = request.latent_mask if request.latent_mask is not None else image_mask   # A1111's order
        latmask = np.asarray(blend_mask.convert("RGB").resize(size), dtype=np.float32)[..., 0] / 255.0
        latmask = torch.from_numpy(np.around(latmask)).to(engine.device)[None, None]
        keep_mask = 1.0 - latmask
        if request.inpainting_fill == 2:
            noise = ImageRNG(first_seeds, tuple(init_latent.shape[1:]), engine.device).next()
            init_latent = init_latent * keep_mask + noise * latmask
        elif request.inpainting_fill == 3:
            init_latent = init_latent * keep_mask
    return Img2ImgInputs(init_latent, source, image_mask, keep_mask, overlay, paste_box)


def image_conditioning(engine, width: int, height: int, batch: int,
                       inputs: Img2ImgInputs | None = None) -> torch.Tensor:
    """Extra UNet input of 9-channel inpainting models: [mask, latent of the masked image]. Without ``inputs``
    (txt2img, a hires pass) everything is "to be painted" and the masked image is grey."""
    device = engine.device
    if inputs is None:
        source = torch.zeros(batch, 3, height, width, device=device)
        mask = torch.ones(1, 1, height, width, device=device)
    else:
        source = inputs.source
        if inputs.image_mask is not None:
            arr = np.asarray(inputs.image_mask.convert("L"), dtype=np.float32) / 255.0
            mask = torch.from_numpy(arr).round()[None, None].to(device)
        else:
            mask = torch.ones(1, 1, *source.shape[-2:], device=device)
    latent = engine.encode_images(source * (1.0 - mask))
    mask = torch.nn.functional.interpolate(mask, size=latent.shape[-2:]).expand(latent.shape[0], -1, -1, -1)
    return torch.cat([mask, latent], dim=1)
