"""A1111 infotext: the generation-parameters text stored in a PNG `parameters` chunk.

Format (as AUTOMATIC1111's `create_infotext` writes it and `parse_generation_parameters` reads it)::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt, possibly several lines>     (only when non-empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

The parameters line is `key: value` pairs joined by ", " in the caller's order; values containing
`,` `:` a newline (or `"`) are JSON-quoted. When reading, the last line is the parameters line only
when it holds at least 3 `key: value` pairs. PIL only, no torch.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

# A1111's key names, in the order `create_infotext` emits them (extension/extra params such as
# Mask blur and Inpaint area come from `p.extra_generation_params`, after Clip skip, before Version).
PARAM_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "VAE hash", "VAE", "Denoising strength", "Clip skip", "Mask blur", "Inpaint area",
    "Masked area padding", "Masked content", "Version",
)

# A1111's scheduler table (modules/sd_schedulers.py): (name, label, aliases), in its order.
SCHEDULERS = (
    ("automatic", "Automatic", ()), ("uniform", "Uniform", ()), ("karras", "Karras", ()),
    ("exponential", "Exponential", ()), ("polyexponential", "Polyexponential", ()),
    ("sgm_uniform", "SGM Uniform", ("SGMUniform",)), ("kl_optimal", "KL Optimal", ()),
    ("align_your_steps", "Align Your Steps", ()), ("simple", "Simple", ()),
    ("normal", "Normal", ()), ("ddim", "DDIM", ()), ("beta", "Beta", ()),
)

_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # A1111's re_param
_KEY_RE = re.compile(r"\w[\w \-/]+")
_KEY_RUN = re.compile(r"[\w \-/]+")   # a run of the characters a key is made of
_WORD = re.compile(r"\w")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_NEG = "Negative prompt:"


def quote(text: str) -> str:
    """JSON-quote a value that would otherwise break the parameters line (A1111's `quote`, plus `"`)."""
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def format_value(value: object) -> str:
    """str() as A1111 writes it, with integral floats written as ints (the UI's CFG 7, not 7.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build(prompt: str, negative_prompt: str, params: dict[str, object]) -> str:
    """A1111 infotext from prompts and an ordered dict of parameters (None values skipped)."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"infotext key {key!r} is not a valid A1111 parameter name")
        parts.append(key if key == value else f"{key}: {quote(format_value(value))}")
    negative = f"\n{_NEG} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(parts)}".strip()


def hash_entry(name: str, short_hash: str) -> str:
    """One ``name: hash`` entry of A1111's ``TI hashes`` / ``Lora hashes`` (``:`` and ``,`` dropped from the name)."""
    return f"{name.replace(':', '').replace(',', '')}: {short_hash}"


def with_params(text: str, extra: dict[str, object]) -> str:
    """``text`` with ``extra`` parameters added before ``Version`` (where A1111 puts a script's or an extension's
    ``extra_generation_params``); empty values are left out."""
    prompt, negative, pairs = split(text)
    params: dict[str, object] = {}
    version = None
    for key, value in pairs:
        if key == "Version":
            version = value
        else:
            params[key] = value
    params.update({k: v for k, v in extra.items() if v not in (None, "")})
    if version is not None:
        params["Version"] = version
    return build(prompt, negative, params)


def insert_params(text: str, params: dict[str, object]) -> str:
    """``text`` with ``params`` written into its last line before ``, Version: `` (or appended), as they are --
    without reading the text first (SD upscale's tiles: the runs' texts as they came)."""
    added = ", ".join(f"{k}: {quote(format_value(v))}" for k, v in params.items())
    head, sep, tail = text.rpartition(", Version: ")
    if sep:
        return f"{head}, {added}{sep}{tail}"
    return f"{text}, {added}" if text else added


def _params(line: str) -> list[tuple[str, str]]:
    """``_PARAM_RE.findall(line)``, in linear time.

    ``findall`` tries the regex at every position, and each try scans the run of key characters ahead of
    it, so a long line with few colons takes quadratic time (hours for a 1 MB PNG text chunk). A key can
    only end right before a ':' that ends a run of key characters, and a try succeeds exactly there, from
    the run's first word character on: so only those places are tried.
    """
    found, pos = [], 0
    while True:
        run = _KEY_RUN.search(line, pos)
        if run is None:
            return found
        end = run.end()
        if end < len(line) and line[end] == ":":
            first = _WORD.search(line, run.start(), end)
            if first is not None and end - first.start() >= 2:
                m = _PARAM_RE.match(line, first.start())
                found.append(m.groups())
                pos = m.end()
                continue
        pos = end


def split(text: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(prompt, negative prompt, the parameters as (key, value) pairs, values unquoted). The last line holds the
    parameters only when it has at least 3 pairs (A1111's rule); otherwise it is prompt text."""
    *lines, last = text.replace("\r\n", "\n").strip().split("\n")
    pairs = _params(last)
    if len(pairs) < 3:
        lines.append(last)
        last, pairs = "", []
    prompt = negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEG):
            in_negative = True
            line = line[len(_NEG):].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    return prompt, negative, [(k, unquote(v)) for k, v in pairs]


def parse(text: str) -> dict[str, str]:
    """A1111's `parse_generation_parameters` core: string values, `Size: WxH` -> Size-1 / Size-2.

    Keys: "Prompt", "Negative prompt", every parameter; "Clip skip" defaults to "1". The paste-UI
    defaults A1111 adds afterwards (Hires*, Mask mode, RNG, Schedule type...) are not added.
    """
    prompt, negative, pairs = split(text)
    res = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in pairs:
        m = _SIZE_RE.match(value)
        if m:
            res[f"{key}-1"], res[f"{key}-2"] = m.group(1), m.group(2)
        else:
            res[key] = value
    res.setdefault("Clip skip", "1")
    return res


@dataclass
class Infotext:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model_hash: str | None = None
    model: str | None = None
    denoising_strength: float | None = None
    clip_skip: int = 1
    refiner: str | None = None                 # "name [hash]"
    refiner_switch_at: float | None = None
    extra: dict[str, str] = field(default_factory=dict)  # every other key, raw string (unsplit)


_TYPED = {
    "Steps": ("steps", int), "Sampler": ("sampler", str), "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float), "Seed": ("seed", int), "Model hash": ("model_hash", str),
    "Model": ("model", str), "Denoising strength": ("denoising_strength", float),
    "Clip skip": ("clip_skip", int), "Refiner": ("refiner", str), "Refiner switch at": ("refiner_switch_at", float),
}


def scheduler_label(name: str | None) -> str | None:
    """A1111 scheduler name/label/alias -> label ("karras" -> "Karras"); unknown names unchanged."""
    for sname, label, aliases in SCHEDULERS:
        if name in (sname, label, *aliases):
            return label
    return name


def split_legacy_sampler(sampler: str, scheduler: str | None = None) -> tuple[str, str | None]:
    """"DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"), as A1111's get_sampler_and_scheduler strips it."""
    found = scheduler_label(scheduler)
    for sname, label, aliases in SCHEDULERS:
        for option in (label, sname, *aliases):
            if sampler.endswith(" " + option):
                found, sampler = label, sampler[: -(len(option) + 1)]
                break
    return sampler, found


def parse_typed(text: str) -> Infotext:
    """Parse into typed fields. A value that does not convert stays (raw) in `extra`."""
    prompt, negative, pairs = split(text)
    info = Infotext(prompt=prompt, negative_prompt=negative)
    for key, value in dict(pairs).items():
        if key == "Size" and (m := _SIZE_RE.match(value)):
            try:
                info.width, info.height = int(m.group(1)), int(m.group(2))
                continue
            except ValueError:   # more digits than int() converts (4300): stays raw in extra, as other keys
                pass
        if key in _TYPED:
            attr, convert = _TYPED[key]
            try:
                setattr(info, attr, convert(value))
                continue
            except ValueError:
                pass
        info.extra[key] = value
    if info.sampler is not None:
        info.sampler, info.scheduler = split_legacy_sampler(info.sampler, info.scheduler)
    else:
        info.scheduler = scheduler_label(info.scheduler)
    return info
