"""The prompt language against A1111's documented behaviour, and its effect on the conditioning.

The parse tables come from A1111's docstrings (``parse_prompt_attention``,
``get_learned_conditioning_prompt_schedules``) and cases derived by the same rules; each entry was checked
against A1111's algorithms run by hand (its lark grammar for schedules) while writing this file. The
tensor tests compare with a direct computation on a tiny text encoder: chunks against encoding each
77-token row by hand, emphasis against multiplying and rescaling by hand, embeddings against a copy of
the text encoder whose vocabulary was extended with the embedding's vectors (how diffusers loads them).
"""
from __future__ import annotations

import copy

import pytest
import safetensors.torch
import torch

from webui.engine.denoiser import cfg_denoiser
from webui.engine.request import GenerationRequest
from webui.engine.job_hooks import JobHooks
from webui.engine.prompts import composable, emphasis, schedule
from webui.engine.prompts.chunks import PromptChunker
from webui.engine.prompts.conditioning import CondSchedule, MultiCond, PromptEncoder, PromptOptions, apply_emphasis
from webui.engine.prompts.embeddings import EmbeddingDatabase, EmbeddingError, load_embedding
from webui.engine.prompts.styles import Style, StyleDatabase, merge
from webui.jobs import infotext
from webui.jobs.parameters import ModelInfo, infotexts
from webui.jobs.parameters import extra_params

