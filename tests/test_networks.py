"""UNet / VAE / text encoder in the original layout: parity with diffusers on the same single file,
family detection, file variants (fp16, EMA, inpainting, .ckpt, external VAE), memory on reload."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import safetensors.torch
import torch

from tests.tiny import tiny_checkpoint
from tests.tiny_models import VAE_PREFIX, diffusers_config_dir, ema_key, random_unet_state_dict, tiny_state_dict
from webui.engine import detection, families
from webui.engine.checkpoint import load_checkpoint, load_vae
from webui.engine.files import CheckpointError
from webui.engine.unet import UNetConfig, UNetModel, timestep_embedding

UNET_TOL = 1e-4
VAE_TOL = 1e-4
TEXT_TOL = 1e-5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("networks")


@pytest.fixture(scope="module")
def ours(tiny_ckpt):
    return load_checkpoint(tiny_ckpt)


@pytest.fixture(scope="module")
def reference(root, tiny_ckpt):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(str(tiny_ckpt), config=str(diffusers_config_dir(root)),
                                                    local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)


def _unet_inputs(in_channels=4, size=(16, 16), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, *size, generator=g)
    t = torch.tensor([999.0, 17.0, 500.0, 250.0][:batch])
    context = torch.randn(batch, 77, 64, generator=g)
    return x, t, context


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------- parity

@torch.no_grad()
def test_unet_matches_diffusers(ours, reference):
    for size in [(16, 16), (8, 24)]:
        x, t, context = _unet_inputs(size=size)
        eps = ours.unet(x, t, context)
        expected = reference.unet(x, t, encoder_hidden_states=context).sample
        assert eps.shape == x.shape
        assert eps.abs().mean() > 0.05  # not a degenerate model
        assert _max_diff(eps, expected) < UNET_TOL
    # the timestep matters (embedding wired in) and a scalar timestep broadcasts
    x, _, context = _unet_inputs(batch=1)
    assert _max_diff(ours.unet(x, torch.tensor([10.0]), context), ours.unet(x, torch.tensor([900.0]), context)) > 1e-3
    assert _max_diff(ours.unet(x, torch.tensor(10.0), context), ours.unet(x, torch.tensor([10.0]), context)) == 0


@torch.no_grad()
def test_vae_matches_diffusers(ours, reference):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 64, 48, generator=g) * 2 - 1
    mean = ours.vae.encode(image)
    assert mean.shape == (1, 4, 8, 6)
    assert _max_diff(mean, reference.vae.encode(image).latent_dist.mean) < VAE_TOL
    z = torch.randn(1, 4, 8, 8, generator=g)
    decoded = ours.vae.decode(z)
    assert decoded.shape == (1, 3, 64, 64)
    assert _max_diff(decoded, reference.vae.decode(z).sample) < VAE_TOL


@torch.no_grad()
def test_text_encoder_matches_diffusers(ours, reference):
    ids = reference.tokenizer(["a photo of a cat", "an astronaut riding a horse, (detailed)"], padding="max_length",
                              max_length=77, truncation=True, return_tensors="pt").input_ids
    hidden = ours.text_model(input_ids=ids).last_hidden_state
    assert hidden.shape == (2, 77, 64)
    assert _max_diff(hidden, reference.text_encoder(input_ids=ids).last_hidden_state) < TEXT_TOL
    # the non-persistent position_ids buffer is real (not meta) after loading
    assert not ours.text_model.embeddings.position_ids.is_meta


def test_loaded_model_is_inference_ready(ours):
    assert ours.family.name == "sd1" and ours.family.latent_scale == 0.18215 and ours.family.prediction == "eps"
    for module in (ours.unet, ours.vae, ours.text_model):
        assert not module.training
        assert all(not p.requires_grad and not p.is_meta and p.dtype == torch.float32 for p in module.parameters())
    config = ours.unet.config
    assert (config.model_channels, config.channel_mult, config.num_res_blocks, config.context_dim,
            config.num_heads) == (32, (1, 2), 1, 64, 8)
    assert ours.text_model.config.num_attention_heads == 1  # hidden // 64


# --------------------------------------------------------------------------------- file variants

def test_fp16_file(root, ours):
    path = tiny_checkpoint(root / "tiny-fp16.safetensors", dtype=torch.float16)
    model = load_checkpoint(path)  # upcast to float32
    for mine, full in ((model.unet, ours.unet), (model.vae, ours.vae), (model.text_model, ours.text_model)):
        expected = _params(full)
        for k, v in mine.state_dict().items():
            assert v.dtype == torch.float32
            assert torch.equal(v, expected[k].half().float()), k
    half = load_checkpoint(path, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.unet.parameters())
    x, t, context = _unet_inputs(batch=1)
    with torch.no_grad():
        eps16 = half.unet(x.half(), t, context.half())
        eps32 = model.unet(x, t, context)
    assert eps16.dtype == torch.float16
    assert _max_diff(eps16, eps32) < 2e-2


def test_ema_keys_are_ignored(root, ours):
    path = tiny_checkpoint(root / "tiny-ema.safetensors", ema=True)
    raw = safetensors.torch.load_file(str(path))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert ema_key(key) == "model_ema.diffusion_modelinput_blocks00weight" and ema_key(key) in raw
    assert not torch.equal(raw[ema_key(key)], raw[key])
    model = load_checkpoint(path)
    expected = _params(ours.unet)
    assert all(torch.equal(v, expected[k]) for k, v in model.unet.state_dict().items())


@torch.no_grad()
def test_inpainting_file_matches_diffusers(root):
    from diffusers import UNet2DConditionModel

    path = tiny_checkpoint(root / "tiny-inpainting.safetensors", inpaint=True)
    model = load_checkpoint(path)
    assert model.family.name == "sd1-inpaint" and model.family.unet_in_channels == 9
    assert model.unet.config.in_channels == 9
    reference = UNet2DConditionModel.from_single_file(str(path), config=str(diffusers_config_dir(root, inpaint=True)),
                                                      subfolder="unet", local_files_only=True)
    x, t, context = _unet_inputs(in_channels=9)
    eps = model.unet(x, t, context)
    assert eps.shape == (2, 4, 16, 16)
    assert _max_diff(eps, reference(x, t, encoder_hidden_states=context).sample) < UNET_TOL


def test_ckpt_equals_safetensors(root, ours):
    path = tiny_checkpoint(root / "tiny.ckpt", fmt="ckpt", ema=True)
    model = load_checkpoint(path)
    assert model.family == ours.family
    for mine, other in ((model.unet, ours.unet), (model.vae, ours.vae), (model.text_model, ours.text_model)):
        expected = _params(other)
        assert all(torch.equal(v, expected[k]) for k, v in mine.state_dict().items())


def test_old_text_encoder_prefix_without_text_model(root, ours):
    sd = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
          for k, v in tiny_state_dict().items()}
    path = root / "tiny-old-clip.safetensors"
    safetensors.torch.save_file(sd, str(path))
    model = load_checkpoint(path)
    expected = _params(ours.text_model)
    assert all(torch.equal(v, expected[k]) for k, v in model.text_model.state_dict().items())


def _vae_file(path, *, prefixed: bool, linear_attention: bool, seed: int = 7):
    sd = {}
    for key, value in tiny_state_dict(seed=seed).items():
        if not key.startswith(VAE_PREFIX):
            continue
        if linear_attention and ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 4:
            value = value[:, :, 0, 0].contiguous()  # diffusers-converted files store these as Linear weights
        sd[key if prefixed else key.removeprefix(VAE_PREFIX)] = value
    safetensors.torch.save_file(sd, str(path))
    return path


@pytest.mark.parametrize("prefixed,linear_attention", [(True, False), (False, False), (False, True)])
def test_external_vae_replaces_the_checkpoints(root, tiny_ckpt, ours, prefixed, linear_attention):
    vae_path = _vae_file(root / f"vae-{prefixed}-{linear_attention}.safetensors", prefixed=prefixed,
                         linear_attention=linear_attention)
    model = load_checkpoint(tiny_ckpt, vae_path=vae_path)
    assert model.vae_path == str(vae_path)
    expected = {k.removeprefix(VAE_PREFIX): v for k, v in tiny_state_dict(seed=7).items() if k.startswith(VAE_PREFIX)}
    got = model.vae.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not torch.equal(got["decoder.conv_out.weight"], ours.vae.state_dict()["decoder.conv_out.weight"])
    standalone = load_vae(vae_path)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(standalone.decode(z), model.vae.decode(z))


def test_arch_metadata_overrides_heads(root):
    arch = {"unet": {"num_heads": 4}, "clip": {"num_attention_heads": 2}}
    metadata = {families.ARCH_METADATA_KEY: json.dumps(arch)}
    path = tiny_checkpoint(root / "tiny-arch.safetensors", metadata=metadata)
    model = load_checkpoint(path)
    assert model.unet.config.num_heads == 4 and model.unet.config.num_head_channels == -1
    assert model.text_model.config.num_attention_heads == 2
    assert model.unet.output_blocks[0][1].transformer_blocks[0].attn1.heads == 4
    bad = tiny_checkpoint(root / "tiny-arch-bad.safetensors", metadata={families.ARCH_METADATA_KEY: "{oops"})
    with pytest.raises(CheckpointError, match="webui.arch"):
        load_checkpoint(bad)


# ------------------------------------------------------------------------------- detection errors

@pytest.fixture(scope="module")
def full_sd():
    return tiny_state_dict()


def test_detects_sd1(full_sd):
    assert detection.detect_family(full_sd).name == "sd1"


def test_unknown_keys_are_refused():
    with pytest.raises(CheckpointError) as info:
        detection.detect_family({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(2)}, name="x.safetensors")
    message = str(info.value)
    assert "x.safetensors" in message and "not a recognised" in message
    assert "Found" in message and "no UNet" in message and "Expected" in message and "SD 1.x" in message


def test_lora_gets_a_hint():
    with pytest.raises(CheckpointError, match="LoRA"):
        detection.detect_family({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)})


def test_missing_vae_is_refused(full_sd):
    partial = {k: v for k, v in full_sd.items() if not k.startswith(VAE_PREFIX)}
    with pytest.raises(CheckpointError) as info:
        detection.detect_family(partial)
    message = str(info.value)
    assert "first_stage_model.encoder.conv_in.weight" in message and "no VAE" in message
    assert detection.detect_family(partial, need_vae=False).name == "sd1"


def test_half_a_unet_is_refused(full_sd):
    unet_keys = sorted(k for k in full_sd if k.startswith("model.diffusion_model."))
    partial = {k: v for k, v in full_sd.items() if k not in set(unet_keys[len(unet_keys) // 2:])}
    with pytest.raises(CheckpointError, match="incomplete or truncated SD 1.x.*missing model.diffusion_model."):
        detection.detect_family(partial)


def test_a_missing_tensor_is_named(root, full_sd):
    key = "model.diffusion_model.output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    path = root / "tiny-missing-one.safetensors"
    safetensors.torch.save_file({k: v for k, v in full_sd.items() if k != key}, str(path))
    with pytest.raises(CheckpointError, match=r"UNet.*missing 1 key.*output_blocks\.1\.1\.transformer_blocks"):
        load_checkpoint(path)
    extra = root / "tiny-extra.safetensors"
    safetensors.torch.save_file({**full_sd, "model.diffusion_model.stray.weight": torch.zeros(1)}, str(extra))
    with pytest.raises(CheckpointError, match="unexpected 1 key.*stray.weight"):
        load_checkpoint(extra)


def test_truncated_file_is_refused(root, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    path = root / "tiny-truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------------------- memory

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_unloading_frees_memory(root):
    path = tiny_checkpoint(root / "small.safetensors", model_channels=160)  # ~120 MB of weights
    size = path.stat().st_size
    gc.collect()
    # no reference cycles: dropping the last reference frees the tensors without the cycle collector
    gc.disable()
    try:
        model = load_checkpoint(path)
        refs = [weakref.ref(m) for m in (model.unet, model.vae, model.text_model)]
        del model
        assert all(r() is None for r in refs)
    finally:
        gc.enable()
    models, after = [], []
    for _ in range(6):
        models.clear()  # replace the previous model, as the UI does
        models.append(load_checkpoint(path))
        gc.collect()
        after.append(_rss_bytes())
    assert after[-1] - after[0] < 0.1 * after[0], [f"{r / 2**20:.0f} MiB" for r in after]
    assert after[-1] - after[0] < 0.5 * size, [f"{r / 2**20:.0f} MiB" for r in after]


# --------------------------------------------------------- SD 2.x and SDXL UNet layouts vs diffusers

def _diffusers_unet_folder(path, config: dict):
    (path / "unet").mkdir(parents=True, exist_ok=True)
    (path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **config}))
    return path


@torch.no_grad()
@pytest.mark.parametrize("layout", ["sd2", "sdxl"])
def test_future_unet_layouts_match_diffusers(root, layout):
    """The same UNet class in SD 2.x shape (linear proj, 64 channels per head) and SDXL shape (no attention
    at the first level, per-level depth, label_emb) loads into diffusers' converter and agrees with it."""
    from diffusers import UNet2DConditionModel

    family = next(f for f in families.FAMILIES if f.name == layout)
    common = dict(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                  context_dim=64, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)
    reference_config = dict(in_channels=4, out_channels=4, block_out_channels=[64, 128], layers_per_block=1,
                            cross_attention_dim=64, attention_head_dim=[1, 2], use_linear_projection=True,
                            norm_num_groups=32, sample_size=8)
    if layout == "sd2":
        config = UNetConfig(**common, attention_levels=(0, 1), transformer_depth=(1, 1),
                            transformer_depth_middle=1)
        reference_config |= dict(down_block_types=["CrossAttnDownBlock2D"] * 2,
                                 up_block_types=["CrossAttnUpBlock2D"] * 2)
    else:
        config = UNetConfig(**common, attention_levels=(1,), transformer_depth=(0, 2), transformer_depth_middle=2,
                            adm_in_channels=16 + 6 * 8)
        reference_config |= dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                                 up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                                 transformer_layers_per_block=[1, 2],
                                 addition_embed_type="text_time", addition_time_embed_dim=8,
                                 projection_class_embeddings_input_dim=16 + 6 * 8)
    sd = random_unet_state_dict(config, seed=3)
    assert families.unet_config(sd, family) == config  # everything but the head rule read back from shapes
    path = root / f"unet-{layout}.safetensors"
    safetensors.torch.save_file(sd, str(path))
    folder = _diffusers_unet_folder(root / f"diffusers-{layout}", reference_config)
    reference = UNet2DConditionModel.from_single_file(str(path), config=str(folder), subfolder="unet",
                                                      local_files_only=True)
    with torch.device("meta"):
        unet = UNetModel(config)
    unet.load_state_dict({k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}, assign=True)

    x, t, context = _unet_inputs(size=(8, 8))
    if layout == "sd2":
        expected, y = reference(x, t, encoder_hidden_states=context).sample, None
    else:
        g = torch.Generator().manual_seed(5)
        pooled, time_ids = torch.randn(2, 16, generator=g), torch.tensor([[64.0, 48, 0, 0, 64, 48]] * 2)
        expected = reference(x, t, encoder_hidden_states=context,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 8).reshape(2, -1)], dim=1)
    assert _max_diff(unet(x, t, context, y), expected) < UNET_TOL
