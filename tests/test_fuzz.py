"""Property tests (hypothesis) for the parsers of untrusted input.

Every parser that reads what a user, an uploaded image or a downloaded file says -- the prompt language, the
infotext, safetensors headers and pickled checkpoints, textual-inversion embeddings, LoRA files, styles.csv
and the API's base64 images -- either returns normally or raises its own error for bad input, creates no
file, takes bounded time and allocates no more than the input holds. The targets and what each may raise are
in ``tests/fuzz/targets.py`` (shared with the atheris harness ``tests/fuzz/fuzz_parsers.py``). Each bug that
fuzzing found is kept here as an ``@example`` or a plain test (named in its comment).

Budgets are small (the module takes about a minute on a 2-core CPU); ``tests/fuzz/README.md`` says how to fuzz
for longer.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.fuzz import targets as T
from webui.engine import files
from webui.engine.prompts import composable, emphasis, schedule
from webui.jobs import infotext


def _n(examples: int) -> int:
    """The budget of one property, times ``FUZZ_SCALE`` (``FUZZ_SCALE=20`` for a longer run)."""
    return max(1, int(examples * float(os.environ.get("FUZZ_SCALE", "1"))))


# No per-example deadline (wall-clock limits flake on a loaded machine): a hang fails the test through
# pytest-timeout instead, well within the 600 s default.
pytestmark = pytest.mark.timeout(300)
SETTINGS = dict(database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.large_base_example])


@pytest.fixture(scope="module")
def sandbox():
    box = T.Sandbox()
    yield box
    box.close()


def fuzz_text(tokens, max_size: int = 200):
    """Text from the grammar's pieces, pieces mixed with short random text, or any text."""
    return st.one_of(st.lists(st.sampled_from(tokens), max_size=40).map("".join),
                     st.lists(st.one_of(st.sampled_from(tokens), st.text(max_size=3)), max_size=30).map("".join),
                     st.text(max_size=max_size))


@st.composite
def mutated(draw, base: bytes | st.SearchStrategy, max_ops: int = 4):
    """``base`` (or a value drawn from it) with a few byte-level mutations: flip, set, insert, delete,
    truncate, duplicate a slice."""
    data = bytearray(draw(base) if isinstance(base, st.SearchStrategy) else base)
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "dup")))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from((0, 1, 0x7F, 0x80, 0xFF, ord('"'), ord("{"), ord("9"))))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[i:]
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 64))]
    return bytes(data)


def seeds_of(target: str, mode: int | None = None) -> list[bytes]:
    """The harness's seeds for ``target`` without their mode byte (only those of ``mode`` when given)."""
    return [s[1:] for s in T.seeds(target) if mode is None or s[0] == mode]


# ------------------------------------------------------------------------------------------ prompt

@settings(max_examples=_n(300), **SETTINGS)
@given(text=fuzz_text(T.PROMPT_TOKENS), steps=st.integers(0, 150), old=st.booleans(),
       first_pass=st.none() | st.integers(0, 150))
@example(text="[a:b:1e999]", steps=20, old=False, first_pass=None)       # OverflowError: float inf to int
@example(text="[a:b:-1e999]", steps=20, old=True, first_pass=None)       # OverflowError
@example(text="[a:b:1.0e999]", steps=0, old=False, first_pass=None)      # ValueError: NaN to int (inf * 0)
@example(text="[" * 3000 + "a", steps=20, old=False, first_pass=None)    # RecursionError
@example(text="(a:" * 2000, steps=20, old=False, first_pass=None)        # RecursionError
@example(text="[a|" * 600, steps=20, old=False, first_pass=None)         # RecursionError
def test_prompt_parsers(text, steps, old, first_pass):
    T.check_prompt(text, steps, old, first_pass)


def test_deeply_nested_prompt_is_not_scheduled_but_kept():
    deep = "[" * 150 + "a:b:5" + "]" * 150
    assert schedule.schedule(deep, 20) == [(20, deep)]
    shallow = "[" * 50 + "a:b:5" + "]" * 50
    assert [end for end, _ in schedule.schedule(shallow, 20)] == [5, 20]


