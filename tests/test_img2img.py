"""End-to-end parity of img2img and inpainting: our Engine vs a reference written in this file.

The reference is diffusers' networks (``from_single_file``, offline, on the same tiny files) driven by
k-diffusion's sampler functions, or by an alpha-form DDIM loop for A1111's timestep samplers, with
A1111's ``StableDiffusionProcessingImg2Img`` rules (modules/processing.py ``init``/``sample``,
modules/masking.py, modules/images.py ``resize_image``, sd_samplers_cfg_denoiser.py,
sd_samplers_timesteps.py) re-stated below without importing webui/. Images must agree within 2/255.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps

from tests.references import LDMShim, k_diffusion
from tests.tiny import tiny_checkpoint
from tests.tiny_models import diffusers_config_dir
from webui.engine.request import GenerationRequest
from webui.jobs.parameters import extra_params

W = H = 64
PROMPT, NEGATIVE = "a red circle on a blue background", "blurry"
SCALE = 0.18215
SEED = 4321                     # the default seed of both _request() and Reference.generate()

# sampler display name -> (k-diffusion function, schedule, noise)
K_SAMPLERS = {
    "Euler": ("sample_euler", "uniform", None),
    "DPM++ 2M": ("sample_dpmpp_2m", "karras", None),
    "Euler a": ("sample_euler_ancestral", "uniform", "ancestral"),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "exponential", "brownian"),
}


# ------------------------------------------------------------------------------ A1111's image rules

def a1111_timesteps(steps: int) -> list[int]:
    """CompVisSampler.get_timesteps: clip(range(0, 1000, 1000 // steps) + 1, 0, 999), ascending."""
    return [min(t + 1, 999) for t in range(0, 1000, 1000 // steps)]


def ref_resize(mode: int, img: Image.Image, w: int, h: int) -> Image.Image:
    """images.resize_image: 0 stretch; 1 cover + centre crop; anything else fit + stretched edges."""
    if mode == 0:
        return img.resize((w, h), Image.LANCZOS)
    wide_target = w * img.height > img.width * h
    cover = mode == 1
    if wide_target == cover:        # match the target width, the height follows the aspect ratio
        sw, sh = w, img.height * w // img.width
    else:
        sw, sh = img.width * h // img.height, h
    small = img.resize((sw, sh), Image.LANCZOS)
    canvas = Image.new("RGB", (w, h))
    left, top = w // 2 - sw // 2, h // 2 - sh // 2
    canvas.paste(small, (left, top))
    if not cover and top > 0:       # bands above / below: the first / last row, resampled
        canvas.paste(small.resize((w, top), box=(0, 0, w, 0)), (0, 0))
        canvas.paste(small.resize((w, top), box=(0, sh, w, sh)), (0, top + sh))
    if not cover and left > 0:
        canvas.paste(small.resize((left, h), box=(0, 0, 0, h)), (0, 0))
        canvas.paste(small.resize((left, h), box=(sw, 0, sw, h)), (left + sw, 0))
    return canvas


def ref_blur(mask: Image.Image, sigma: int) -> Image.Image:
    """Two cv2.GaussianBlur passes (x then y, ksize 2*int(2.5*s+0.5)+1, reflect-101), 8 bits between."""
    from scipy.ndimage import gaussian_filter1d

    arr = np.asarray(mask, dtype=np.float64)
    for axis in (1, 0):
        arr = np.clip(np.round(gaussian_filter1d(arr, sigma, axis=axis, mode="mirror", truncate=2.5)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def ref_crop_region(mask: Image.Image, pad: int):
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    return (max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0),
            min(int(xs.max()) + 1 + pad, mask.width), min(int(ys.max()) + 1 + pad, mask.height))


def ref_expand(region, w, h, iw, ih):
    """masking.expand_crop_region: grow the short side to the w:h ratio, shift back inside, clip."""
    x1, y1, x2, y2 = region

    def grow(a, b, target, limit):
        extra = int(target - (b - a))
        a, b = a - extra // 2, b + extra - extra // 2
        if b >= limit:
            a, b = a - (b - limit), limit
        if a < 0:
            a, b = 0, b - a
        return a, min(b, limit)

    if (x2 - x1) / (y2 - y1) > w / h:
        y1, y2 = grow(y1, y2, (x2 - x1) / (w / h), ih)
    else:
        x1, x2 = grow(x1, x2, (y2 - y1) * (w / h), iw)
    return x1, y1, x2, y2


def ref_fill(img: Image.Image, mask: Image.Image) -> Image.Image:
    """masking.fill: layers of ever less blurred copies of the unmasked image, composited."""
    known = Image.new("RGBa", img.size)
    known.paste(img.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", img.size)
    for radius, times in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        layer = known.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            out.alpha_composite(layer)
    return out.convert("RGB")


@dataclass
class Prepared:
    image: Image.Image                    # what is encoded (processing size, after fill)
    image_mask: Image.Image | None        # processing-size mask, white = repaint
    overlay: Image.Image | None           # original with alpha = what to keep
    paste_to: tuple | None


def a1111_prepare(init, mask, w, h, *, resize_mode=0, blur=4, fill=1, invert=False, full_res=False,
                  padding=32) -> Prepared:
    """StableDiffusionProcessingImg2Img.init, image side."""
    image_mask = overlay_mask = region = paste_to = overlay = None
    if mask is not None:
        m = mask.convert("L")
        if invert:
            m = ImageOps.invert(m)
        if blur > 0:
            m = ref_blur(m, blur)
        if full_res:
            region = ref_crop_region(m, padding)
            if region is not None:          # a blank mask falls back to plain img2img
                overlay_mask = m
                region = ref_expand(region, w, h, m.width, m.height)
                image_mask = ref_resize(2, m.crop(region), w, h).convert("L")
                paste_to = (region[0], region[1], region[2] - region[0], region[3] - region[1])
        else:
            image_mask = ref_resize(resize_mode, m, w, h).convert("L")
            overlay_mask = Image.fromarray(np.minimum(np.asarray(image_mask, dtype=np.int32) * 2, 255)
                                           .astype(np.uint8))
    image = init.convert("RGB")
    if region is None and resize_mode != 3:
        image = ref_resize(resize_mode, image, w, h)
    if image_mask is not None:
        if overlay_mask.size != image.size:
            overlay_mask = ref_resize(resize_mode, overlay_mask, image.width, image.height).convert("L")
        layer = Image.new("RGBa", image.size)
        layer.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask))
        overlay = layer.convert("RGBA")
    if region is not None:
        image = ref_resize(2, image.crop(region), w, h)
    if image_mask is not None and fill != 1:
        image = ref_fill(image, image_mask)
    return Prepared(image, image_mask, overlay, paste_to)


def a1111_overlay(generated: Image.Image, prep: Prepared) -> Image.Image:
    """processing.apply_overlay: paste a crop back (resize mode 1), lay the kept original over it."""
    if prep.overlay is None:
        return generated
    if prep.paste_to is not None:
        x, y, w, h = prep.paste_to
        base = Image.new("RGBA", prep.overlay.size)
        base.paste(ref_resize(1, generated, w, h), (x, y))
        generated = base
    out = generated.convert("RGBA")
    out.alpha_composite(prep.overlay)
    return out.convert("RGB")


# ----------------------------------------------------------------------------------------- reference

class Reference:
    def __init__(self, pipe):
        # k-diffusion's sampling.py imports scipy and torchsde (ref_blur needs scipy too): the tests that compare
        # with this reference skip without them, the engine-only tests in this file always run
        pytest.importorskip("scipy")
        pytest.importorskip("torchsde")
        self.sampling, external = k_diffusion()
        self.pipe = pipe
        self.shim = LDMShim(pipe)
        self.model = external.CompVisDenoiser(self.shim, quantize=False)
        self.acp = self.shim.alphas_cumprod
        self.inpainting = pipe.unet.config.in_channels == 9

    def text(self, prompt, batch):
        ids = self.pipe.tokenizer([prompt] * batch, padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids
        return self.pipe.text_encoder(ids)[0]

    def encode(self, images):                      # (B, 3, H, W) in [-1, 1]
        return self.pipe.vae.encode(images).latent_dist.mean * SCALE

    def decode(self, latents) -> list[Image.Image]:
        out = self.pipe.vae.decode(latents / SCALE).sample
        arrays = (torch.clamp((out + 1) / 2, 0, 1) * 255).permute(0, 2, 3, 1).numpy().astype(np.uint8)
        return [Image.fromarray(a) for a in arrays]

    def sigmas(self, kind, steps):
        lo, hi = self.model.sigma_min.item(), self.model.sigma_max.item()
        if kind == "uniform":
            return self.model.get_sigmas(steps)
        if kind == "karras":
            return self.sampling.get_sigmas_karras(steps, lo, hi)
        return self.sampling.get_sigmas_exponential(steps, lo, hi)

    @torch.no_grad()
    def generate(self, sampler="Euler", steps=6, seed=SEED, cfg=7.0, batch=1, init=None, strength=0.75, mask=None,
                 width=W, height=H, **prep_options) -> tuple[list[Image.Image], Prepared | None]:
        seeds = [seed + i for i in range(batch)]
        shape = (4, height // 8, width // 8)

        def fresh_noise():
            return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])

        cond, uncond = self.text(PROMPT, batch), self.text(NEGATIVE, batch)
        prep = latent = keep = image_cond = None
        if init is not None:
            prep = a1111_prepare(init, mask, width, height, **prep_options)
            img = torch.from_numpy(np.asarray(prep.image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
            img = (img * 2 - 1).expand(batch, -1, -1, -1)
            latent = self.encode(img)
            if prep.image_mask is not None:
                small = prep.image_mask.resize((width // 8, height // 8), Image.BICUBIC)   # PIL's default
                repaint = torch.from_numpy(np.round(np.asarray(small, dtype=np.float32) / 255))
                keep = 1 - repaint
                fill = prep_options.get("fill", 1)
                if fill == 2:
                    latent = latent * keep + fresh_noise() * repaint
                elif fill == 3:
                    latent = latent * keep
            if self.inpainting:
                cmask = (torch.ones(1, 1, height, width) if prep.image_mask is None else
                         torch.from_numpy(np.asarray(prep.image_mask, dtype=np.float32) / 255).round()[None, None])
                small_mask = torch.nn.functional.interpolate(cmask, size=shape[1:])      # nearest
                image_cond = torch.cat([small_mask.expand(batch, -1, -1, -1), self.encode(img * (1 - cmask))], dim=1)
        elif self.inpainting:       # txt2img: all "to paint", masked image = grey (0.5 in [0, 1])
            image_cond = torch.cat([torch.ones(batch, 1, *shape[1:]),
                                    self.encode(torch.zeros(batch, 3, height, width))], dim=1)

        fn_name, kind, noise_kind = K_SAMPLERS[sampler]
        sigmas = self.sigmas(kind, steps)
        sched = sigmas
        if init is not None:
            t_enc = int(min(strength, 0.999) * steps)
            sched = sigmas[steps - t_enc - 1:]
        noise = fresh_noise()
        x = noise * sched[0] if init is None else latent + noise * sched[0]

        def denoiser(x, sigma):
            extra = {} if image_cond is None else {"c_concat": torch.cat([image_cond, image_cond])}
            c, u = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]),
                              **extra).chunk(2)
            denoised = u + (c - u) * cfg
            return denoised if keep is None else latent * keep + (1 - keep) * denoised

        kwargs = {}
        if noise_kind == "ancestral":
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            [torch.randn(shape, generator=g) for g in gens]                      # the initial noise
            kwargs["noise_sampler"] = lambda s, sn: torch.stack([torch.randn(shape, generator=g) for g in gens])
        elif noise_kind == "brownian":   # A1111: the tree spans the full schedule, also in img2img
            pos = sigmas[sigmas > 0]
            kwargs["noise_sampler"] = self.sampling.BrownianTreeNoiseSampler(x, pos.min(), pos.max(), seed=seeds)
        out = getattr(self.sampling, fn_name)(denoiser, x, sched, disable=True, **kwargs)
        if keep is not None:
            out = out * (1 - keep) + latent * keep
        return [a1111_overlay(img, prep) if prep else img for img in self.decode(out)], prep

    # ---- A1111's DDIM (sd_samplers_timesteps_impl.ddim), alpha form over integer timesteps
    def eps(self, x_vp, t, cond, uncond, cfg, image_cond=None):
        model_in = torch.cat([x_vp, x_vp])
        if image_cond is not None:
            model_in = torch.cat([model_in, torch.cat([image_cond, image_cond])], dim=1)
        tt = torch.full((model_in.shape[0],), float(t))
        c, u = self.pipe.unet(model_in, tt, encoder_hidden_states=torch.cat([cond, uncond])).sample.chunk(2)
        return u + (c - u) * cfg

    @torch.no_grad()
    def generate_ddim(self, steps, seed, cfg=7.0, init=None, strength=0.75, mask=None, **prep_options):
        shape = (4, H // 8, W // 8)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))[None]
        cond, uncond = self.text(PROMPT, 1), self.text(NEGATIVE, 1)
        ts = a1111_timesteps(steps)
        prep = keep = latent = None
        if init is None:
            x = noise
        else:
            prep = a1111_prepare(init, mask, W, H, **prep_options)
            img = torch.from_numpy(np.asarray(prep.image, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
            latent = self.encode(img)
            if prep.image_mask is not None:
                small = prep.image_mask.resize((W // 8, H // 8), Image.BICUBIC)
                keep = 1 - torch.from_numpy(np.round(np.asarray(small, dtype=np.float32) / 255))
            t_enc = int(min(strength, 0.999) * steps)
            a = float(self.acp[ts[t_enc]])
            x = latent * math.sqrt(a) + noise * math.sqrt(1 - a)     # noised to ts[t_enc] ...
            ts = ts[:t_enc]                                          # ... sampled over ts[:t_enc]
        for index in range(len(ts) - 1, 0, -1):
            a, a_prev = float(self.acp[ts[index]]), float(self.acp[ts[index - 1]])
            model_x = x if keep is None else x * (1 - keep) + latent * keep    # mask_before_denoising
            e = self.eps(model_x, ts[index], cond, uncond, cfg)
            x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e
        if keep is not None:
            x = x * (1 - keep) + latent * keep
        return [a1111_overlay(img, prep) if prep else img for img in self.decode(x)], prep


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_ckpt):
    """``ckpt``: the checkpoint the shared ``engine`` fixture (conftest.py) has loaded."""
    root = tmp_path_factory.mktemp("img2img")
    return {"ckpt": tiny_ckpt,
            "inpaint": tiny_checkpoint(root / "tiny-inpainting.safetensors", inpaint=True),
            "config": diffusers_config_dir(root), "config_inpaint": diffusers_config_dir(root, inpaint=True)}


@pytest.fixture(scope="module")
def inpaint_engine(files, make_engine):
    eng = make_engine(files["inpaint"])
    assert eng.is_inpainting_model
    return eng


def _from_single_file(cls, path, config):
    return cls.from_single_file(str(path), config=str(config), local_files_only=True, safety_checker=None,
                                requires_safety_checker=False)


@pytest.fixture(scope="module")
def reference(files):
    from diffusers import StableDiffusionPipeline
    return Reference(_from_single_file(StableDiffusionPipeline, files["ckpt"], files["config"]))


@pytest.fixture(scope="module")
def inpaint_reference(files):
    from diffusers import StableDiffusionInpaintPipeline
    ref = Reference(_from_single_file(StableDiffusionInpaintPipeline, files["inpaint"], files["config_inpaint"]))
    assert ref.pipe.unet.config.in_channels == 9
    return ref


# ------------------------------------------------------------------------------------------- helpers

def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def _init_image(width=W, height=H) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), ((xx // 8 + yy // 8) % 2) * 200 + 30], -1)
    return Image.fromarray(arr.astype(np.uint8))


def _mask(width=W, height=H, box=(20, 16, 44, 40)) -> Image.Image:
    arr = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr)


def _request(**kw) -> GenerationRequest:
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", steps=6, seed=SEED, width=W,
                height=H)
    return GenerationRequest(**{**base, **kw})


def _check_composite(ours: Image.Image, prep: Prepared, original: Image.Image):
    """Pixels the overlay keeps fully equal the original exactly; fully repainted pixels changed."""
    alpha = np.asarray(prep.overlay)[..., 3]
    kept, repainted = alpha == 255, alpha == 0
    assert kept.any() and repainted.any()
    ours_arr, orig = np.asarray(ours, dtype=np.int16), np.asarray(original, dtype=np.int16)
    assert np.array_equal(ours_arr[kept], orig[kept])
    assert np.abs(ours_arr[repainted] - orig[repainted]).mean() > 10


class _UNetSpy:
    """Records the timesteps (and first inputs) the engine's UNet is called with."""

    def __init__(self, engine):
        self.calls = []
        self.handle = engine.model.unet.register_forward_pre_hook(
            lambda module, args: self.calls.append((args[0].detach().clone(), args[1].detach().clone())))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    @property
    def timesteps(self) -> list[float]:
        return [float(t[0]) for _, t in self.calls]


# --------------------------------------------------------------------- inpainting, normal checkpoint

@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_inpaint_whole_picture_masked_content(engine, reference, fill):
    init, mask = _init_image(), _mask()
    result = engine.generate(_request(init_image=init, mask=mask, inpainting_fill=fill, mask_blur=4,
                                      denoising_strength=0.8))
    expected, prep = reference.generate(init=init, mask=mask, fill=fill, blur=4, strength=0.8)
    ours = result.images[0].image
    assert _max_diff(ours, expected[0]) <= 2
    _check_composite(ours, prep, init)
    extra = extra_params(result.facts)
    assert extra["Mask blur"] == 4 and "Inpaint area" not in extra
    assert extra.get("Masked content") == (None, "fill", None, "latent noise", "latent nothing")[fill + 1]


def test_masked_content_options_give_different_images(engine):
    init, mask = _init_image(), _mask()
    images = [engine.generate(_request(init_image=init, mask=mask, inpainting_fill=f, denoising_strength=0.4))
              .images[0].image for f in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert _max_diff(images[i], images[j]) > 5, (i, j)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a"])
def test_inpaint_invert_mask(engine, reference, sampler):
    init, mask = _init_image(), _mask()
    result = engine.generate(_request(sampler_name=sampler, init_image=init, mask=mask,
                                      inpainting_mask_invert=True, batch_size=2))
    expected, prep = reference.generate(sampler, init=init, mask=mask, invert=True, batch=2)
    for ours, ref in zip(result.images, expected):
        assert _max_diff(ours.image, ref) <= 2
        _check_composite(ours.image, prep, init)
    alpha = np.asarray(prep.overlay)[..., 3]
    assert alpha[28, 32] == 255 and alpha[2, 2] == 0          # the drawn box is kept, the rest repainted
    assert extra_params(result.facts)["Mask mode"] == "Inpaint not masked"


@pytest.mark.parametrize("fill, padding", [(1, 8), (0, 32), (2, 0)])
def test_inpaint_only_masked(engine, reference, fill, padding):
    init = _init_image(96, 80)
    mask = _mask(96, 80, box=(50, 40, 66, 52))
    result = engine.generate(_request(init_image=init, mask=mask, inpainting_fill=fill, inpaint_full_res=True,
                                      inpaint_full_res_padding=padding, mask_blur=2))
    expected, prep = reference.generate(init=init, mask=mask, fill=fill, full_res=True, padding=padding, blur=2)
    ours = result.images[0].image
    assert ours.size == (96, 80) and prep.paste_to is not None
    assert _max_diff(ours, expected[0]) <= 2
    _check_composite(ours, prep, init)
    x, y, w, h = prep.paste_to
    outside = np.ones((80, 96), bool)
    outside[y:y + h, x:x + w] = False
    assert np.array_equal(np.asarray(ours)[outside], np.asarray(init)[outside])   # outside the crop: untouched
    assert extra_params(result.facts)["Inpaint area"] == "Only masked" and extra_params(result.facts)["Masked area padding"] == padding


def test_blank_mask_only_masked_falls_back_to_img2img(engine, reference):
    init = _init_image()
    blank = Image.new("L", (W, H))
    result = engine.generate(_request(init_image=init, mask=blank, inpaint_full_res=True, inpainting_fill=0))
    plain = engine.generate(_request(init_image=init))
    expected, prep = reference.generate(init=init, mask=blank, full_res=True, fill=0)
    assert prep.image_mask is None and prep.overlay is None
    assert _max_diff(result.images[0].image, plain.images[0].image) == 0
    assert _max_diff(result.images[0].image, expected[0]) <= 2
    assert _max_diff(result.images[0].image, init) > 10
    assert "Inpaint area" not in extra_params(result.facts) and "Masked content" not in extra_params(result.facts)
    assert extra_params(result.facts)["Mask blur"] == 4


def test_blank_mask_whole_picture_keeps_the_image(engine):
    init = _init_image()
    result = engine.generate(_request(init_image=init, mask=Image.new("L", (W, H)), denoising_strength=1.0))
    assert _max_diff(result.images[0].image, init) == 0


@pytest.mark.parametrize("full_res", [False, True])
def test_mask_of_another_size_than_the_image(engine, reference, full_res):
    init = _init_image()
    mask = _mask(128, 96, box=(40, 30, 90, 70))
    result = engine.generate(_request(init_image=init, mask=mask, inpaint_full_res=full_res,
                                      inpaint_full_res_padding=4))
    expected, prep = reference.generate(init=init, mask=mask, full_res=full_res, padding=4)
    assert _max_diff(result.images[0].image, expected[0]) <= 2
    _check_composite(result.images[0].image, prep, init)


def test_rgba_mask_uses_its_alpha(engine):
    init, mask = _init_image(), _mask()
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3] = 255                                   # white everywhere: as L it would repaint all
    rgba[..., 3] = np.asarray(mask) // 255 * 230          # alpha carries the box
    from_alpha = engine.generate(_request(init_image=init, mask=Image.fromarray(rgba))).images[0].image
    from_l = engine.generate(_request(init_image=init, mask=mask)).images[0].image
    assert _max_diff(from_alpha, from_l) == 0


@pytest.mark.parametrize("resize_mode", [1, 2])
def test_inpaint_whole_picture_with_resize_modes(engine, reference, resize_mode):
    init, mask = _init_image(96, 64), _mask(96, 64, box=(4, 10, 30, 50))    # box near the left edge
    result = engine.generate(_request(init_image=init, mask=mask, resize_mode=resize_mode))
    expected, prep = reference.generate(init=init, mask=mask, resize_mode=resize_mode)
    assert _max_diff(result.images[0].image, expected[0]) <= 2
    _check_composite(result.images[0].image, prep, ref_resize(resize_mode, init, W, H))


# ------------------------------------------------------------------------ img2img: resize, strength

@pytest.mark.parametrize("resize_mode", [0, 1, 2])
def test_img2img_resize_modes_with_a_non_square_image(engine, reference, resize_mode):
    init = _init_image(128, 64)
    result = engine.generate(_request(init_image=init, resize_mode=resize_mode, denoising_strength=0.5))
    expected, _ = reference.generate(init=init, resize_mode=resize_mode, strength=0.5)
    assert result.images[0].image.size == (W, H)
    assert _max_diff(result.images[0].image, expected[0]) <= 2


def test_resize_modes_change_the_result(engine):
    init = _init_image(128, 64)
    images = [engine.generate(_request(init_image=init, resize_mode=m, denoising_strength=0.3)).images[0].image
              for m in (0, 1, 2)]
    assert _max_diff(images[0], images[1]) > 20 and _max_diff(images[1], images[2]) > 20


@pytest.mark.parametrize("strength, calls", [(0.0, 1), (0.5, 4), (0.999, 6), (1.0, 6)])
def test_denoising_strength_trims_steps(engine, reference, strength, calls):
    init = _init_image()
    with _UNetSpy(engine) as spy:
        result = engine.generate(_request(init_image=init, denoising_strength=strength))
    assert len(spy.calls) == calls                           # t_enc + 1 Euler steps
    expected, _ = reference.generate(init=init, strength=strength)
    assert _max_diff(result.images[0].image, expected[0]) <= 2
    assert extra_params(result.facts)["Denoising strength"] == strength


def test_sde_img2img_brownian_tree_spans_the_full_schedule(engine, reference):
    init = _init_image()
    result = engine.generate(_request(sampler_name="DPM++ 2M SDE", init_image=init, denoising_strength=0.5,
                                      batch_size=2))
    expected, _ = reference.generate("DPM++ 2M SDE", init=init, strength=0.5, batch=2)
    for ours, ref in zip(result.images, expected):
        assert _max_diff(ours.image, ref) <= 2


# ---------------------------------------------------------------------------- 9-channel inpainting

def test_inpainting_model_txt2img(inpaint_engine, inpaint_reference):
    result = inpaint_engine.generate(_request(seed=99))
    expected, _ = inpaint_reference.generate(seed=99)
    assert _max_diff(result.images[0].image, expected[0]) <= 2


@pytest.mark.parametrize("fill, full_res", [(1, False), (0, False), (1, True)])
def test_inpainting_model_inpaint(inpaint_engine, inpaint_reference, fill, full_res):
    init = _init_image(80, 80) if full_res else _init_image()
    mask = _mask(80, 80, box=(25, 25, 55, 55)) if full_res else _mask()
    result = inpaint_engine.generate(_request(init_image=init, mask=mask, inpainting_fill=fill,
                                              inpaint_full_res=full_res, inpaint_full_res_padding=8,
                                              denoising_strength=1.0))
    expected, prep = inpaint_reference.generate(init=init, mask=mask, fill=fill, full_res=full_res, padding=8,
                                                strength=1.0)
    assert _max_diff(result.images[0].image, expected[0]) <= 2
    _check_composite(result.images[0].image, prep, init)


def test_inpainting_model_img2img_without_mask(inpaint_engine, inpaint_reference):
    init = _init_image()
    result = inpaint_engine.generate(_request(init_image=init, denoising_strength=0.6))
    expected, _ = inpaint_reference.generate(init=init, strength=0.6)
    assert _max_diff(result.images[0].image, expected[0]) <= 2


def test_inpainting_model_sees_the_masked_image(inpaint_engine):
    """The conditioning is used: a different image under the same mask changes the painted area."""
    mask = _mask()
    a = inpaint_engine.generate(_request(init_image=_init_image(), mask=mask, denoising_strength=1.0))
    b = inpaint_engine.generate(_request(init_image=ImageOps.mirror(_init_image()), mask=mask,
                                         denoising_strength=1.0))
    inside = np.asarray(mask) == 255
    assert np.abs(np.asarray(a.images[0].image, np.int16) - np.asarray(b.images[0].image, np.int16))[inside].mean() > 2


# ------------------------------------------------------------------------------------ DDIM / UniPC

@pytest.mark.parametrize("steps", [5, 3])
def test_ddim_txt2img(engine, reference, steps):
    result = engine.generate(_request(sampler_name="DDIM", steps=steps, seed=7))
    expected, _ = reference.generate_ddim(steps, 7)
    assert _max_diff(result.images[0].image, expected[0]) <= 2


def test_unipc_txt2img(engine, reference):
    from tests.test_ddim_unipc import a1111_unipc_vp

    steps, seed = 4, 11
    result = engine.generate(_request(sampler_name="UniPC", steps=steps, seed=seed))
    cond, uncond = reference.text(PROMPT, 1), reference.text(NEGATIVE, 1)
    noise = torch.randn((4, H // 8, W // 8), generator=torch.Generator().manual_seed(seed))[None]
    with torch.no_grad():
        out = a1111_unipc_vp(lambda x, t: reference.eps(x, float(t[0]), cond, uncond, 7.0), reference.acp, noise,
                             len(a1111_timesteps(steps)), 3, "bh1", True)
        expected = reference.decode(out)
    assert _max_diff(result.images[0].image, expected[0]) <= 2


@pytest.mark.parametrize("steps, strength", [(10, 0.6), (3, 0.75), (5, 0.0), (5, 0.2), (5, 1.0)])
def test_ddim_img2img_follows_a1111(engine, reference, steps, strength):
    init = _init_image()
    with _UNetSpy(engine) as spy:
        result = engine.generate(_request(sampler_name="DDIM", steps=steps, init_image=init,
                                          denoising_strength=strength))
    expected, _ = reference.generate_ddim(steps, SEED, init=init, strength=strength)
    assert _max_diff(result.images[0].image, expected[0]) <= 2
    # A1111 noises to ts[t_enc] and then evaluates ts[t_enc - 1], ..., ts[1]
    ts, t_enc = a1111_timesteps(steps), int(min(strength, 0.999) * steps)
    assert spy.timesteps == [float(t) for t in ts[1:t_enc][::-1]]


def test_ddim_inpaint_blends_the_model_input(engine, reference):
    init, mask = _init_image(), _mask()
    result = engine.generate(_request(sampler_name="DDIM", steps=10, init_image=init, mask=mask,
                                      denoising_strength=0.9))
    expected, prep = reference.generate_ddim(10, SEED, init=init, mask=mask, strength=0.9)
    assert _max_diff(result.images[0].image, expected[0]) <= 2
    _check_composite(result.images[0].image, prep, init)


@pytest.mark.parametrize("steps, strength", [(10, 0.6), (6, 0.34), (5, 0.0)])
def test_unipc_img2img_schedule_follows_a1111(engine, reference, steps, strength):
    """A1111's UniPC img2img: latent noised to ts[t_enc], then t_enc UniPC steps from t = ts[t_enc - 1]
    to 0, uniform in t (model calls at all of them but the last). The solver itself is checked against
    A1111's in test_ddim_unipc.py."""
    init = _init_image()
    with _UNetSpy(engine) as spy:
        result = engine.generate(_request(sampler_name="UniPC", steps=steps, init_image=init,
                                          denoising_strength=strength))
    assert result.images[0].image.size == (W, H)
    ts, t_enc = a1111_timesteps(steps), int(min(strength, 0.999) * steps)
    expected_t = np.linspace(ts[t_enc - 1], 0, t_enc + 1)[:-1] if t_enc else []
    assert np.allclose(spy.timesteps, expected_t, atol=2e-3)
    with torch.no_grad():
        latent = reference.encode(torch.from_numpy(np.asarray(init, np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1)
    noise = torch.randn((4, H // 8, W // 8), generator=torch.Generator().manual_seed(SEED))[None]
    a = float(reference.acp[ts[t_enc]])
    xi = latent * math.sqrt(a) + noise * math.sqrt(1 - a)
    if spy.calls:   # the model's first input is A1111's VP latent noised to ts[t_enc]
        assert torch.allclose(spy.calls[0][0][:1], xi, atol=1e-4)
    else:
        with torch.no_grad():
            assert _max_diff(result.images[0].image, reference.decode(xi)[0]) <= 2