EMPHASIS = [
    ('normal text', [('normal text', 1.0)]),
    ('an (important) word', [('an ', 1.0), ('important', 1.1), (' word', 1.0)]),
    ('(unbalanced', [('unbalanced', 1.1)]),
    ('\\(literal\\]', [('(literal]', 1.0)]),
    ('(unnecessary)(parens)', [('unnecessaryparens', 1.1)]),
    ('a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).', [('a ', 1.0), ('house', 1.5730000000000004), (' ', 1.1), ('on', 1.0), (' a ', 1.1), ('hill', 0.55), (', sun, ', 1.1), ('sky', 1.4641000000000006), ('.', 1.1)]),
    ('((word))', [('word', 1.2100000000000002)]),
    ('[word]', [('word', 0.9090909090909091)]),
    ('[[word]]', [('word', 0.8264462809917354)]),
    ('(word:1.3)', [('word', 1.3)]),
    ('(word: 1.3 )', [('word', 1.3)]),
    ('(word:0)', [('word', 0.0)]),
    ('(a (b:2) c)', [('a ', 1.1), ('b', 2.2), (' c', 1.1)]),
    ('[a (b) c]', [('a ', 0.9090909090909091), ('b', 1.0), (' c', 0.9090909090909091)]),
    ('a BREAK b', [('a', 1.0), ('BREAK', -1.0), ('b', 1.0)]),
    ('aBREAKb', [('aBREAKb', 1.0)]),
    ('(a BREAK b)', [('a', 1.1), ('BREAK', -1.1), ('b', 1.1)]),
    ('x:y', [('x:y', 1.0)]),
    ('a (b:c) d', [('a ', 1.0), ('b:c', 1.1), (' d', 1.0)]),
    ('a) b] c', [('a) b] c', 1.0)]),
    ('\\\\', [('\\', 1.0)]),
    ('', [('', 1.0)]),
    ('(a:-1)', [('a', -1.0)]),
    ('((a:1.5))', [('a', 1.6500000000000001)]),
    ('[(a:1.5)]', [('a', 1.3636363636363635)]),
    ('\\(a\\) (b)', [('(a) ', 1.0), ('b', 1.1)]),
    ('a\\b', [('ab', 1.0)]),
    ('(a[b)c]', [('a', 1.1), ('b', 1.0), ('c', 0.9090909090909091)]),
    ('masterpiece, (best quality:1.2), [blurry]', [('masterpiece, ', 1.0), ('best quality', 1.2), (', ', 1.0), ('blurry', 0.9090909090909091)]),
    ('a  BREAK  BREAK b', [('a', 1.0), ('BREAK', -1.0), ('', 1.0), ('BREAK', -1.0), ('b', 1.0)]),
]
SCHEDULES = [
    ('test', [(10, 'test')]),
    ('a [b:3]', [(3, 'a '), (10, 'a b')]),
    ('a [b: 3]', [(3, 'a '), (10, 'a b')]),
    ('a [[[b]]:2]', [(2, 'a '), (10, 'a [[b]]')]),
    ('[(a:2):3]', [(3, ''), (10, '(a:2)')]),
    ('a [b : c : 1] d', [(1, 'a b  d'), (10, 'a  c  d')]),
    ('a[b:[c:d:2]:1]e', [(1, 'abe'), (2, 'ace'), (10, 'ade')]),
    ('a [unbalanced', [(10, 'a [unbalanced')]),
    ('a [b:.5] c', [(5, 'a  c'), (10, 'a b c')]),
    ('((a][:b:c [d:3]', [(3, '((a][:b:c '), (10, '((a][:b:c d')]),
    ('[a|(b:1.1)]', [(1, 'a'), (2, '(b:1.1)'), (3, 'a'), (4, '(b:1.1)'), (5, 'a'), (6, '(b:1.1)'), (7, 'a'), (8, '(b:1.1)'), (9, 'a'), (10, '(b:1.1)')]),
    ('[fe|]male', [(1, 'female'), (2, 'male'), (3, 'female'), (4, 'male'), (5, 'female'), (6, 'male'), (7, 'female'), (8, 'male'), (9, 'female'), (10, 'male')]),
    ('[fe|||]male', [(1, 'female'), (2, 'male'), (3, 'male'), (4, 'male'), (5, 'female'), (6, 'male'), (7, 'male'), (8, 'male'), (9, 'female'), (10, 'male')]),
    ('[cat:dog:0.25]', [(2, 'cat'), (10, 'dog')]),
    ('[cat:dog:1.0]', [(10, 'cat')]),
    ('[cat:dog:0]', [(10, 'dog')]),
    ('[cat:dog:20]', [(10, 'cat')]),
    ('[cat::5]', [(5, 'cat'), (10, '')]),
    ('[cat:dog:-3]', [(10, 'dog')]),
    ('[a|b|c]', [(1, 'a'), (2, 'b'), (3, 'c'), (4, 'a'), (5, 'b'), (6, 'c'), (7, 'a'), (8, 'b'), (9, 'c'), (10, 'a')]),
    ('a|b', [(10, 'a|b')]),
    ('[cat:dog:5] and [red:blue:0.5]', [(5, 'cat and red'), (10, 'dog and blue')]),
    ('[(cat:1.2):dog:3]', [(3, '(cat:1.2)'), (10, 'dog')]),
    ('a [b:c:3e0]', [(3, 'a b'), (10, 'a c')]),
    ('[[a|b]:c:4]', [(1, 'a'), (2, 'b'), (3, 'a'), (4, 'b'), (5, 'c'), (6, 'c'), (7, 'c'), (8, 'c'), (9, 'c'), (10, 'c')]),
    ('\\[a:b:3\\]', [(10, '\\[a:b:3\\]')]),
    ('[a:b:3]))', [(10, '[a:b:3]))')]),
    ('a [b:c:2', [(10, 'a [b:c:2')]),
    ('[a:b:c:3]', [(10, '[a:b:c:3]')]),
    ('(a [cat:dog:0.5]:1.2)', [(5, '(a cat:1.2)'), (10, '(a dog:1.2)')]),
]

AND_CASES = [
    ("a cat AND a dog :1.2", [("a cat", 1.0), (" a dog", 1.2)]),
    ("a cat:1.5", [("a cat", 1.5)]),
    ("a cat :-0.5 AND dog", [("a cat", -0.5), (" dog", 1.0)]),
    ("cat ANDdog", [("cat ANDdog", 1.0)]),
    ("a AND b AND c", [("a", 1.0), (" b", 1.0), (" c", 1.0)]),
    ("(cat:1.2)", [("(cat:1.2)", 1.0)]),
    ("a red AND (blue:1.1) :.5", [("a red", 1.0), (" (blue:1.1)", 0.5)]),
]