def test_schedule_with_infinite_when():
    assert schedule.schedule("[a:b:1e999]", 20) == [(20, "a")]         # never switches
    assert schedule.schedule("[a:b:-1e999]", 20) == [(20, "b")]        # switched from the start
    assert schedule.schedule("[a:b:1.0e999]", 0) == [(0, "a")]        # 0 steps: nothing to switch


# A1111's regexes, which the linear-time code must match exactly
A1111_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
A1111_TAG = re.compile(r"<(\w+):([^>]+)>")


@settings(max_examples=_n(300), **SETTINGS)
@given(text=fuzz_text((" ", "\t", "\n", "\u00a0", ":", " : ", ".", "-", "+", "1", "0.5", "5.", "x", "AND",
                       " AND ", "\u0661", "<", ">", "<lora:", "a:b", "\x1c"), max_size=40))
@example(text="a AND b :1.2")
@example(text=" " * 50 + ":")
def test_subprompts_and_tags_match_a1111(text):
    expected = []
    for part in re.split(r"\bAND\b", text):
        body, weight = A1111_WEIGHT.search(part).groups()
        expected.append((body, 1.0 if weight is None else float(weight)))
    assert composable.subprompts(text) == expected
    tags = []
    rest = A1111_TAG.sub(lambda m: tags.append((m.group(1), tuple(m.group(2).split(":")), m.group(0))) or "", text)
    got_rest, got = composable.extra_network_tags(text)
    assert (got_rest, [(t.kind, t.args, t.text) for t in got]) == (rest, tags)


# Long inputs: each took quadratic time (minutes to hours at these sizes) or overflowed the stack. Now each takes
# well under a second; pytest-timeout fails the test (instead of a wall-clock assertion) if one hangs again.
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, call", [
    ("subprompts on 200k spaces", lambda: composable.subprompts(" " * 200_000 + "x")),
    ("subprompts on 200k spaces and a colon", lambda: composable.subprompts(" " * 200_000 + ":")),
    ("extra-network tags without a '>'", lambda: composable.extra_network_tags("<a:" * 70_000)),
    ("infotext: 1 MB line of letters", lambda: infotext.parse("a" * 1_000_000)),
    ("infotext: 1 MB line of key characters", lambda: infotext.parse("a b-/" * 200_000)),
    ("infotext: 1 MB of unclosed quoted values", lambda: infotext.parse('ab: "x, ' * 120_000)),
    ("schedule: 20k '['", lambda: schedule.schedule("[" * 20_000, 150)),
    ("schedule: 20k '(a:'", lambda: schedule.schedule("(a:" * 7_000, 150)),
    # quadratic as A1111's (each bracket rescales what follows it), bounded by the API's 20 000 characters
    ("emphasis: 20k chars of unclosed brackets", lambda: emphasis.parse("[a" * 10_000)),
])
def test_long_inputs_finish(name, call):
    call()


# ------------------------------------------------------------------------------------------ infotext

A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@settings(max_examples=_n(300), **SETTINGS)
@given(lines=st.lists(fuzz_text(T.INFOTEXT_TOKENS, max_size=80), min_size=1, max_size=4))
@example(lines=["Steps: 1, Size: " + "1" * 5000 + "x1, Seed: 1"])      # ValueError: int() of 5000 digits
@example(lines=["a", "Negative prompt: b", "Steps: \u0661, Size: \u0661x\u0662, Seed: 1"])
def test_infotext(lines):
    text = "\n".join(lines)
    T.check_infotext(text)
    last = text.replace("\r\n", "\n").strip().split("\n")[-1]
    assert infotext._params(last) == A1111_PARAM.findall(last)


# ------------------------------------------------------------------------------------------ model files

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**65) | st.floats(allow_nan=False) |
                    st.text(max_size=4), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                                            max_size=3), max_leaves=6)
DTYPES = sorted(files._DTYPES)


