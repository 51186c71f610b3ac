"""The tiny SD 2.x / SDXL / SDXL-refiner files (``tests/tiny_families.py``) have the original layouts, and
diffusers' ``from_single_file`` reads *our* tensors from them (not a random init) with our config folders."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from tests import tiny_families as tf
from tests.tiny import tiny_checkpoint
from tests.tiny_models import UNET_PREFIX, VAE_PREFIX
from webui.engine.unet import UNetModel

CASES = {
    "sd2": ("sd2", {}),
    "sd2-v": ("sd2", {"v_like": True}),
    "sd2-inpaint": ("sd2", {"inpaint": True}),
    "sdxl": ("sdxl", {}),
    "sdxl-inpaint": ("sdxl", {"inpaint": True}),
    "sdxl-vpred": ("sdxl", {"v_pred": True}),
    "sdxl-refiner": ("sdxl-refiner", {}),
}
D = tf.SDXL_OPEN_CLIP.width


class Case:
    def __init__(self, root, name):
        self.name = name
        self.family, self.kwargs = CASES[name]
        self.inpaint = self.kwargs.get("inpaint", False)
        self.path = tiny_checkpoint(root / f"{name}.safetensors", self.family, **self.kwargs)
        self.sd = safetensors.torch.load_file(str(self.path))
        self.v = self.kwargs.get("v_like", False) or self.kwargs.get("v_pred", False)
        self.config_dir = tf.family_diffusers_config_dir(root, self.family, inpaint=self.inpaint, v_like=self.v)
        self.unet_config = tf.family_unet_config(self.family, inpaint=self.inpaint)
        self._pipe = None

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = tf.load_diffusers_pipeline(self.path, self.config_dir, self.family, inpaint=self.inpaint)
        return self._pipe


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with tf.one_thread():
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def cases(root):
    """Each case written (and loaded with diffusers) at most once, on first use."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = Case(root, name)
        return built[name]
    return get


@pytest.fixture(scope="module", params=list(CASES))
def case(request, cases):
    return cases(request.param)


def _open_clip_prefix(family):
    return {"sd2": tf.SD2_TEXT_PREFIX, "sdxl": tf.SDXL_OPEN_CLIP_PREFIX,
            "sdxl-refiner": tf.REFINER_OPEN_CLIP_PREFIX}[family]