TAG_CASES = [
    ("a <lora:foo:0.8> cat", "a  cat", [("lora", ("foo", "0.8"))]),
    ("<lora:a:1:0.5><hypernet:b:1>x", "x", [("lora", ("a", "1", "0.5")), ("hypernet", ("b", "1"))]),
    ("<not a tag> <lora:x>", "<not a tag> ", [("lora", ("x",))]),
    ("no tags", "no tags", []),
]


def test_tables_have_forty_prompts_or_more():
    assert len(EMPHASIS) + len(SCHEDULES) + len(AND_CASES) + len(TAG_CASES) >= 40


@pytest.mark.parametrize("prompt, expected", EMPHASIS, ids=[repr(p) for p, _ in EMPHASIS])
def test_emphasis_parse(prompt, expected):
    assert emphasis.parse(prompt) == expected


@pytest.mark.parametrize("prompt, expected", SCHEDULES, ids=[repr(p) for p, _ in SCHEDULES])
def test_schedule_parse(prompt, expected):
    assert schedule.schedule(prompt, 10) == expected


def test_old_scheduling_reads_numbers_from_one_as_steps():
    assert schedule.schedule("[cat:dog:1.0]", 10, old_scheduling=True) == [(1, "cat"), (10, "dog")]
    assert schedule.schedule("[cat:dog:1.0]", 10) == [(10, "cat")]
    assert schedule.schedule("[cat:dog:0.5]", 10, old_scheduling=True) == schedule.schedule("[cat:dog:0.5]", 10)


@pytest.mark.parametrize("prompt, expected", AND_CASES)
def test_and_split(prompt, expected):
    assert composable.subprompts(prompt) == expected


@pytest.mark.parametrize("prompt, text, tags", TAG_CASES)
def test_extra_network_tags(prompt, text, tags):
    got_text, got = composable.extra_network_tags(prompt)
    assert got_text == text and [(t.kind, t.args) for t in got] == tags


# ---------------------------------------------------------------- tensors on a tiny model

@pytest.fixture(scope="module")
def engine(tmp_path_factory, make_engine, tiny_ckpt):
    root = tmp_path_factory.mktemp("prompts")
    eng = make_engine(tiny_ckpt)
    eng.embeddings_dir = root / "embeddings"
    eng.embeddings_dir.mkdir()
    return eng


def encoder_of(engine, **options) -> PromptEncoder:
    return PromptEncoder(engine.text_encoder, engine.embeddings, PromptOptions(**options))


def by_hand(engine, rows: list[list[int]]) -> torch.Tensor:
    with torch.inference_mode():
        return engine.text_encoder.encode_ids(rows)


def words(n: int) -> str:
    return " ".join(["cat"] * n)       # "cat" is one token


