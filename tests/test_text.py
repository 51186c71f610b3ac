"""CLIP tokenizer parity with open_clip's SimpleTokenizer, SD1 id layout, and the text encoder."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import socket
import sys

import pytest
import torch
import transformers

from tests.references import open_clip_tokenizer
from webui.engine import text
from webui.engine.families import clip_config
from webui.engine.text import TextEncoder, clean_text, load_tokenizer

BOS, EOS = 49406, 49407

HARD_PROMPTS = [
    "",
    "a photo of a cat",
    "café crème brûlée, naïve Ångström, Ærøskøbing, São Paulo",
    "e\u0301 combining acute, İstanbul, straße, ΟΔΟΣ",
    "東京の夜景, 美しい风景, 서울의 밤",
    "🐱🐶✨ cute 👍🏽 emoji 🏳️‍🌈 👨‍👩‍👧",
    "שלום עולם مرحبا بالعالم",
    "!!!???...,,,;;;:::---___***((()))[[[]]]{{{}}}",
    "masterpiece, (best quality:1.2), [blurry], <lora:foo:0.8>, BREAK, \\(escaped\\)",
    "1234567 3.14 1e10 $100 50% 4k 8K 1920x1080",
    "don't it's we're I'll they've I'd DON'T IT'S 'quoted'",
    "don’t “curly” ‘single’ quotes",
    "&amp; &lt;b&gt; &quot;x&quot; &#39; &#x2019; &amp;amp; &nbsp; P&EACUTE;REZ &semi; &ampx;",
    "<b>tags</b> &amp; stay\n&amp; escaped on the next line",
    "  lots   of\n\nwhitespace\t\ttabs \r\n end \u3000 ",
    "MiXeD CaSe PhOtO Of A CaT",
    "ﬁne ﬂower ﬀ, ＦＵＬＬＷＩＤＴＨ　１２３, ｶﾀｶﾅ",
    "ctrl\x00\x07chars, zero\u200bwidth, soft\u00adhyphen, \ufeffbom, \x1b[36mcolor\x1b[0m",
    "c1 controls \x93q\x94 \x85 ellipsis… — dash – ‐",
    ("a very long prompt, highly detailed, intricate, sharp focus, 8k, trending on artstation, "
     "by greg rutkowski and alphonse mucha, cinematic lighting, volumetric fog, octane render, "
     "unreal engine 5, photorealistic, hyperrealistic, ultra detailed, dramatic sky, golden hour, ") * 3,
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def reference():
    return open_clip_tokenizer().SimpleTokenizer()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77)
    return transformers.CLIPTextModel(config).eval()


def test_vocab_file_is_the_shipped_one():
    digest = hashlib.sha256(text.VOCAB_FILE.read_bytes()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    assert digest in (text.VOCAB_FILE.parent / "README.md").read_text()


def test_tokenizer_layout(tokenizer, reference):
    assert isinstance(tokenizer, transformers.CLIPTokenizer)
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS, EOS, EOS)
    vocab = tokenizer.get_vocab()
    assert {t: vocab[t] for t in ("<|startoftext|>", "<|endoftext|>")} == {"<|startoftext|>": BOS, "<|endoftext|>": EOS}
    # same token strings at the same ids as open_clip (whose specials are spelled <start_of_text>...)
    assert all(vocab[t] == i for t, i in reference.encoder.items() if i < BOS)
    assert tokenizer("a photo of a cat")["input_ids"] == [BOS, 320, 1125, 539, 320, 2368, EOS]


@pytest.mark.parametrize("prompt", HARD_PROMPTS, ids=range(len(HARD_PROMPTS)))
def test_ids_match_open_clip(tokenizer, reference, prompt):
    encoder = TextEncoder(None, tokenizer)
    ids = encoder.tokenize([prompt])[0]
    assert ids == reference.encode(prompt)  # full, untruncated id lists
    assert encoder.count_tokens(prompt) == len(ids)


def test_long_prompt_is_longer_than_a_chunk(tokenizer):
    assert TextEncoder(None, tokenizer).count_tokens(HARD_PROMPTS[-1]) > 77


def test_batch_tokenize(tokenizer, reference):
    assert TextEncoder(None, tokenizer).tokenize(HARD_PROMPTS) == [reference.encode(p) for p in HARD_PROMPTS]
    assert TextEncoder(None, tokenizer).tokenize([]) == []


def test_clean_text_matches_open_clip_cleaning():
    clean = open_clip_tokenizer()._clean_lower
    for prompt in HARD_PROMPTS:
        assert clean_text(prompt) == clean(prompt), repr(prompt)


def test_character_fixes_match_ftfy():
    """The translate table equals ftfy's c1 -> ligature -> width -> quotes fixers, char by char."""
    from ftfy import fixes
    for c in range(0x80, 0x10000):
        ch = chr(c)
        if 0xD800 <= c < 0xE000:
            continue
        expected = fixes.uncurl_quotes(fixes.fix_character_width(fixes.fix_latin_ligatures(fixes.fix_c1_controls(ch))))
        assert ch.translate(text._FIXES) == expected, hex(c)