@st.composite
def safetensors_files(draw):
    """A valid header and data for a few tensors, then some entries' fields replaced by junk, the length field
    and the data changed, the JSON text or the bytes mutated."""
    header, offset = {}, 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        n = math.prod(shape) * files._DTYPES[dtype].itemsize
        header[draw(st.text(max_size=6)) if draw(st.booleans()) else f"t{i}"] = {
            "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    for entry in header.values():
        if draw(st.integers(0, 3)) == 0:
            field = draw(st.sampled_from(("dtype", "shape", "data_offsets")))
            entry[field] = draw(st.one_of(
                JSON, st.sampled_from(["F128", "", ["F32"], {"F32": 1}]),
                st.lists(st.sampled_from([0, 1, -1, 2**31, 2**62, 2**63, 2**64, True, 1.0, "1"]), max_size=4)))
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3) | JSON)
    raw = json.dumps(header).encode()
    if draw(st.integers(0, 3)) == 0:
        raw = draw(mutated(raw))
    data = bytes(draw(st.integers(0, offset + 8)))
    length = draw(st.sampled_from([None, None, None, 0, len(raw) + 1, max(len(raw) - 1, 0), 2**63, 2**64 - 1]))
    out = T.safetensors_bytes(raw, data, length)
    return draw(mutated(out, max_ops=2)) if draw(st.integers(0, 4)) == 0 else out