def test_long_prompt_is_chunks_concatenated(engine):
    te = engine.text_encoder
    ids = te.tokenize([words(100)])[0]
    assert len(ids) == 100
    got = encoder_of(engine).encode([words(100)])
    expected = torch.cat([by_hand(engine, [te.pad_ids(ids[:75])]), by_hand(engine, [te.pad_ids(ids[75:])])], dim=1)
    assert got.shape == (1, 154, te.width)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_break_starts_a_new_chunk(engine):
    te = engine.text_encoder
    got = encoder_of(engine).encode(["a red cat BREAK a blue dog"])
    first, second = te.tokenize(["a red cat", "a blue dog"])
    expected = torch.cat([by_hand(engine, [te.pad_ids(first)]), by_hand(engine, [te.pad_ids(second)])], dim=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_comma_backtrack_moves_the_words_after_the_last_comma(engine):
    te = engine.text_encoder
    text = words(70) + ", " + words(10)          # comma at token 70; the chunk fills at 75
    chunker = encoder_of(engine).chunker()
    chunks = chunker.split(text).chunks
    comma = te.comma_id
    assert chunks[0].tokens[1:72] == te.tokenize([words(70)])[0] + [comma]
    assert chunks[0].tokens[72:] == [te.eos_id] * 5                   # padded after the comma
    assert chunks[1].tokens[1:11] == te.tokenize([words(10)])[0]
    no_backtrack = encoder_of(engine, comma_padding_backtrack=0).chunker().split(text).chunks
    assert no_backtrack[0].tokens[1:76] == te.tokenize([text])[0][:75]
    # only within the last N tokens: a comma 30 tokens back does not move anything
    far = words(45) + ", " + words(40)
    assert encoder_of(engine).chunker().split(far).chunks[0].tokens[1:76] == te.tokenize([far])[0][:75]


def test_token_counts_follow_a1111(engine):
    chunker = encoder_of(engine).chunker()
    assert chunker.split("").token_count == 0
    assert chunker.split("(cat:1.3) [dog]").token_count == chunker.split("cat dog").token_count == 2
    assert chunker.split(words(80)).token_count == 80
    assert chunker.split("cat BREAK dog").token_count == 76        # a full chunk, then one token


@pytest.mark.parametrize("mode", ["Original", "No norm", "Ignore"])
def test_emphasis_equals_direct_computation(engine, mode):
    te = engine.text_encoder
    text = "a (red:1.5) cat on [green] grass"
    got = encoder_of(engine, emphasis=mode).encode([text])
    pieces = emphasis.parse(text)
    ids, weights = [], []
    for (piece, w), toks in zip(pieces, te.tokenize([p for p, _ in pieces])):
        ids += toks
        weights += [w] * len(toks)
    z = by_hand(engine, [te.pad_ids(ids)]).float()
    w = torch.tensor([1.0] + weights + [1.0] * (77 - 1 - len(weights)))
    if mode == "Ignore":
        expected = z
    else:
        expected = z * w[None, :, None]
        if mode == "Original":
            expected = expected * (z.mean() / expected.mean())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, by_hand(engine, [te.pad_ids(te.tokenize(["a red cat on green grass"])[0])])) \
        or mode == "Ignore"


def test_emphasis_none_keeps_brackets_as_text(engine):
    te = engine.text_encoder
    got = encoder_of(engine, emphasis="None").encode(["(red:1.5) cat"])
    torch.testing.assert_close(got, by_hand(engine, [te.pad_ids(te.tokenize(["(red:1.5) cat"])[0])]), rtol=0, atol=0)


def test_scheduled_texts_share_one_batch_and_chunk_count(engine):
    te = engine.text_encoder
    sched = encoder_of(engine).schedule("[" + words(80) + ":dog:3]", 10)
    assert [end for end, _ in sched.entries] == [3, 10]
    short = sched.entries[1][1].crossattn
    assert sched.entries[1][1].vector is None and short.shape == (154, te.width)      # padded with an empty chunk to the long text's two chunks
    empty = encoder_of(engine).chunker().empty_chunk().tokens
    torch.testing.assert_close(short[77:], by_hand(engine, [empty])[0], rtol=0, atol=0)


# ---------------------------------------------------------------- textual inversion

def _vectors(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def write_embedding(folder, name: str, fmt: str, vectors: torch.Tensor):
    if fmt == "a1111":
        path = folder / f"{name}.pt"
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name, "step": 500,
                    "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5"}, path)
    elif fmt == "diffusers":
        path = folder / f"{name}.bin"
        torch.save({f"<{name}>": vectors[0]}, path)
    else:
        path = folder / f"{name}.safetensors"
        safetensors.torch.save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


def with_added_tokens(engine, vectors: torch.Tensor):
    """A copy of the text encoder whose vocabulary has extra ids carrying ``vectors`` (diffusers' way)."""
    model = copy.deepcopy(engine.text_encoder.model)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(old + vectors.shape[0])
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = vectors
    return model, list(range(old, old + vectors.shape[0]))