def test_key_layout(case):
    sd, family = case.sd, case.family
    p = _open_clip_prefix(family)
    config = tf.SD2_OPEN_CLIP if family == "sd2" else tf.SDXL_OPEN_CLIP
    assert sd[p + "token_embedding.weight"].shape == (49408, D)
    assert sd[p + "positional_embedding"].shape == (77, D)
    assert sd[p + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * D, D)
    assert sd[p + "transformer.resblocks.0.attn.in_proj_bias"].shape == (3 * D,)
    assert sd[p + "transformer.resblocks.2.attn.out_proj.weight"].shape == (D, D)
    assert sd[p + "transformer.resblocks.2.mlp.c_fc.weight"].shape == (4 * D, D)
    assert sd[p + "transformer.resblocks.2.mlp.c_proj.weight"].shape == (D, 4 * D)
    assert f"{p}transformer.resblocks.3.ln_1.weight" not in sd
    assert sd[p + "ln_final.bias"].shape == (D,)
    assert sd[p + "text_projection"].shape == (D, config.proj_dim)
    assert sd[p + "logit_scale"].ndim == 0
    assert not any(k.endswith("attn_mask") for k in sd)

    unet = UNetModel(case.unet_config)
    assert set(k.removeprefix(UNET_PREFIX) for k in sd if k.startswith(UNET_PREFIX)) == set(unet.state_dict())
    assert sd[UNET_PREFIX + "input_blocks.0.0.weight"].shape[1] == (9 if case.inpaint else 4)
    assert sd[VAE_PREFIX + "decoder.conv_out.weight"].shape == (3, 32, 3, 3)

    text_prefixes = {k.split(".model.")[0].split(".transformer.")[0] for k in sd
                     if k.startswith(("cond_stage_model.", "conditioner."))}
    if family == "sd2":
        assert text_prefixes == {"cond_stage_model"}
        assert UNET_PREFIX + "label_emb.0.0.weight" not in sd
        assert sd[UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (64, D)
    else:
        adm = tf.SDXL_ADM_IN if family == "sdxl" else tf.REFINER_ADM_IN
        assert sd[UNET_PREFIX + "label_emb.0.0.weight"].shape == (256, adm)
        assert UNET_PREFIX + "input_blocks.1.1.norm.weight" not in sd  # level 0 has no attention
    if family == "sdxl":
        assert text_prefixes == {"conditioner.embedders.0", "conditioner.embedders.1"}
        prefix = tf.SDXL_CLIP_L_PREFIX
        assert sd[prefix + "embeddings.token_embedding.weight"].shape == (49408, 64)
        assert sd[prefix + "encoder.layers.2.self_attn.q_proj.weight"].shape == (64, 64)
        assert sd[prefix + "embeddings.position_ids"].dtype == torch.int64
        assert torch.equal(sd[prefix + "embeddings.position_ids"], torch.arange(77)[None])
        assert sd[UNET_PREFIX + "middle_block.1.transformer_blocks.1.attn2.to_k.weight"].shape == (128, 192)
    if family == "sdxl-refiner":
        assert text_prefixes == {"conditioner.embedders.0"}
        assert sd[UNET_PREFIX + "input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"].shape == (128, D)
    if case.kwargs.get("v_pred"):
        assert sd["v_pred"].shape == (0,) and sd["ztsnr"].shape == (0,)
        assert sd["v_pred"].dtype == torch.float32
    else:
        assert "v_pred" not in sd and "ztsnr" not in sd
    assert all(v.dtype == torch.float32 for k, v in sd.items() if not k.endswith("position_ids"))


def test_files_are_deterministic_and_seeded(root, cases):
    written = cases("sdxl-refiner").sd
    again = tf.family_state_dict("sdxl-refiner", seed=0)
    assert written.keys() == again.keys() and all(torch.equal(written[k], again[k]) for k in written)
    path = tiny_checkpoint(root / "half.safetensors", "sdxl-refiner", seed=1, dtype=torch.float16)
    half = safetensors.torch.load_file(str(path))
    assert half.keys() == written.keys()
    assert all(v.dtype == torch.float16 for v in half.values())
    for key in (UNET_PREFIX + "out.2.weight", tf.REFINER_OPEN_CLIP_PREFIX + "text_projection"):
        assert not torch.allclose(half[key].float(), written[key], atol=1e-2)


def _assert_same(module_tensor, file_tensor):
    assert not module_tensor.is_meta
    torch.testing.assert_close(module_tensor.detach().float(), file_tensor.float(), rtol=0, atol=0)


def test_diffusers_reads_our_tensors(case):
    pipe, sd = case.pipe, case.sd
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            assert not [n for n, p in module.named_parameters() if p.is_meta]
    _assert_same(pipe.unet.conv_in.weight, sd[UNET_PREFIX + "input_blocks.0.0.weight"])
    _assert_same(pipe.unet.conv_out.bias, sd[UNET_PREFIX + "out.2.bias"])
    _assert_same(pipe.vae.decoder.conv_out.weight, sd[VAE_PREFIX + "decoder.conv_out.weight"])
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if case.v else "epsilon")

    p = _open_clip_prefix(case.family)
    in_proj = sd[p + "transformer.resblocks.0.attn.in_proj_weight"]
    if case.family == "sd2":
        bigg = pipe.text_encoder  # transformers >= 5.6: CLIPTextModel has no text_model level
        assert bigg.config.num_hidden_layers == tf.SD2_OPEN_CLIP.layers - 1
        assert pipe.tokenizer.pad_token_id == 0  # "!", as open_clip
    else:
        bigg = pipe.text_encoder_2.text_model
        _assert_same(pipe.text_encoder_2.text_projection.weight, sd[p + "text_projection"].T)
        assert pipe.tokenizer_2.pad_token_id == 0
        adm = tf.SDXL_ADM_IN if case.family == "sdxl" else tf.REFINER_ADM_IN
        assert pipe.unet.add_embedding.linear_1.weight.shape == (256, adm)
        _assert_same(pipe.unet.add_embedding.linear_1.weight, sd[UNET_PREFIX + "label_emb.0.0.weight"])
        _assert_same(pipe.unet.add_embedding.linear_2.bias, sd[UNET_PREFIX + "label_emb.0.2.bias"])
        assert pipe.config.force_zeros_for_empty_prompt is (case.family == "sdxl")
    layer = bigg.encoder.layers[0].self_attn
    _assert_same(layer.q_proj.weight, in_proj[:D])
    _assert_same(layer.k_proj.weight, in_proj[D:2 * D])
    _assert_same(layer.v_proj.weight, in_proj[2 * D:])
    _assert_same(layer.v_proj.bias, sd[p + "transformer.resblocks.0.attn.in_proj_bias"][2 * D:])
    _assert_same(bigg.encoder.layers[1].mlp.fc2.weight, sd[p + "transformer.resblocks.1.mlp.c_proj.weight"])
    _assert_same(bigg.embeddings.position_embedding.weight, sd[p + "positional_embedding"])
    _assert_same(bigg.final_layer_norm.weight, sd[p + "ln_final.weight"])

    if case.family == "sdxl":
        clip_l = pipe.text_encoder
        prefix = tf.SDXL_CLIP_L_PREFIX
        assert pipe.tokenizer.pad_token_id == 49407
        _assert_same(clip_l.embeddings.token_embedding.weight, sd[prefix + "embeddings.token_embedding.weight"])
        _assert_same(clip_l.encoder.layers[2].self_attn.q_proj.weight,
                     sd[prefix + "encoder.layers.2.self_attn.q_proj.weight"])
    elif case.family == "sdxl-refiner":
        assert pipe.text_encoder is None and pipe.tokenizer is None
        assert pipe.config.requires_aesthetics_score is True


