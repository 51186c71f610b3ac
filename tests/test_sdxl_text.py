"""SDXL's prompt side: two text encoders on the same chunks, bigG padded with 0 and pooled, textual
inversion with ``clip_l`` / ``clip_g`` vectors, embeddings of other families skipped with the reason.

The expected tensors are computed with transformers' models directly (vocabulary extended with the
embedding's vectors, as diffusers loads textual inversion), not with our encoder classes.
"""
from __future__ import annotations

import copy

import pytest
import safetensors.torch
import torch

from tests.tiny import tiny_checkpoint
from webui.engine.residency import Engine
from webui.engine.prompts.conditioning import PromptEncoder, PromptOptions
from webui.engine.vector import SizeConditioning


@pytest.fixture(scope="module")
def engine(tmp_path_factory, make_engine):
    root = tmp_path_factory.mktemp("sdxl-text")
    eng = make_engine(tiny_checkpoint(root / "sdxl.safetensors", "sdxl"))
    eng.embeddings_dir = root / "embeddings"
    eng.embeddings_dir.mkdir()
    return eng


def encoder_of(engine) -> PromptEncoder:
    return PromptEncoder(engine.text_encoders, engine.embeddings, PromptOptions(), vector_kind="sdxl",
                         sizes=SizeConditioning.for_image(64, 64))


def _ids(engine, text: str, extra: list[int] = ()) -> list[int]:
    tokens = engine.text_encoder.tokenize([text])[0] + list(extra)
    return [49406, *tokens, 49407] + [49407] * (75 - len(tokens))


@torch.inference_mode()
def _expected(model, ids: list[int], pad: int | None, vectors: torch.Tensor | None = None):
    """hidden_states[-2] (and text_embeds when the model has a projection) of a transformers CLIP model,
    with ``vectors`` appended to its vocabulary (ids past the old size), every id after EOS set to ``pad``."""
    model = copy.deepcopy(model)
    if vectors is not None:
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(old + vectors.shape[0])
        model.get_input_embeddings().weight[old:] = vectors
    ids = list(ids)
    if pad is not None:
        end = ids.index(49407) + 1
        ids[end:] = [pad] * (len(ids) - end)
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-2][0], getattr(out, "text_embeds", None)


def test_crossattn_is_both_encoders_side_by_side_and_pooled_is_bigg(engine):
    clip_l, clip_g = engine.model.text_models
    got, pooled = encoder_of(engine).encode_with_pooled(["a red cat on a mat"])
    ids = _ids(engine, "a red cat on a mat")
    z_l, _ = _expected(clip_l, ids, pad=None)
    z_g, text_embeds = _expected(clip_g, ids, pad=0)
    assert got.shape == (1, 77, 64 + 128) and pooled.shape == (1, 96)
    torch.testing.assert_close(got[0], torch.cat([z_l, z_g], dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled[0], text_embeds[0], rtol=0, atol=1e-6)
    # bigG really is padded with 0: EOS padding would give other hidden states
    eos_padded, _ = _expected(clip_g, ids, pad=None)
    assert (eos_padded - z_g).abs().max() > 1e-3


def test_sdxl_embedding_puts_each_part_into_its_encoder(engine):
    g = torch.Generator().manual_seed(4)
    parts = {"clip_l": torch.randn(2, 64, generator=g), "clip_g": torch.randn(2, 128, generator=g)}
    path = engine.embeddings_dir / "xl-style.safetensors"
    safetensors.torch.save_file(parts, str(path))
    try:
        assert engine.embeddings.loaded["xl-style"].count == 2
        got, pooled = encoder_of(engine).encode_with_pooled(["a cat, xl-style"])
        clip_l, clip_g = engine.model.text_models
        ids = _ids(engine, "a cat,", extra=[49408, 49409])
        z_l, _ = _expected(clip_l, ids, None, parts["clip_l"])
        z_g, text_embeds = _expected(clip_g, ids, 0, parts["clip_g"])
        torch.testing.assert_close(got[0], torch.cat([z_l, z_g], dim=-1), rtol=0, atol=1e-5)
        torch.testing.assert_close(pooled[0], text_embeds[0], rtol=0, atol=1e-5)
    finally:
        path.unlink()


def test_embeddings_of_other_families_are_skipped_with_the_reason(engine, tmp_path):
    sd1_style = engine.embeddings_dir / "sd1-style.safetensors"
    safetensors.torch.save_file({"emb_params": torch.zeros(1, 64)}, str(sd1_style))
    try:
        db = engine.embeddings
        assert "sd1-style" in db.skipped and "sd1-style" not in db.loaded
        assert "width 64" in db.skip_reasons["sd1-style"] and "clip_l 64, clip_g 128" in db.skip_reasons["sd1-style"]
    finally:
        sd1_style.unlink()
    # and an SDXL embedding next to an SD 1.x model
    sd1 = Engine("cpu", "full")
    sd1.load(tiny_checkpoint(tmp_path / "sd1.safetensors"))
    sd1.embeddings_dir = tmp_path / "embeddings"
    sd1.embeddings_dir.mkdir()
    safetensors.torch.save_file({"clip_l": torch.zeros(1, 64), "clip_g": torch.zeros(1, 128)},
                                str(sd1.embeddings_dir / "xl.safetensors"))
    db = sd1.embeddings
    assert "xl" in db.skipped and "an SDXL embedding (clip_l 64, clip_g 128)" in db.skip_reasons["xl"]


def test_empty_negative_prompt_is_zeros_but_keeps_the_size_embedding(engine):
    encoder = encoder_of(engine)
    negative = encoder.schedule("", 10, negative=True).at(0)
    assert negative.crossattn.abs().max() == 0
    assert negative.vector[:96].abs().max() == 0 and negative.vector[96:].abs().max() > 0
    positive_empty = encoder.schedule("", 10).at(0)          # an empty *prompt* is encoded as text
    assert positive_empty.crossattn.abs().max() > 0
    assert negative.vector.shape == (96 + 6 * 256,)


def test_a_prompt_naming_a_skipped_embedding_is_told_why(engine):
    from webui.engine.request import GenerationRequest

    path = engine.embeddings_dir / "old-style.safetensors"
    safetensors.torch.save_file({"emb_params": torch.zeros(1, 64)}, str(path))
    try:
        result = engine.generate(GenerationRequest(prompt="a cat, old-style", steps=1, width=64, height=64, seed=1))
        assert result.warnings == ["embedding old-style.safetensors: an embedding of width 64, not for this "
                                   "model's text encoders (clip_l 64, clip_g 128); the loaded model is SDXL: not used"]
        clean = engine.generate(GenerationRequest(prompt="a cat, older-styles", steps=1, width=64, height=64, seed=1))
        assert clean.warnings == []
    finally:
        path.unlink()
