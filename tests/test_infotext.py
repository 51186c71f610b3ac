"""A1111 infotext format: exact text from build(), A1111-compatible parse(), typed parse, round trips."""
import pytest

from webui.jobs import infotext
from webui.jobs.infotext import build, parse, parse_typed

BASE = {
    "Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.0, "Seed": 1,
    "Size": "512x512", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
}
BASE_LINE = ("Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
             "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly")


def test_build_exact_txt2img():
    text = build("a cat", "blurry", {**BASE, "Version": "v1.10.1"})
    assert text == f"a cat\nNegative prompt: blurry\n{BASE_LINE}, Version: v1.10.1"


def test_build_no_negative_line_when_empty_and_none_values_skipped():
    params = {**BASE, "VAE hash": None, "VAE": None, "Clip skip": None}
    assert build("a cat", "", params) == f"a cat\n{BASE_LINE}"


def test_build_exact_img2img_inpaint_in_a1111_order():
    params = {
        "Steps": 30, "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": 7.5, "Seed": 3405691582,
        "Size": "768x512", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "VAE hash": "735e4c3a44",
        "VAE": "vae-ft-mse-840000-ema-pruned.safetensors", "Denoising strength": 0.75, "Clip skip": 2,
        "Mask blur": 4, "Inpaint area": "Only masked", "Masked area padding": 32, "Masked content": "fill",
        "Version": "v1.10.1",
    }
    assert list(params) == list(infotext.PARAM_ORDER)
    assert build("a red door", "", params) == (
        "a red door\nSteps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 3405691582, "
        "Size: 768x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
        "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.75, Clip skip: 2, Mask blur: 4, "
        "Inpaint area: Only masked, Masked area padding: 32, Masked content: fill, Version: v1.10.1"
    )