@pytest.mark.parametrize("fmt, count", [("a1111", 3), ("diffusers", 1), ("safetensors", 2)])
def test_embedding_equals_vectors_inserted_by_hand(engine, fmt, count):
    te = engine.text_encoder
    vectors = _vectors(count, te.width, seed=count)
    path = write_embedding(engine.embeddings_dir, f"emb-{fmt}", fmt, vectors)
    try:
        assert engine.embeddings.loaded[f"emb-{fmt}"].count == count
        got = encoder_of(engine).encode([f"a photo of emb-{fmt} on grass"])
        model, new_ids = with_added_tokens(engine, vectors)
        ids = te.tokenize(["a photo of"])[0] + new_ids + te.tokenize(["on grass"])[0]
        with torch.inference_mode():
            expected = model(input_ids=torch.tensor([te.pad_ids(ids)])).last_hidden_state
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert encoder_of(engine).chunker().split(f"emb-{fmt}").token_count == count
    finally:
        path.unlink()


def test_embedding_is_not_split_across_chunks(engine):
    vectors = _vectors(4, engine.text_encoder.width, seed=9)
    path = write_embedding(engine.embeddings_dir, "four", "safetensors", vectors)
    try:
        chunks = encoder_of(engine).chunker().split(words(73) + " four").chunks
        assert [len(c.fixes) for c in chunks] == [0, 1] and chunks[1].fixes[0][0] == 0
    finally:
        path.unlink()


def test_embedding_files_that_are_wrong_are_reported(engine, tmp_path):
    width = engine.text_encoder.width
    torch.save({"a": torch.zeros(3), "b": torch.zeros(3)}, tmp_path / "two.pt")
    with pytest.raises(EmbeddingError, match="one tensor"):
        load_embedding(tmp_path / "two.pt")
    safetensors.torch.save_file({"emb_params": torch.zeros(2, width + 8)}, str(tmp_path / "wide.safetensors"))
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    db = EmbeddingDatabase(tmp_path, width, lambda t: [1])
    db.refresh()
    assert "wide" in db.skipped and not db.loaded
    assert {p.rsplit("/", 1)[-1] for p in db.errors} == {"two.pt", "junk.pt"}


def test_embedding_pickle_with_code_is_refused_unrun(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("ran",))
    torch.save({"string_to_param": {"*": Boom()}}, tmp_path / "evil.pt")
    from webui.engine.files import CheckpointError
    with pytest.raises(CheckpointError, match="refused"):
        load_embedding(tmp_path / "evil.pt")


# ---------------------------------------------------------------- sampling: which conditioning each call gets

def record_contexts(engine):
    seen = []
    handle = engine.model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    return seen, handle


def run(engine, **fields):
    request = GenerationRequest(**{"width": 64, "height": 64, "steps": 10, "seed": 1, **fields})
    seen, handle = record_contexts(engine)
    try:
        result = engine.generate(request)
    finally:
        handle.remove()
    return result, seen


def test_prompt_editing_switches_at_the_right_call(engine):
    _, seen = run(engine, prompt="[cat:dog:5]", negative_prompt="blurry")
    cat, dog = encoder_of(engine).encode(["cat", "dog"])
    uncond = encoder_of(engine).encode(["blurry"])[0]
    assert len(seen) == 10
    for call, context in enumerate(seen):      # cond row then uncond row
        torch.testing.assert_close(context[0], cat if call <= 5 else dog, rtol=0, atol=0)
        torch.testing.assert_close(context[1], uncond, rtol=0, atol=0)


def test_alternation_follows_a1111_call_count(engine):
    _, seen = run(engine, prompt="[cat|dog]", steps=6)
    cat, dog = encoder_of(engine).encode(["cat", "dog"])
    # A1111 asks for the entry ending at or after the call index (from 0): cat, cat, dog, cat, dog, cat
    expected = [cat, cat, dog, cat, dog, cat]
    for context, want in zip(seen, expected):
        torch.testing.assert_close(context[0], want, rtol=0, atol=0)


