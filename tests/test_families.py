"""SD 2.x, SDXL and the SDXL refiner end to end: our Engine vs an independent reference on the same tiny files.

The tiny files are ``tests/tiny_families.py``'s (the original single-file layouts). The reference is diffusers'
networks (``from_single_file``, offline: text encoders, UNet with its own ``add_time_proj`` for SDXL's size
numbers, VAE) driven by k-diffusion's sampler functions and its ``CompVisDenoiser`` / ``CompVisVDenoiser``,
with A1111's rules written out below without importing webui/ (modules/processing.py, sd_samplers_common.py
``apply_refiner``, sd_models_xl.py ``get_learned_conditioning``, sd_hijack_open_clip.py, sd_models.py
``rescale_zero_terminal_snr_abar``). Images must agree within 2/255 per pixel.

UNet parity per family is in test_tiny_families.py; here: the VAE and text encoders as the engine loads them,
the family / prediction the engine reports, the conditioning it builds, and whole images.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests import tiny_families as tf
from tests.helpers import make_engine
from tests.references import k_diffusion
from tests.tiny import tiny_checkpoint
from webui.engine.residency import Engine
from webui.engine.request import GenerationRequest

W = H = 64
PROMPT, NEGATIVE = "a red circle on a blue background", "blurry, low quality"
# 80 tokens, no commas: two chunks, split after token 75 (A1111's comma backtracking plays no part)
LONG_PROMPT = " ".join(["a small red circle above a large blue square on a green and yellow striped floor"] * 5)
SEED = 2024
BOS, EOS = 49406, 49407
HIGH_AESTHETIC, LOW_AESTHETIC = 6.0, 2.5          # A1111's sdxl_refiner_high/low_aesthetic_score

# name -> (tiny_families family, write kwargs, diffusers config v_like)
CASES = {
    "sd2": ("sd2", {}, False),
    "sd2-v": ("sd2", {"v_like": True}, True),
    "sd2-inpaint": ("sd2", {"inpaint": True}, False),
    "sdxl": ("sdxl", {}, False),
    "sdxl-inpaint": ("sdxl", {"inpaint": True}, False),
    "sdxl-vpred": ("sdxl", {"v_pred": True}, True),
    "sdxl-refiner": ("sdxl-refiner", {}, False),
}
LATENT_SCALE = {"sd2": 0.18215, "sdxl": 0.13025, "sdxl-refiner": 0.13025}
# sampler display name -> (k-diffusion function, A1111's automatic schedule)
K_SAMPLERS = {"Euler": ("sample_euler", "uniform"), "DPM++ 2M": ("sample_dpmpp_2m", "karras"),
              "Heun": ("sample_heun", "uniform")}


# ------------------------------------------------------------------------------ A1111's rules, written out

def ldm_alphas_cumprod() -> torch.Tensor:
    """LDM's ``register_schedule``: scaled-linear betas in float64, cumulative product, stored as float32."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def rescale_zero_terminal_snr_abar(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's sd_models.rescale_zero_terminal_snr_abar (float32 in, float32 out)."""
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = 4.8973451890853435e-08
    return alphas_bar


def a1111_ids(tokenizer, texts: list[str], pad: int) -> torch.Tensor:
    """BOS + up to 75 tokens + EOS; every position after the first EOS is ``pad`` (0 for the OpenCLIP
    towers, EOS for CLIP-L), as A1111's ``process_tokens`` does with ``id_pad``."""
    ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert (ids[:, 0] == BOS).all()
    for row in ids:
        end = int((row == EOS).nonzero()[0]) + 1
        row[end:] = pad
    return ids


def a1111_chunks(tokenizer, text: str, pad: int) -> torch.Tensor:
    """``[chunks, 77]``: the prompt's tokens in chunks of 75 (one empty chunk for ""), each BOS + tokens + EOS
    and padded as ``a1111_ids`` (prompts without commas: no backtracking)."""
    assert "," not in text or len(tokenizer(text).input_ids) <= 77
    tokens = tokenizer(text, add_special_tokens=False).input_ids
    rows = []
    for start in range(0, max(len(tokens), 1), 75):
        row = [BOS, *tokens[start:start + 75], EOS]
        rows.append(row + [pad] * (77 - len(row)))
    return torch.tensor(rows)