@pytest.mark.parametrize("value, written", [
    ("a: 123, b: 456", '"a: 123, b: 456"'),
    ("one, two", '"one, two"'),
    ("12:30", '"12:30"'),
    ("line1\nline2", '"line1\\nline2"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("猫, ねこ", '"猫, ねこ"'),  # JSON-quoted without \\u escapes, like A1111 (ensure_ascii=False)
    ("R-ESRGAN 4x+ Anime6B", "R-ESRGAN 4x+ Anime6B"),
    ("ünïcödé", "ünïcödé"),
])
def test_quoting(value, written):
    text = build("p", "", {**BASE, "Extra": value})
    assert text == f"p\n{BASE_LINE}, Extra: {written}"
    assert parse(text)["Extra"] == value and parse_typed(text).extra == {"Extra": value}


@pytest.mark.parametrize("value, written", [(7.0, "7"), (7.5, "7.5"), (0.75, "0.75"), (1.0, "1"), (2, "2"),
                                            (True, "True"), (-1, "-1")])
def test_number_formatting(value, written):
    assert build("p", "", {"CFG scale": value}) == f"p\nCFG scale: {written}"


def test_key_equal_to_value_is_written_bare():
    assert build("p", "", {**BASE, "Tiled Diffusion": "Tiled Diffusion"}) == f"p\n{BASE_LINE}, Tiled Diffusion"


@pytest.mark.parametrize("key", ["Bad:key", "Bad,key", "", "x", " Lead", "new\nline"])
def test_invalid_keys_refused(key):
    with pytest.raises(ValueError):
        build("p", "", {key: 1})


def test_empty_prompt_and_no_params():
    assert build("", "", BASE) == BASE_LINE
    assert build("just a prompt", "", {}) == "just a prompt"


REAL = """masterpiece, best quality, 1girl, <lora:add_detail:0.5>
(detailed background:1.2), looking at viewer
Negative prompt: (worst quality, low quality:1.4), easynegative
lowres, bad hands
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3405691582, Size: 512x768, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 15, \
Hires upscaler: R-ESRGAN 4x+ Anime6B, Lora hashes: "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef", \
TI hashes: "easynegative: c74b4e810b03", Template: "masterpiece, best quality, 1girl, {red|blue} hair", \
Negative Template: easynegative, Version: v1.6.0"""


def test_parse_real_a1111_infotext():
    d = parse(REAL)
    assert d["Prompt"] == "masterpiece, best quality, 1girl, <lora:add_detail:0.5>\n(detailed background:1.2), looking at viewer"
    assert d["Negative prompt"] == "(worst quality, low quality:1.4), easynegative\nlowres, bad hands"
    assert d["Steps"] == "28" and d["Sampler"] == "DPM++ 2M Karras" and d["CFG scale"] == "7.5"
    assert d["Size-1"] == "512" and d["Size-2"] == "768" and "Size" not in d
    assert d["Lora hashes"] == "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef"
    assert d["TI hashes"] == "easynegative: c74b4e810b03"
    assert d["Template"] == "masterpiece, best quality, 1girl, {red|blue} hair"
    assert d["Negative Template"] == "easynegative"
    assert d["Hires upscale"] == "2" and d["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert d["Clip skip"] == "2" and d["Version"] == "v1.6.0"


def test_parse_typed_real_a1111_infotext():
    t = parse_typed(REAL)
    assert (t.steps, t.sampler, t.scheduler, t.cfg_scale, t.seed) == (28, "DPM++ 2M", "Karras", 7.5, 3405691582)
    assert (t.width, t.height, t.model_hash, t.model) == (512, 768, "6ce0161689", "v1-5-pruned-emaonly")
    assert (t.denoising_strength, t.clip_skip) == (0.45, 2)
    assert t.extra == {
        "Hires upscale": "2", "Hires steps": "15", "Hires upscaler": "R-ESRGAN 4x+ Anime6B",
        "Lora hashes": "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef",
        "TI hashes": "easynegative: c74b4e810b03",
        "Template": "masterpiece, best quality, 1girl, {red|blue} hair",
        "Negative Template": "easynegative", "Version": "v1.6.0",
    }


def test_parse_old_infotext_defaults():
    text = "girl with a beret\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
    d = parse(text)
    assert d["Prompt"] == "girl with a beret" and d["Negative prompt"] == "" and d["Clip skip"] == "1"
    t = parse_typed(text)
    assert (t.sampler, t.scheduler, t.clip_skip, t.model_hash, t.model) == ("Euler a", None, 1, "45dee52b", None)
    assert t.denoising_strength is None and t.extra == {}


def test_last_line_with_fewer_than_three_pairs_is_prompt():
    text = "a photo\nstyle: oil, mood: calm"
    d = parse(text)
    assert d["Prompt"] == "a photo\nstyle: oil, mood: calm"
    assert "style" not in d and d["Clip skip"] == "1"
    assert parse_typed(text).steps is None


def test_parse_other_size_keys_split_and_hires_resize():
    d = parse("p\nSteps: 20, Seed: 1, Size: 512x512, Hires resize: 1024x1536, Seed resize from: -1x-1")
    assert (d["Hires resize-1"], d["Hires resize-2"]) == ("1024", "1536")
    assert d["Seed resize from"] == "-1x-1"  # not digits: kept whole, like A1111
    t = parse_typed("p\nSteps: 20, Seed: 1, Size: 512x512, Hires resize: 1024x1536")
    assert t.extra == {"Hires resize": "1024x1536"}


def test_parse_crlf_and_surrounding_whitespace():
    t = parse_typed("  a cat\r\nNegative prompt: dog\r\nSteps: 5, Seed: 2, Size: 64x64\r\n\r\n")
    assert (t.prompt, t.negative_prompt, t.steps, t.seed, t.width) == ("a cat", "dog", 5, 2, 64)


def test_negative_prompt_empty_after_label():
    d = parse("a\nNegative prompt: \nb\nSteps: 1, Seed: 2, CFG scale: 3")
    assert d["Prompt"] == "a" and d["Negative prompt"] == "b"


@pytest.mark.parametrize("sampler, schedule, expected", [
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),
    ("DPM++ 2M SDE Exponential", None, ("DPM++ 2M SDE", "Exponential")),
    ("Euler SGMUniform", None, ("Euler", "SGM Uniform")),
    ("DPM++ 2M", "karras", ("DPM++ 2M", "Karras")),
    ("Euler a", "Automatic", ("Euler a", "Automatic")),
    ("Euler a", None, ("Euler a", None)),
    ("DDIM", None, ("DDIM", None)),
    ("UniPC", "Align Your Steps", ("UniPC", "Align Your Steps")),
])
def test_legacy_sampler_names(sampler, schedule, expected):
    params = {"Steps": 20, "Sampler": sampler, "Schedule type": schedule, "CFG scale": 7, "Seed": 1}
    t = parse_typed(build("p", "", params))
    assert (t.sampler, t.scheduler) == expected


def test_unconvertible_value_kept_raw():
    t = parse_typed("p\nSteps: many, Seed: 1, CFG scale: high, Size: 512x512")
    assert t.steps is None and t.cfg_scale is None and t.extra == {"Steps": "many", "CFG scale": "high"}


PROMPTS = [
    ("a cat, sitting, (masterpiece:1.2)", "blurry, lowres"),
    ("time: 12:30, ratio 16:9", ""),
    ('a sign that says "hello, world"', 'no "quotes"'),
    ("line one\nline two, with comma\nline: three", "neg one\nneg two"),
    ("猫 が 好き, ünïcödé ✓ 🐱", "ぼやけた"),
    ("", ""),
]


@pytest.mark.parametrize("prompt, negative", PROMPTS)
def test_round_trip(prompt, negative):
    params = {
        "Steps": 25, "Sampler": "DPM++ 2M SDE", "Schedule type": "Karras", "CFG scale": 6.5, "Seed": 4294967295,
        "Size": "640x832", "Model hash": "e6bb9ea85b", "Model": "sd_xl_base_1.0, \"v2\"", "Denoising strength": 0.75,
        "Clip skip": 2, "Lora hashes": "a: 123, b: 456", "Note": 'he said "no"\nthen: left', "Emoji": "🐱",
    }
    t = parse_typed(build(prompt, negative, params))
    assert (t.prompt, t.negative_prompt) == (prompt, negative)
    assert (t.steps, t.sampler, t.scheduler, t.cfg_scale, t.seed) == (25, "DPM++ 2M SDE", "Karras", 6.5, 4294967295)
    assert (t.width, t.height, t.model_hash, t.model) == (640, 832, "e6bb9ea85b", 'sd_xl_base_1.0, "v2"')
    assert (t.denoising_strength, t.clip_skip) == (0.75, 2)
    assert t.extra == {"Lora hashes": "a: 123, b: 456", "Note": 'he said "no"\nthen: left', "Emoji": "🐱"}


def test_round_trip_default_clip_skip_and_integral_cfg():
    t = parse_typed(build("x", "", {**BASE, "Clip skip": None}))
    assert t.clip_skip == 1 and t.cfg_scale == 7.0 and (t.sampler, t.scheduler) == ("DPM++ 2M", "Karras")


def test_parse_dict_round_trip_of_quoted_values():
    text = build("p", "n", {**BASE, "Lora hashes": "a: 123, b: 456", "Hires upscale": 2})
    assert 'Lora hashes: "a: 123, b: 456", Hires upscale: 2' in text
    d = parse(text)
    assert d["Lora hashes"] == "a: 123, b: 456" and d["Hires upscale"] == "2"