def test_second_order_sampler_schedules_over_model_calls(engine):
    _, seen = run(engine, prompt="[cat:dog:0.5]", sampler_name="Heun", steps=4)
    cat, dog = encoder_of(engine).encode(["cat", "dog"])
    assert len(seen) == 7                       # Heun: 2 calls per step, 1 on the last
    for call, context in enumerate(seen):      # schedule over 8 calls: 'cat' up to call 4
        torch.testing.assert_close(context[0], cat if call <= 4 else dog, rtol=0, atol=0)


def test_each_distinct_prompt_is_encoded_once_per_job(engine):
    calls = []
    handle = engine.text_encoder.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        engine.generate(GenerationRequest(prompt="[cat:dog:5] AND bird", negative_prompt="[a|b]", width=64,
                                          height=64, steps=10, batch_size=2, n_iter=2, seed=3))
    finally:
        handle.remove()
    # uncond schedule (one batch), the edited part (one batch), the AND part (one batch)
    assert len(calls) == 3


def test_composable_weights_combine_as_a1111():
    def fake_model(x, sigma, cond, image_cond=None, info=None):
        return x * 0 + cond.crossattn.mean(dim=(1, 2)).view(-1, 1, 1, 1)   # one number per row: its cond's mean
    a, b, u = torch.full((77, 4), 1.0), torch.full((77, 4), 3.0), torch.full((77, 4), -2.0)
    cond = MultiCond([(CondSchedule([(10, a)]), 1.0), (CondSchedule([(10, b)]), 0.5)])
    denoise = cfg_denoiser(fake_model, cond, CondSchedule([(10, u)]), 7.0)
    x = torch.zeros(2, 4, 8, 8)
    out = denoise(x, torch.ones(2))
    expected = -2.0 + (1.0 - -2.0) * 1.0 * 7.0 + (3.0 - -2.0) * 0.5 * 7.0
    assert torch.allclose(out, torch.full_like(out, expected))


def test_cond_and_uncond_of_different_lengths(engine):
    long_prompt = words(90)
    _, seen = run(engine, prompt=long_prompt, negative_prompt="blurry", steps=2)
    assert [c.shape[1] for c in seen] == [154, 77, 154, 77]        # separate batches, as A1111 by default
    _, padded = run(engine, prompt=long_prompt, negative_prompt="blurry", steps=2, pad_cond_uncond=True)
    assert [c.shape for c in padded] == [(2, 154, 64)] * 2         # one batch, uncond padded
    empty = encoder_of(engine).encode([""])[0]
    torch.testing.assert_close(padded[0][1, 77:], empty, rtol=0, atol=0)


def test_and_parts_of_different_lengths_repeat_their_last_vector():
    short, long = torch.randn(77, 4), torch.randn(154, 4)
    stacked, weights = MultiCond([(CondSchedule([(1, short)]), 1.0), (CondSchedule([(1, long)]), 2.0)]).at(0)
    stacked = stacked.crossattn
    assert stacked.shape == (2, 154, 4) and weights == [1.0, 2.0]
    assert torch.equal(stacked[0, 77:], short[-1:].expand(77, -1))


# ---------------------------------------------------------------- extra networks, infotext, styles