def test_diffusers_unet_matches_ours(case):
    """The config folder describes the same network: diffusers' UNet and ours agree on the file's weights."""
    sd, config = case.sd, case.unet_config
    ours = UNetModel(config)
    ours.load_state_dict({k.removeprefix(UNET_PREFIX): v for k, v in sd.items() if k.startswith(UNET_PREFIX)})
    ours.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, config.in_channels, 8, 8, generator=g)
    t = torch.tensor([999, 250])
    context = torch.randn(2, 5, config.context_dim, generator=g)
    kwargs, y = {}, None
    if config.adm_in_channels is not None:
        pooled = torch.randn(2, tf.SDXL_OPEN_CLIP.proj_dim, generator=g)
        if case.family == "sdxl":  # original size, crop top-left, target size
            numbers = torch.tensor([[1024.0, 768, 0, 16, 1024, 768], [512.0, 512, 8, 0, 512, 512]])
        else:  # original size, crop top-left, aesthetic score
            numbers = torch.tensor([[1024.0, 768, 0, 16, 6], [512.0, 512, 8, 0, 2.5]])
        y = tf.sdxl_vector(pooled, numbers)
        kwargs = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": numbers}}
    with torch.no_grad():
        expected = case.pipe.unet(x, t, encoder_hidden_states=context, **kwargs).sample
        actual = ours(x, t, context, y=y)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_sd2_text_encoder_is_penultimate_layer_then_ln_final(cases):
    case = cases("sd2")
    ids = case.pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=77,
                              return_tensors="pt").input_ids
    assert ids[0, -1] == 0  # padded with "!"
    p = tf.SD2_TEXT_PREFIX
    hidden = tf.open_clip_hidden_states(case.sd, p, ids, heads=tf.SD2_OPEN_CLIP.heads)
    assert len(hidden) == tf.SD2_OPEN_CLIP.layers + 1
    expected = tf.open_clip_ln_final(case.sd, p, hidden[-2])
    with torch.no_grad():
        actual = case.pipe.text_encoder(ids).last_hidden_state
        prompt_embeds, _ = case.pipe.encode_prompt("a photo of a cat", "cpu", 1, False)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prompt_embeds, expected, rtol=1e-5, atol=1e-5)
    last = tf.open_clip_ln_final(case.sd, p, hidden[-1])
    assert (actual - last).abs().max() > 0.1  # the last layer would make a visible difference


@pytest.mark.parametrize("name", ["sdxl", "sdxl-refiner"])
def test_sdxl_text_encoders_penultimate_and_pooled(cases, name):
    case = cases(name)
    pipe = case.pipe
    p = _open_clip_prefix(case.family)
    ids = pipe.tokenizer_2(["a photo of a cat"], padding="max_length", max_length=77,
                           return_tensors="pt").input_ids
    hidden = tf.open_clip_hidden_states(case.sd, p, ids, heads=tf.SDXL_OPEN_CLIP.heads)
    with torch.no_grad():
        out = pipe.text_encoder_2(ids, output_hidden_states=True)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a photo of a cat", negative_prompt="")
    torch.testing.assert_close(out.hidden_states[-2], hidden[-2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.text_embeds, tf.open_clip_pooled(case.sd, p, ids, heads=2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, out.text_embeds)
    torch.testing.assert_close(embeds[..., -D:], hidden[-2], rtol=1e-5, atol=1e-5)
    assert embeds.shape == (1, 77, case.unet_config.context_dim)
    assert negative.abs().max() > 0 and negative_pooled.abs().max() > 0  # "" is encoded when given explicitly
    if case.family == "sdxl":
        with torch.no_grad():
            _, zeros, _, zeros_pooled = pipe.encode_prompt("a photo of a cat")  # negative_prompt None
        assert zeros.abs().max() == 0 and zeros_pooled.abs().max() == 0  # force_zeros_for_empty_prompt


def test_a1111_v_test_tells_sd2_eps_from_v(cases):
    eps = tf.a1111_v_test(cases("sd2").sd)
    v = tf.a1111_v_test(cases("sd2-v").sd)
    assert eps > -1 > v, (eps, v)


@pytest.mark.parametrize("name", ["sd2", "sdxl", "sdxl-refiner"])
def test_diffusers_pipeline_runs(cases, name):
    case = cases(name)
    kwargs = {"image": torch.zeros(1, 3, 64, 64), "strength": 0.5} if name == "sdxl-refiner" else {}
    with torch.no_grad():
        latents = case.pipe("a cat", negative_prompt="", height=64, width=64, num_inference_steps=2,
                            output_type="latent", **kwargs).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_family_names():
    assert tf.family_unet_config("sdxl-inpaint") == tf.family_unet_config("sdxl", inpaint=True)
    assert tf.family_unet_config("sd2-inpaint").in_channels == 9
    with pytest.raises(ValueError):
        tf.family_unet_config("sd3")
    with pytest.raises(ValueError):
        tf.family_state_dict("sdxl-refiner", inpaint=True)