def test_builds_offline_without_ftfy(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setitem(sys.modules, "ftfy", None)  # not a runtime dependency
    spec = importlib.util.spec_from_file_location("text_offline_copy", text.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tok = module.load_tokenizer()      # its build time is measured by bench/bench_startup.py, not asserted here
    assert module.TextEncoder(None, tok).tokenize(["Don’t &amp; ﬁne"]) == [[847, 713, 261, 3797]]
    assert not (tmp_path / "hf").exists()


def test_padding_layout_and_truncation(tokenizer, tiny_model):
    encoder = TextEncoder(tiny_model, tokenizer)
    seen = []
    handle = tiny_model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    try:
        encoder.encode(["a photo of a cat", "", HARD_PROMPTS[-1]])
    finally:
        handle.remove()
    ids = seen[0]
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert ids[0].tolist() == [BOS, 320, 1125, 539, 320, 2368] + [EOS] * 71
    assert ids[1].tolist() == [BOS] + [EOS] * 76
    long_ids = encoder.tokenize([HARD_PROMPTS[-1]])[0]
    assert ids[2].tolist() == [BOS] + long_ids[:75] + [EOS]
    assert encoder.pad_ids(list(range(100))) == [BOS, *range(75), EOS]


def test_encode_equals_model_last_hidden_state(tokenizer, tiny_model):
    encoder = TextEncoder(tiny_model, tokenizer)
    prompts = ["a photo of a cat", "masterpiece, best quality, 1girl"]
    ids = torch.tensor([encoder.pad_ids(t) for t in encoder.tokenize(prompts)])
    with torch.no_grad():
        expected = tiny_model(ids).last_hidden_state
        got = encoder.encode(prompts)
    assert got.shape == (2, 77, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_clip_skip_2_is_penultimate_layer_then_final_layer_norm(tokenizer, tiny_model):
    encoder = TextEncoder(tiny_model, tokenizer)
    ids = torch.tensor([encoder.pad_ids(encoder.tokenize(["a photo of a cat"])[0])])
    shallow = copy.deepcopy(tiny_model)
    shallow.encoder.layers = shallow.encoder.layers[:-1]  # transformers 5: no .text_model
    with torch.no_grad():
        hidden = tiny_model(ids, output_hidden_states=True).hidden_states[-2]
        expected = tiny_model.final_layer_norm(hidden)
        got = encoder.encode(["a photo of a cat"], clip_skip=2)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(got, shallow(ids).last_hidden_state)
        assert not torch.allclose(got, encoder.encode(["a photo of a cat"], clip_skip=1))
    for bad in (0, 3):
        with pytest.raises(ValueError, match="clip_skip"):
            encoder.encode(["x"], clip_skip=bad)


def test_encode_runs_in_model_dtype(tokenizer, tiny_model):
    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    with torch.no_grad():
        assert TextEncoder(model, tokenizer).encode(["a cat"], clip_skip=2).dtype == torch.bfloat16


def test_clip_text_config_from_state_dict(tiny_model):
    sd = {"text_model." + k: v for k, v in tiny_model.state_dict().items()}  # SD1 checkpoint layout
    config = clip_config(sd, "text_model.", {"num_attention_heads": 2})
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "max_position_embeddings", "hidden_act"):
        assert getattr(config, field) == getattr(tiny_model.config, field), field
    assert clip_config(tiny_model.state_dict(), "").num_attention_heads == 1  # 64 / 64 when not overridden