def test_extra_network_tags_reach_their_handler_and_unknown_kinds_are_reported(engine):
    received = []

    def handler(tags, ctx):
        received.extend(tags)
        ctx.infotext["Test net"] = ", ".join(t.args[0] for t in tags)
    request = GenerationRequest(prompt="a cat <test:one:0.5> <test:two> <hypernet:x:1>", width=64, height=64,
                                steps=2, seed=1)
    seen, handle = record_contexts(engine)
    try:
        result = engine.generate(request, hooks=JobHooks(networks={"test": handler}))
    finally:
        handle.remove()
    assert [(t.kind, t.args) for t in received] == [("test", ("one", "0.5")), ("test", ("two",))]
    assert extra_params(result.facts)["Test net"] == "one, two"
    assert len(result.warnings) == 1 and "<hypernet:x:1>" in result.warnings[0] and "test" in result.warnings[0]
    torch.testing.assert_close(seen[0][0], encoder_of(engine).encode(["a cat   "])[0], rtol=0, atol=0)
    assert result.images[0].prompt == request.prompt          # infotext keeps the tags, as A1111


def test_infotext_records_ti_hashes_emphasis_and_clip_skip_and_round_trips(engine):
    vectors = _vectors(2, engine.text_encoder.width, seed=4)
    path = write_embedding(engine.embeddings_dir, "myemb", "a1111", vectors)
    try:
        request = GenerationRequest(prompt="a (myemb:1.2) cat", negative_prompt="blurry", width=64, height=64,
                                    steps=2, seed=5, clip_skip=2, emphasis="No norm")
        result = engine.generate(request)
        text = infotexts(request, result, ModelInfo("tiny", "0123456789"))[0]
        short = engine.embeddings.loaded["myemb"].short_hash()
        import hashlib
        assert short == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        assert f'TI hashes: "myemb: {short}"' in text and "Emphasis: No norm" in text and "Clip skip: 2" in text
        parsed = infotext.parse_typed(text)
        assert parsed.clip_skip == 2 and parsed.extra["TI hashes"] == f"myemb: {short}"
        assert parsed.extra["Emphasis"] == "No norm" and parsed.prompt == request.prompt
        plain = engine.generate(GenerationRequest(prompt="a cat", width=64, height=64, steps=2, seed=5))
        assert "TI hashes" not in extra_params(plain.facts) and "Emphasis" not in extra_params(plain.facts)
    finally:
        path.unlink()


def test_embedding_changes_the_image(engine):
    vectors = _vectors(1, engine.text_encoder.width, seed=11) * 5
    base = dict(width=64, height=64, steps=4, seed=6, prompt="a zzz cat")
    before = engine.generate(GenerationRequest(**base)).images[0].image
    path = write_embedding(engine.embeddings_dir, "zzz", "safetensors", vectors)
    try:
        after = engine.generate(GenerationRequest(**base)).images[0].image
    finally:
        path.unlink()
    assert before.tobytes() != after.tobytes()


def test_styles_csv(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text('name,prompt,negative_prompt\n'
                    'Cinematic,"cinematic still of {prompt}, film grain",cartoon\n'
                    'Sharp,"sharp focus, 8k",blurry\n'
                    '"Quoted, name",x,\n', encoding="utf-8")
    db = StyleDatabase(path)
    assert list(db.styles) == ["Cinematic", "Sharp", "Quoted, name"]
    assert db.apply("a cat", "", ["Cinematic", "Sharp"]) == \
        ("cinematic still of a cat, film grain, sharp focus, 8k", "cartoon, blurry")
    assert merge("x", "") == "x" and merge("{prompt} y", "z") == "z y"
    with pytest.raises(ValueError, match="Cinematic"):
        db.apply("a", "", ["Nope"])
    db.save([Style("One", "a, {prompt}", "b")])
    assert StyleDatabase(path).styles == {"One": Style("One", "a, {prompt}", "b")}


def test_request_validates_prompt_settings():
    with pytest.raises(ValueError, match="emphasis"):
        GenerationRequest(emphasis="Loud").validate()
    with pytest.raises(ValueError, match="comma padding"):
        GenerationRequest(comma_padding_backtrack=80).validate()
    assert apply_emphasis(torch.ones(1, 2, 2), torch.tensor([[2.0, 1.0]]), "No norm").sum() == 6
    with pytest.raises(ValueError, match="emphasis"):
        PromptChunker(lambda t: [], 0, 1, None, emphasis="Loud")