class Shim(torch.nn.Module):
    """What k-diffusion's CompVis denoisers expect, around a diffusers UNet: ``alphas_cumprod`` and
    ``apply_model(x, t, cond, c_concat=None)``; ``cond``: {"crossattn", and for SDXL "pooled", "time_ids"}."""

    def __init__(self, unet, alphas_cumprod):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod)

    def apply_model(self, x, t, cond, c_concat=None):
        if c_concat is not None:
            x = torch.cat([x, c_concat], dim=1)
        kwargs = {}
        if "pooled" in cond:
            kwargs["added_cond_kwargs"] = {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
        return self.unet(x, t, encoder_hidden_states=cond["crossattn"], **kwargs).sample


def _to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    return [(torch.clamp((i + 1) / 2, 0, 1) * 255).permute(1, 2, 0).numpy().astype(np.uint8) for i in images]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1


class Reference:
    """diffusers networks + k-diffusion sampler functions + A1111's semantics, for one tiny file."""

    def __init__(self, pipe, family: str, kind: str, zero_snr: bool = False):
        _, external = k_diffusion()
        acp = ldm_alphas_cumprod()
        if zero_snr:
            acp = rescale_zero_terminal_snr_abar(acp)
        self.pipe, self.family, self.kind = pipe, family, kind
        self.scale = LATENT_SCALE[family]
        denoiser = external.CompVisVDenoiser if kind == "v" else external.CompVisDenoiser
        self.model = denoiser(Shim(pipe.unet, acp), quantize=False)
        self.inpainting = pipe.unet.config.in_channels == 9

    # ---- text
    @torch.no_grad()
    def text(self, text: str, *, negative: bool = False, sizes=None, zero_empty: bool = True) -> dict:
        """The conditioning A1111 gives the UNet for ``text`` (a batch of one; chunks of 77 tokens side by side,
        the pooled output of the first); ``sizes``: (original (h, w), crop (top, left), target (h, w)) for SDXL;
        ``zero_empty=False`` encodes an empty negative prompt instead (not A1111)."""
        pipe = self.pipe

        def side_by_side(z):        # [chunks, 77, D] -> [1, 77 * chunks, D]
            return z.reshape(1, -1, z.shape[-1])

        if self.family == "sd2":      # penultimate layer + ln_final: diffusers' 2-of-3-layer text encoder
            return {"crossattn": side_by_side(
                pipe.text_encoder(a1111_chunks(pipe.tokenizer, text, pad=0)).last_hidden_state)}
        big_g = pipe.text_encoder_2(a1111_chunks(pipe.tokenizer_2, text, pad=0), output_hidden_states=True)
        crossattn, pooled = big_g.hidden_states[-2], big_g.text_embeds[:1]
        if self.family == "sdxl":
            clip_l = pipe.text_encoder(a1111_chunks(pipe.tokenizer, text, pad=EOS), output_hidden_states=True)
            crossattn = torch.cat([clip_l.hidden_states[-2], crossattn], dim=-1)
        crossattn = side_by_side(crossattn)
        if zero_empty and negative and text == "":     # A1111's force_zero_negative_prompt
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
        original, crop, target = sizes
        if self.family == "sdxl":
            numbers = [*original, *crop, *target]
        else:
            numbers = [*original, *crop, LOW_AESTHETIC if negative else HIGH_AESTHETIC]
        time_ids = torch.tensor([numbers], dtype=torch.float32)
        return {"crossattn": crossattn, "pooled": pooled, "time_ids": time_ids}

    @torch.no_grad()
    def vector(self, cond: dict) -> torch.Tensor:
        """SGM's ``y`` as diffusers' UNet builds it from ``text_embeds`` and ``time_ids``."""
        unet = self.pipe.unet
        emb = unet.add_time_proj(cond["time_ids"].flatten()).reshape(cond["pooled"].shape[0], -1)
        return torch.cat([cond["pooled"], emb], dim=-1)

    # ---- images
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.pipe.vae.encode(images).latent_dist.mean * self.scale

    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        return _to_uint8(self.pipe.vae.decode(latents / self.scale).sample)

    def sigmas(self, sampler: str, steps: int) -> torch.Tensor:
        kind = K_SAMPLERS[sampler][1]
        if kind == "uniform":
            return self.model.get_sigmas(steps)
        sampling, _ = k_diffusion()
        return sampling.get_sigmas_karras(steps, self.model.sigma_min.item(), self.model.sigma_max.item())

    def cfg(self, cond: dict, uncond: dict, batch: int, cfg_scale: float, image_cond=None):
        """A1111's CFGDenoiser: cond and uncond rows in one batch (two when their token counts differ),
        ``u + (c - u) * scale``."""
        def rows(c):
            return {k: v.expand(batch, *v.shape[1:]) for k, v in c.items()}
        c_rows, u_rows = rows(cond), rows(uncond)
        extra = {} if image_cond is None else {"c_concat": image_cond}
        if cond["crossattn"].shape[1] == uncond["crossattn"].shape[1]:
            joined = {k: torch.cat([c_rows[k], u_rows[k]]) for k in c_rows}
            extra2 = {k: torch.cat([v, v]) for k, v in extra.items()}

            def denoise(x, sigma):
                c, u = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=joined, **extra2).chunk(2)
                return u + (c - u) * cfg_scale
        else:
            def denoise(x, sigma):
                c = self.model(x, sigma, cond=c_rows, **extra)
                u = self.model(x, sigma, cond=u_rows, **extra)
                return u + (c - u) * cfg_scale
        return denoise

    @torch.no_grad()
    def generate(self, *, prompt=PROMPT, negative=NEGATIVE, sampler="Euler", steps=6, seed=SEED, cfg=7.0,
                 batch=1, init=None, mask=None, strength=0.75, original_size=None, crops=(0, 0),
                 target_size=None, refiner: "Reference | None" = None, switch_at=None, zero_empty=True) -> dict:
        seeds = [seed + i for i in range(batch)]
        shape = (4, H // 8, W // 8)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
        sizes = (original_size or (H, W), crops, target_size or (H, W))
        cond = self.text(prompt, sizes=sizes)
        uncond = self.text(negative, negative=True, sizes=sizes, zero_empty=zero_empty)

        latent = keep = image_cond = overlay = None
        if init is not None:
            image = init.convert("RGB")
            source = _to_tensor(image).expand(batch, -1, -1, -1)
            latent = self.encode(source)
            if mask is not None:    # mask blur 0, masked content "original", whole picture, same size
                image_mask = mask.convert("L")
                doubled = np.clip(np.asarray(image_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
                layer = Image.new("RGBa", image.size)
                layer.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(Image.fromarray(doubled)))
                overlay = layer.convert("RGBA")
                latmask = image_mask.convert("RGB").resize((W // 8, H // 8))
                latmask = np.around(np.moveaxis(np.array(latmask, dtype=np.float32), 2, 0)[0] / 255)
                keep = 1.0 - torch.from_numpy(latmask)
                if self.inpainting:   # inpainting_image_conditioning: [mask, latent of the masked image]
                    cmask = torch.from_numpy(np.asarray(image_mask, dtype=np.float32) / 255).round()[None, None]
                    masked = self.encode(source * (1.0 - cmask))
                    small = torch.nn.functional.interpolate(cmask, size=masked.shape[-2:])
                    image_cond = torch.cat([small.expand(batch, -1, -1, -1), masked], dim=1)

        sigmas = self.sigmas(sampler, steps)
        if init is not None:
            t_enc = int(min(strength, 0.999) * steps)
            sigmas = sigmas[steps - t_enc - 1:]
            x = latent + noise * sigmas[0]
        else:
            x = noise * sigmas[0]

        base = self.cfg(cond, uncond, batch, cfg, image_cond)
        denoiser, record = base, {"switched_at_call": None, "calls": 0}
        if refiner is not None:
            r_cond = refiner.text(prompt, sizes=sizes)
            r_uncond = refiner.text(negative, negative=True, sizes=sizes)
            second = refiner.cfg(r_cond, r_uncond, batch, cfg)
            table = self.model.sigmas

            def denoiser(x, sigma):    # sd_samplers_common.apply_refiner, "by sigma"
                if record["switched_at_call"] is None:
                    timestep = int(torch.argmin(torch.abs(table - torch.max(sigma))))
                    if (999 - timestep) / 1000 >= switch_at:
                        record["switched_at_call"] = record["calls"]
                record["calls"] += 1
                return (base if record["switched_at_call"] is None else second)(x, sigma)

        def model(x, sigma):
            denoised = denoiser(x, sigma)     # inpainting: the kept region of the prediction is the original
            return denoised if keep is None else latent * keep + (1.0 - keep) * denoised

        sampling, _ = k_diffusion()
        out = getattr(sampling, K_SAMPLERS[sampler][0])(model, x, sigmas, disable=True)
        if keep is not None:
            out = out * (1.0 - keep) + latent * keep
        images = self.decode(out)
        if overlay is not None:
            composed = []
            for arr in images:
                img = Image.fromarray(arr).convert("RGBA")
                img.alpha_composite(overlay)
                composed.append(np.asarray(img.convert("RGB")))
            images = composed
        return {"images": images, **record}


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with tf.one_thread():
        yield


class Files:
    """Each tiny file written, loaded by the engine and by diffusers at most once, on first use."""

    def __init__(self, root):
        self.root = root
        self._paths, self._loaded, self._pipes, self._refs = {}, {}, {}, {}

    def path(self, name):
        if name not in self._paths:
            family, kwargs, _ = CASES[name]
            self._paths[name] = tiny_checkpoint(self.root / f"{name}.safetensors", family, **kwargs)
        return self._paths[name]

    def engine(self, name) -> Engine:
        if name not in self._loaded:
            self._loaded[name] = make_engine(self.path(name))
        return self._loaded[name]

    def pipe(self, name):
        if name not in self._pipes:
            family, kwargs, v_like = CASES[name]
            inpaint = kwargs.get("inpaint", False)
            config = tf.family_diffusers_config_dir(self.root, family, inpaint=inpaint, v_like=v_like)
            pipe = tf.load_diffusers_pipeline(self.path(name), config, family, inpaint=inpaint)
            for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
                if module is not None:
                    module.eval()
            self._pipes[name] = pipe
        return self._pipes[name]

    def reference(self, name) -> Reference:
        if name not in self._refs:
            family, kwargs, v_like = CASES[name]
            self._refs[name] = Reference(self.pipe(name), family, "v" if v_like else "eps",
                                         zero_snr=kwargs.get("v_pred", False))
        return self._refs[name]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("families"))


# ------------------------------------------------------------------------------------------ helpers

def _max_diff(ours, ref) -> int:
    return int(np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(ref, dtype=np.int16)).max())


def _check_images(case: str, result, expected: list[np.ndarray]):
    assert len(result.images) == len(expected)
    diffs = [_max_diff(img.image, ref) for img, ref in zip(result.images, expected)]
    print(f"\n{case}: max pixel diff {diffs}")
    assert max(diffs) <= 2, (case, diffs)
    for ref in expected:        # a degenerate (flat) image would make the comparison vacuous
        assert np.asarray(ref, dtype=np.float32).std() > 2


def _request(**kw) -> GenerationRequest:
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", steps=6, seed=SEED, width=W,
                height=H, cfg_scale=7.0)
    return GenerationRequest(**{**base, **kw})


def _init_image() -> Image.Image:
    yy, xx = np.mgrid[0:H, 0:W]
    arr = np.stack([xx * 255 // (W - 1), yy * 255 // (H - 1), ((xx // 8 + yy // 8) % 2) * 200 + 30], -1)
    return Image.fromarray(arr.astype(np.uint8))


def _mask(box=(20, 16, 44, 40)) -> Image.Image:
    arr = np.zeros((H, W), dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr)


# ------------------------------------------------------------------------- family and prediction

@pytest.mark.parametrize("name, family, kind, zero_snr", [
    ("sd2", "sd2", "eps", False),
    ("sd2-v", "sd2", "v", False),
    ("sd2-inpaint", "sd2-inpaint", "eps", False),
    ("sdxl", "sdxl", "eps", False),
    ("sdxl-inpaint", "sdxl-inpaint", "eps", False),
    ("sdxl-vpred", "sdxl", "v", True),
    ("sdxl-refiner", "sdxl-refiner", "eps", False),
])
def test_engine_reports_family_and_prediction(files, name, family, kind, zero_snr):
    model = files.engine(name).model
    assert model.family.name == family
    assert (model.prediction.kind, model.prediction.zero_snr) == (kind, zero_snr)
    assert model.family.latent_scale == LATENT_SCALE[CASES[name][0]]
    acp = ldm_alphas_cumprod()
    if zero_snr:
        acp = rescale_zero_terminal_snr_abar(acp)
    expected = ((1 - acp) / acp) ** 0.5
    torch.testing.assert_close(model.schedule.sigmas.cpu(), expected, rtol=1e-6, atol=0)
    if zero_snr:
        assert 4000 < float(model.schedule.sigmas[-1]) < 5000    # sqrt((1 - 4.9e-8) / 4.9e-8) ~ 4519


@pytest.mark.parametrize("name, override, kind, zero_snr", [
    ("sdxl-vpred", "eps", "eps", False),     # the file's v_pred / ztsnr keys lose to --prediction eps
    ("sd2-v", "eps", "eps", False),          # ... and so does the one-step test
    ("sd2", "v", "v", False),
    ("sdxl", "v", "v", False),
])
def test_prediction_override_wins(files, name, override, kind, zero_snr):
    eng = Engine("cpu", "full", prediction=override)
    model = eng.load(files.path(name))
    assert (model.prediction.kind, model.prediction.zero_snr) == (kind, zero_snr)
    assert model.prediction.source == "--prediction"
    acp = ldm_alphas_cumprod()
    torch.testing.assert_close(model.schedule.sigmas.cpu(), ((1 - acp) / acp) ** 0.5, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------- network parity vs diffusers

NETWORK_CASES = ["sd2", "sd2-inpaint", "sdxl", "sdxl-inpaint", "sdxl-refiner"]


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_vae_matches_diffusers(files, name):
    ours, theirs = files.engine(name).model.vae, files.pipe(name).vae
    img = _to_tensor(_init_image())
    with torch.no_grad():
        z_ours, z_theirs = ours.encode(img), theirs.encode(img).latent_dist.mean
        torch.testing.assert_close(z_ours, z_theirs, rtol=1e-4, atol=1e-4)
        z = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(3)) * 2
        torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, rtol=1e-4, atol=1e-4)
    assert z_ours.abs().max() > 1e-3


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_text_encoders_match_diffusers(files, name):
    """Our ``text_models`` at the layer the family uses vs diffusers' encoders, on the same ids."""
    model, pipe = files.engine(name).model, files.pipe(name)
    family = CASES[name][0]
    texts = [PROMPT, "x"]
    with torch.no_grad():
        if family == "sd2":
            assert len(model.text_models) == 1
            ids = a1111_ids(pipe.tokenizer, texts, pad=0)
            out = model.text_models[0](ids, output_hidden_states=True)
            ours = model.text_models[0].final_layer_norm(out.hidden_states[-2])
            theirs = pipe.text_encoder(ids).last_hidden_state
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
            return
        big_g = model.text_models[-1]
        assert isinstance(big_g, type(pipe.text_encoder_2))
        ids = a1111_ids(pipe.tokenizer_2, texts, pad=0)
        ours, theirs = big_g(ids, output_hidden_states=True), pipe.text_encoder_2(ids, output_hidden_states=True)
        torch.testing.assert_close(ours.hidden_states[-2], theirs.hidden_states[-2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.text_embeds, theirs.text_embeds, rtol=1e-5, atol=1e-5)
        assert ours.text_embeds.shape == (2, tf.SDXL_OPEN_CLIP.proj_dim)
        if family == "sdxl":
            assert len(model.text_models) == 2
            ids = a1111_ids(pipe.tokenizer, texts, pad=EOS)
            ours = model.text_models[0](ids, output_hidden_states=True).hidden_states[-2]
            theirs = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        else:
            assert len(model.text_models) == 1


@pytest.mark.parametrize("name, prompt, negative", [
    ("sd2", PROMPT, NEGATIVE), ("sd2", LONG_PROMPT, ""),
    ("sdxl", PROMPT, NEGATIVE), ("sdxl", PROMPT, ""), ("sdxl", LONG_PROMPT, NEGATIVE),
    ("sdxl-refiner", PROMPT, NEGATIVE), ("sdxl-refiner", LONG_PROMPT, ""),
], ids=lambda v: {PROMPT: "prompt", LONG_PROMPT: "long", NEGATIVE: "negative", "": "empty"}.get(v, v))
def test_conditioning_matches_reference(files, name, prompt, negative):
    """The engine's prompt encoder (padding, layer, concatenation, chunks, pooled output of the first chunk,
    size / aesthetic numbers, the zeroed empty negative prompt) vs the reference's, before any sampling."""
    eng, ref = files.engine(name), files.reference(name)
    request = _request(negative_prompt=negative, original_size=(96, 80), crops_coords_top_left=(8, 16),
                       target_size=(72, 64))
    encoder = eng.prompt_encoder(request)
    sizes = ((96, 80), (8, 16), (72, 64))
    for text, is_negative in ((prompt, False), (negative, True)):
        ours = encoder.schedule(text, 6, negative=is_negative).at(0)
        expected = ref.text(text, negative=is_negative, sizes=sizes)
        assert ours.crossattn.shape[0] == (154 if text == LONG_PROMPT else 77)
        torch.testing.assert_close(ours.crossattn.float(), expected["crossattn"][0], rtol=1e-5, atol=1e-5)
        if CASES[name][0] == "sd2":
            assert ours.vector is None
            continue
        torch.testing.assert_close(ours.vector.float(), ref.vector(expected)[0], rtol=1e-5, atol=1e-5)
        if is_negative and text == "":
            assert ours.crossattn.abs().max() == 0
            assert ours.vector[:tf.SDXL_OPEN_CLIP.proj_dim].abs().max() == 0
            assert ours.vector[tf.SDXL_OPEN_CLIP.proj_dim:].abs().max() > 0.5   # size embeddings stay


# ------------------------------------------------------------------------- end-to-end parity

@pytest.mark.parametrize("name, sampler, batch", [
    ("sd2", "Euler", 2),
    ("sd2", "DPM++ 2M", 1),
    ("sd2-v", "Euler", 1),
    ("sdxl", "Euler", 2),
    ("sdxl", "DPM++ 2M", 1),
    ("sdxl-vpred", "Euler", 1),
])
def test_txt2img_matches_reference(files, name, sampler, batch):
    result = files.engine(name).generate(_request(sampler_name=sampler, batch_size=batch))
    expected = files.reference(name).generate(sampler=sampler, batch=batch)
    assert [img.seed for img in result.images] == [SEED + i for i in range(batch)]
    _check_images(f"{name} txt2img {sampler} batch {batch}", result, expected["images"])


def test_sdxl_empty_negative_prompt_is_zeros(files):
    eng, ref = files.engine("sdxl"), files.reference("sdxl")
    result = eng.generate(_request(negative_prompt=""))
    _check_images("sdxl txt2img empty negative", result, ref.generate(negative="")["images"])
    encoded = ref.generate(negative="", zero_empty=False)["images"][0]    # "" encoded, as diffusers would
    assert _max_diff(result.images[0].image, encoded) > 2


def test_sdxl_long_prompt(files):
    """Two chunks of cond (154 tokens) against one of uncond: the pooled output is the first chunk's."""
    eng, ref = files.engine("sdxl"), files.reference("sdxl")
    assert 75 < len(ref.pipe.tokenizer(LONG_PROMPT, add_special_tokens=False).input_ids) <= 150
    result = eng.generate(_request(prompt=LONG_PROMPT))
    _check_images("sdxl txt2img long prompt", result, ref.generate(prompt=LONG_PROMPT)["images"])


def test_sdxl_size_conditioning(files):
    eng, ref = files.engine("sdxl"), files.reference("sdxl")
    sizes = dict(original_size=(1024, 768), crops_coords_top_left=(64, 32), target_size=(512, 640))
    result = eng.generate(_request(**sizes))
    expected = ref.generate(original_size=(1024, 768), crops=(64, 32), target_size=(512, 640))
    _check_images("sdxl txt2img sizes", result, expected["images"])
    default = ref.generate()["images"][0]
    assert _max_diff(result.images[0].image, default) > 2      # the numbers reach the UNet


def test_sdxl_img2img(files):
    eng, ref = files.engine("sdxl"), files.reference("sdxl")
    init = _init_image()
    result = eng.generate(_request(init_image=init, denoising_strength=0.6, steps=8))
    expected = ref.generate(init=init, strength=0.6, steps=8)
    _check_images("sdxl img2img", result, expected["images"])


@pytest.mark.parametrize("name", ["sd2-inpaint", "sdxl-inpaint"])
def test_inpainting_model_inpaint(files, name):
    eng, ref = files.engine(name), files.reference(name)
    assert eng.is_inpainting_model
    init, mask = _init_image(), _mask()
    result = eng.generate(_request(init_image=init, mask=mask, mask_blur=0, inpainting_fill=1,
                                   denoising_strength=0.8))
    expected = ref.generate(init=init, mask=mask, strength=0.8)
    _check_images(f"{name} inpaint", result, expected["images"])
    ours, original = np.asarray(result.images[0].image, dtype=np.int16), np.asarray(init, dtype=np.int16)
    kept = np.asarray(mask) == 0
    assert np.array_equal(ours[kept], original[kept])             # outside the mask: the original exactly
    assert np.abs(ours[~kept] - original[~kept]).mean() > 5


# ------------------------------------------------------------------------- refiner

@pytest.mark.parametrize("sampler", ["Euler", "Heun"])
def test_refiner_switch(files, sampler):
    eng, ref, refiner_ref = files.engine("sdxl"), files.reference("sdxl"), files.reference("sdxl-refiner")
    refiner = str(files.path("sdxl-refiner"))
    result = eng.generate(_request(sampler_name=sampler, refiner_checkpoint=refiner, refiner_switch_at=0.5))
    expected = ref.generate(sampler=sampler, refiner=refiner_ref, switch_at=0.5)
    assert result.refiner_switched
    # 6 uniform sigmas at t = 999, 799, 599, 400, 200: the 4th (t 400: (999 - 400) / 1000 >= 0.5) is the
    # first the refiner sees -- Euler's 4th call, Heun's 6th (the second call of step 3 is made at it)
    assert expected["switched_at_call"] == {"Euler": 3, "Heun": 5}[sampler]
    _check_images(f"sdxl + refiner at 0.5 {sampler}", result, expected["images"])
    base_only = ref.generate(sampler=sampler)["images"][0]
    assert _max_diff(result.images[0].image, base_only) > 2


def test_refiner_switch_at_one_never_switches(files):
    eng, ref = files.engine("sdxl"), files.reference("sdxl")
    refiner = str(files.path("sdxl-refiner"))
    result = eng.generate(_request(refiner_checkpoint=refiner, refiner_switch_at=1.0))
    assert not result.refiner_switched
    _check_images("sdxl + refiner at 1.0", result, ref.generate()["images"])
    plain = eng.generate(_request())
    assert _max_diff(result.images[0].image, plain.images[0].image) == 0