@settings(max_examples=_n(250), **SETTINGS)
@given(data=st.one_of(safetensors_files(), mutated(st.sampled_from(seeds_of("model", 0))), st.binary(max_size=64)))
@example(data=T.safetensors_bytes({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"0000"))  # TypeError
@example(data=T.safetensors_bytes(b"[" * 100_000 + b"]" * 100_000))                                # RecursionError
@example(data=T.safetensors_bytes(b'{"a":' * 50_000 + b"1" + b"}" * 50_000))                         # RecursionError
@example(data=T.safetensors_bytes({"a": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}))  # TypeError
@example(data=T.safetensors_bytes({"a": {"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}))  # RuntimeError
@example(data=T.safetensors_bytes({"model.diffusion_model.input_blocks." + "1" * 5000 + ".w":      # ValueError from
                                   {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}))        # read_checkpoint
def test_safetensors_reader(sandbox, data):
    T.check_model_file(sandbox, data, ".safetensors")


@pytest.mark.timeout(120)
def test_safetensors_duplicate_keys_take_linear_time(sandbox):
    """The duplicate-key check counted each key with list.count: 20 000 keys took seconds, 100 000 minutes."""
    raw = b"{" + b",".join(b'"k%d":{}' % (i % 99_999) for i in range(100_000)) + b"}"
    with sandbox.run(T.safetensors_bytes(raw), "m.safetensors") as path, pytest.raises(files.CheckpointError,
                                                                                       match="duplicate keys"):
        files.read_state_dict(path)


TENSORS = st.builds(
    lambda shape, dtype, expand: torch.zeros((), dtype=dtype).expand(shape) if expand else torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=3), st.sampled_from((torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                                              torch.bool, torch.uint8)), st.booleans())
OBJECTS = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) | TENSORS,
                       lambda c: st.lists(c, max_size=3) | st.tuples(c, c) |
                       st.dictionaries(st.text(max_size=6) | st.integers(), c, max_size=4), max_leaves=8)


@st.composite
def pickle_files(draw, objects=OBJECTS):
    obj = draw(objects)
    kind = draw(st.sampled_from(("zip", "legacy", "pickle")))
    data = pickle.dumps(obj, protocol=draw(st.integers(0, 5))) if kind == "pickle" else \
        T._torch_bytes(obj, zip_format=kind == "zip")
    return draw(mutated(data, max_ops=3)) if draw(st.booleans()) else data


@settings(max_examples=_n(120), **SETTINGS)
@given(data=st.one_of(pickle_files(), mutated(st.sampled_from(seeds_of("model", 1) + seeds_of("model", 2)))),
       suffix=st.sampled_from((".ckpt", ".pt", ".bin")))
@example(data=T._torch_bytes({"w": torch.zeros(1).expand(2**18, 1024)}), suffix=".ckpt")  # 1 GiB from 4 bytes
@example(data=pickle.dumps({"a": T._Mkdir()}), suffix=".pt")                               # must not run os.mkdir
def test_pickle_checkpoint_reader(sandbox, data, suffix):
    T.check_model_file(sandbox, data, suffix)


# ------------------------------------------------------------------------------------------ embeddings

EMB_KEYS = ("string_to_param", "clip_l", "clip_g", "emb_params", "*", "<tok>", "step", "sd_checkpoint",
            "sd_checkpoint_name", "name")
FLOAT_TENSORS = st.builds(
    lambda shape, dtype, expand: torch.ones((), dtype=dtype).expand(shape) if expand else torch.randn(shape).to(dtype),
    st.lists(st.integers(0, 4), max_size=3), st.sampled_from((torch.float32, torch.float16, torch.bfloat16, torch.int8)),
    st.integers(0, 5).map(lambda n: n == 0))
EMB_OBJECTS = st.dictionaries(st.sampled_from(EMB_KEYS) | st.text(max_size=3),
                              FLOAT_TENSORS | st.dictionaries(st.sampled_from(("*", "a")), FLOAT_TENSORS | OBJECTS,
                                                              max_size=2) | OBJECTS, max_size=3)


@st.composite
def embedding_files(draw):
    obj = draw(EMB_OBJECTS)
    if draw(st.booleans()):
        tensors = {k: v.contiguous() for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        return ".safetensors", T._safetensors_of(tensors)
    return draw(st.sampled_from((".pt", ".bin"))), T._torch_bytes(obj, zip_format=draw(st.booleans()))


@settings(max_examples=_n(150), **SETTINGS)
@given(case=st.one_of(embedding_files(), st.tuples(st.just(".safetensors"), mutated(st.sampled_from(seeds_of("embedding", 0)))),
                      st.tuples(st.just(".pt"), mutated(st.sampled_from(seeds_of("embedding", 1))))))
@example(case=(".pt", T._torch_bytes({"emb_params": torch.zeros(0)})))                     # RuntimeError: reshape
@example(case=(".pt", T._torch_bytes({"clip_l": torch.zeros(3, 0), "clip_g": torch.zeros(3, 0)})))  # RuntimeError
@example(case=(".safetensors", T._safetensors_of({"a": torch.zeros(0)})))                  # RuntimeError
@example(case=(".pt", T._torch_bytes({"emb_params": torch.zeros(1).expand(2**20, 2**20)})))  # RuntimeError: 4 TiB
@example(case=(".pt", T._torch_bytes({"emb_params": torch.zeros(1).expand(2**18, 768)})))     # 768 MiB from 4 bytes
def test_embedding_reader(sandbox, case):
    suffix, data = case
    T.check_embedding_file(sandbox, data, suffix)


# ------------------------------------------------------------------------------------------ LoRA

LORA_MODULES = ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q",
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
                "lora_unet_input_blocks_1_0_in_layers_2", "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                "text_encoder.text_model.encoder.layers.0.mlp.fc1", "lora_te1_x", "unknown.module", "a" * 3)
LORA_PARAMS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "lora_A.weight", "lora_B.weight",
               "lora.down.weight", "lora.up.weight", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1",
               "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "diff", "x")
LORA_DIMS = st.sampled_from((1, 2, 4, 8, 32, 64))


@st.composite
def lora_files(draw):
    tensors = {}
    for _ in range(draw(st.integers(0, 6))):
        key = f"{draw(st.sampled_from(LORA_MODULES))}.{draw(st.sampled_from(LORA_PARAMS))}"
        shape = draw(st.lists(LORA_DIMS | st.integers(0, 3), max_size=4))
        dtype = draw(st.sampled_from((torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.bool)))
        tensors[key] = torch.ones(shape).to(dtype)
    metadata = {}
    if draw(st.booleans()):
        config = draw(st.dictionaries(st.sampled_from(("unet.lora_alpha", "unet.alpha_pattern", "unet.use_rslora",
                                                       "text_encoder.lora_alpha")), JSON, max_size=3))
        metadata["lora_adapter_metadata"] = draw(st.just(json.dumps(config)) | st.text(max_size=6))
    if draw(st.booleans()):
        metadata["ss_base_model_version"] = draw(st.sampled_from(("sd_v1", "sdxl_base_v1-0", "sd_v2", "")) |
                                                 st.text(max_size=4))
    if draw(st.booleans()):
        return ".safetensors", T._safetensors_of(tensors, metadata or None)
    return ".pt", T._torch_bytes(tensors, zip_format=draw(st.booleans()))


def _peft_file(config) -> bytes:
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    return T._safetensors_of({f"{name}.lora_A.weight": torch.ones(2, 32), f"{name}.lora_B.weight": torch.ones(32, 2)},
                             {"lora_adapter_metadata": json.dumps(config)})


@settings(max_examples=_n(120), **SETTINGS)
@given(case=st.one_of(lora_files(), st.tuples(st.just(".safetensors"), mutated(st.sampled_from(seeds_of("lora", 0))))))
@example(case=(".safetensors", _peft_file({"unet.lora_alpha": 2, "unet.alpha_pattern": [1]})))   # AttributeError
@example(case=(".safetensors", _peft_file({"unet.lora_alpha": [2]})))                             # TypeError
@example(case=(".safetensors", _peft_file({"unet.lora_alpha": 10**400})))                        # OverflowError
@example(case=(".pt", T._torch_bytes({                                                           # 1 GiB at merge
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q.lora_down.weight": torch.zeros(1).expand(2**22, 32),
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q.lora_up.weight": torch.zeros(1).expand(32, 2**22)})))
@example(case=(".safetensors", T._safetensors_of({                                              # IndexError:
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.tensor(1.0),  # shape[0]
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(32, 2)})))
@example(case=(".safetensors", T._safetensors_of({                                              # IndexError:
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q.lora_down.weight": torch.ones(2),      # flatten(1)
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q.lora_up.weight": torch.ones(32)})))
def test_lora_reader(sandbox, case):
    suffix, data = case
    T.check_lora_file(sandbox, data, suffix)


@pytest.mark.timeout(120)
def test_lora_alpha_pattern_is_not_run_as_a_regex(sandbox):
    """A pattern from the file was a regular expression: ``(.*)*x`` against a module name took forever."""
    data = _peft_file({"unet.lora_alpha": 2, "unet.alpha_pattern": {"(.*)*x": 7, "attn1.to_q": 4}})
    with sandbox.run(data, "p.safetensors") as path:
        from extensions.lora.formats import read_lora
        lora = read_lora(path, *T.lora_model())
    assert [m.alpha for m in lora.modules] == [4.0]


@pytest.mark.timeout(120)
def test_lora_key_of_a_million_dots_is_quick(sandbox):
    """Resolving a dotted key tried every prefix of it: a key of n dots took n² time."""
    data = T._safetensors_of({"." * 1_000_000: torch.ones(1)})
    with sandbox.run(data, "d.safetensors") as path:
        from extensions.lora.formats import read_lora
        lora = read_lora(path, *T.lora_model())
    assert len(lora.unknown_keys) == 1


# ------------------------------------------------------------------------------------------ styles

CSV_FIELDS = st.text(max_size=8) | st.sampled_from(("name", "prompt", "negative_prompt", "{prompt}", '"', ",",
                                                    "\n", "\r", "\x00", "\ufeff", " ", "x" * 200))


@st.composite
def styles_files(draw):
    rows = draw(st.lists(st.lists(CSV_FIELDS, max_size=5), max_size=6))
    if draw(st.booleans()):
        rows.insert(0, draw(st.permutations(["name", "prompt", "negative_prompt"])))
    if draw(st.booleans()):
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        text = buf.getvalue()
    else:
        text = "\n".join(",".join(row) for row in rows)
    encoding = draw(st.sampled_from(("utf-8", "utf-8-sig", "utf-16", "latin-1")))
    data = text.encode(encoding, "replace")
    return draw(mutated(data, max_ops=2)) if draw(st.integers(0, 3)) == 0 else data


@settings(max_examples=_n(150), **SETTINGS)
@given(data=styles_files() | st.binary(max_size=64), prompt=st.text(max_size=10), names=st.lists(CSV_FIELDS, max_size=2))
@example(data=b"name,prompt\n" + b"x" * 200_000 + b",y\n", prompt="a", names=["x"])   # field over csv's limit
def test_styles_reader(sandbox, data, prompt, names):
    T.check_styles(sandbox, data, prompt, tuple(names))


# ------------------------------------------------------------------------------------------ API images

IMAGE_SEEDS = T.image_seed_bytes()


@st.composite
def base64_images(draw):
    raw = draw(mutated(st.sampled_from(IMAGE_SEEDS), max_ops=3)) if draw(st.integers(0, 3)) else draw(st.binary(max_size=40))
    text = base64.b64encode(raw).decode()
    change = draw(st.sampled_from(("none", "prefix", "strip padding", "urlsafe", "whitespace", "junk")))
    if change == "prefix":
        text = draw(st.sampled_from(("data:image/png;base64,", "data:;base64,", "data:image/png,", "data:",
                                     "data:image/png;base64", "https://", "file:"))) + text
    elif change == "strip padding":
        text = text.rstrip("=")
    elif change == "urlsafe":
        text = text.replace("+", "-").replace("/", "_")
    elif change == "whitespace":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from((" ", "\n", "\t", "\r\n"))) + text[i:]
    elif change == "junk":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.text(max_size=3)) + text[i:]
    return text


def _png_with_short_idat() -> bytes:
    """A PNG whose IDAT says it is 1 byte long: PIL then reads pixel data as a chunk header."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 40)).save(buf, "PNG")
    png = buf.getvalue()
    at = png.find(b"IDAT") - 4
    return png[:at] + struct.pack(">I", 1) + png[at + 4:]


@settings(max_examples=_n(200), **SETTINGS)
@given(text=base64_images() | st.text(max_size=30))
@example(text=base64.b64encode(T.huge_png_header(65535, 65535)).decode())
@example(text=base64.b64encode(_png_with_short_idat()).decode())   # SyntaxError "broken PNG file" (atheris)
def test_api_image_decoder(text):
    T.check_image(text)


# ------------------------------------------------------------------------------------------ memory

def test_huge_claims_allocate_nothing():
    """Inputs whose headers claim gigabytes to terabytes, read in a fresh process: each is refused (or read)
    without the process's peak resident memory growing (before: the expanded pickles allocated 768 MiB+)."""
    code = "from tests.fuzz.targets import memory_report; memory_report()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report) == len(T.memory_cases())
    for name, result in report.items():
        assert result["outcome"] == "ok", (name, result)
        assert result["rss_growth_mib"] < 200, (name, result)


def test_api_never_runs_ghostscript_on_an_eps(monkeypatch):
    """PIL decodes EPS by running Ghostscript on the bytes (writing temporary files): the decoder skips EPS."""
    from fastapi import HTTPException
    from PIL import EpsImagePlugin

    from webui.api.routes import decode_image
    from webui.jobs.spec import Limits

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was run on a request's bytes")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "EPS")
    with pytest.raises(HTTPException) as error:
        decode_image(base64.b64encode(buf.getvalue()).decode(), "image", Limits())
    assert error.value.status_code == 422


# ------------------------------------------------------------------------------------------ the atheris harness

HARNESS_RUNS = 3000


@pytest.mark.timeout(900)
def test_fuzz_harness_for_a_fixed_budget(tmp_path):
    """``tests/fuzz/fuzz_parsers.py`` as CI runs it: a fixed number of executions of every target (coverage-guided
    by atheris where it is installed, else the harness's own mutation loop); no input may break a property."""
    from tests.fuzz.fuzz_parsers import TARGETS, _have_atheris

    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, "tests/fuzz/fuzz_parsers.py", "--target", "all", "--runs", str(HARNESS_RUNS),
                           "--timeout", "120",   # (per input: a hang, not a slow machine; pytest-timeout bounds it all)
                           "--json", str(out), "--artifacts", str(tmp_path / "artifacts")],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=880)
    print(proc.stdout[-2000:])
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(TARGETS)
    engine = "atheris" if _have_atheris() else "mutation loop"
    for target, result in results.items():
        assert result["engine"] == engine, (target, result)
        assert result["executions"] >= HARNESS_RUNS, (target, result)
        assert not result["failures"], (target, result["failures"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
