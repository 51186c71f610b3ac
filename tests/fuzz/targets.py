"""Fuzz targets: the parsers of untrusted input and the property each must keep.

Shared by ``tests/test_fuzz.py`` (hypothesis, structured inputs) and ``tests/fuzz/fuzz_parsers.py`` (atheris,
or a plain mutation loop, on bytes). Each ``check_*`` feeds one input to one parser and checks that

- it returns normally (with a result of the documented shape), or raises the parser's own error for bad
  input, and nothing else (no IndexError, KeyError, struct.error, UnicodeDecodeError, RecursionError, ...);
- nothing is created: the call runs in a sandbox folder (also the current directory) that must hold only
  the input file afterwards;
- memory stays bounded: tensors read from a file are views of it or copies of its data, never expansions of
  a few bytes (``memory_report`` runs the inputs that claim huge sizes in a fresh process and measures its
  peak resident memory);
- time stays bounded: the callers bound each input's time (pytest-timeout, libFuzzer ``-timeout``).

The parsers and what each may raise:

==========================  =========================================================  ==========================
target                      functions                                                  may raise
==========================  =========================================================  ==========================
prompt                      emphasis.parse, schedule.schedule, composable.subprompts,   nothing (LoRA multipliers:
                            composable.extra_network_tags, PromptChunker.split,         ValueError, which the
                            extensions.lora.multipliers                                 extension reports)
infotext                    infotext.parse, infotext.parse_typed                       nothing
model                       files.read_state_dict / read_metadata, read_checkpoint      CheckpointError
embedding                   embeddings.load_embedding                                  EmbeddingError,
                                                                                       CheckpointError
lora                        extensions.lora.formats.read_lora (+ every module's delta)  ValueError (CheckpointError
                                                                                       is one)
styles                      styles.StyleDatabase(...).styles / .apply                  apply: ValueError (unknown
                                                                                       style); read errors go to
                                                                                       ``.error``
image                       api.routes.decode_image, then saving.read_infotext and      HTTPException 413 / 422
                            infotext.parse (the ``png-info`` route)
==========================  =========================================================  ==========================
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import struct
import tempfile
import zlib
from pathlib import Path

import torch
from PIL import Image, PngImagePlugin

from webui.engine import files
from webui.engine.prompts import composable, embeddings, emphasis, schedule, styles
from webui.engine.prompts.chunks import CHUNK, EMPHASIS_MODES, PromptChunker
from webui.jobs import infotext, saving

TARGETS = ("prompt", "infotext", "model", "embedding", "lora", "styles", "image")


# ------------------------------------------------------------------------------------------ sandbox

class Sandbox:
    """A folder that is the current directory while a parser runs; afterwards it must hold only the input."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self._tmp = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fuzz-sandbox-")
            folder = self._tmp.name
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    @contextlib.contextmanager
    def run(self, data: bytes | None = None, name: str = "input"):
        """Write ``data`` (if given) as ``name``, chdir into the sandbox, yield the file's path; then check
        that nothing else appeared and remove the file (a new inode each time: earlier memory maps stay
        valid)."""
        for leftover in self.folder.iterdir():
            _remove(leftover)
        path = self.folder / name
        if data is not None:
            path.write_bytes(data)
        before = _listing(self.folder)
        old = os.getcwd()
        os.chdir(self.folder)
        try:
            yield path
        finally:
            os.chdir(old)
            after = _listing(self.folder)
            for leftover in self.folder.iterdir():
                _remove(leftover)
        created = sorted(after - before)
        assert not created, f"the parser created {created}"


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink()


# ------------------------------------------------------------------------------------------ prompt

def _fake_tokenize(texts: list[str]) -> list[list[int]]:
    """One token per character (a comma is token 3), enough to drive the chunker's rules."""
    return [[3 if c == "," else 10 + ord(c) % 1000 for c in text] for text in texts]


def check_prompt(text: str, steps: int = 20, old_scheduling: bool = False,
                 first_pass_steps: int | None = None) -> None:
    from extensions.lora import multipliers

    pieces = emphasis.parse(text)
    assert pieces and all(isinstance(t, str) and isinstance(w, float) for t, w in pieces), pieces

    entries = schedule.schedule(text, steps, old_scheduling=old_scheduling, first_pass_steps=first_pass_steps)
    ends = [end for end, _ in entries]
    assert ends == sorted(set(ends)) and ends[-1] == steps, ends
    assert all(isinstance(t, str) for _, t in entries)

    parts = composable.subprompts(text)
    assert parts and all(isinstance(t, str) and isinstance(w, float) for t, w in parts), parts

    rest, tags = composable.extra_network_tags(text)
    assert isinstance(rest, str) and len(rest) + sum(len(tag.text) for tag in tags) == len(text)
    for tag in tags:
        try:
            te, unet = multipliers(tag.args[1:])
        except ValueError:
            continue                                  # "the weights must be numbers; LoRA skipped"
        assert isinstance(te, float) and isinstance(unet, float)

    for mode in EMPHASIS_MODES:
        chunked = PromptChunker(_fake_tokenize, 1, 2, 3, emphasis=mode).split(text)
        assert chunked.chunks and all(len(c.tokens) == CHUNK + 2 == len(c.weights) for c in chunked.chunks)


# ------------------------------------------------------------------------------------------ infotext

def check_infotext(text: str) -> None:
    params = infotext.parse(text)
    assert isinstance(params["Prompt"], str) and isinstance(params["Negative prompt"], str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
    info = infotext.parse_typed(text)
    for name, kind in (("steps", int), ("seed", int), ("width", int), ("height", int), ("clip_skip", int),
                       ("cfg_scale", float), ("denoising_strength", float), ("refiner_switch_at", float),
                       ("sampler", str), ("scheduler", str), ("model", str), ("model_hash", str)):
        value = getattr(info, name)
        assert value is None or isinstance(value, kind), (name, value)
    assert all(isinstance(v, str) for v in info.extra.values())


# ------------------------------------------------------------------------------------------ model files

def _checked_tensors(tensors, size: int, mapped: bool) -> None:
    assert isinstance(tensors, dict)
    for key, tensor in tensors.items():
        assert isinstance(key, str) and isinstance(tensor, torch.Tensor), key
        nbytes = tensor.numel() * tensor.element_size()
        # memory bounded: a safetensors tensor is a view of the file; a pickled one is no bigger than its data
        assert nbytes <= (size if mapped else tensor.untyped_storage().nbytes()), (key, tensor.shape)


def check_model_file(sandbox: Sandbox, data: bytes, suffix: str) -> None:
    """``read_state_dict``, ``read_metadata`` and ``read_checkpoint`` on one file: CheckpointError or a result."""
    from webui.engine.checkpoint import read_checkpoint

    with sandbox.run(data, "model" + suffix) as path:
        for read in (files.read_state_dict, read_checkpoint):
            try:
                _checked_tensors(read(path), len(data), suffix == ".safetensors")
            except files.CheckpointError:
                pass
        try:
            metadata = files.read_metadata(path)
            assert isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        except files.CheckpointError:
            pass


def check_embedding_file(sandbox: Sandbox, data: bytes, suffix: str) -> None:
    with sandbox.run(data, "emb" + suffix) as path:
        try:
            emb = embeddings.load_embedding(path)
        except (embeddings.EmbeddingError, files.CheckpointError):
            return
        vectors = emb.vectors
        assert vectors.dtype == torch.float32 and vectors.ndim == 2 and vectors.shape[0] >= 1, vectors.shape
        assert emb.count == vectors.shape[0] and isinstance(emb.width, int) and isinstance(emb.describe(), str)
        for part in emb.parts.values():
            assert part.dtype == torch.float32 and part.ndim == 2 and part.shape[0] == emb.count
        assert emb.fits({"": 768}) in (True, False) and emb.fits({"clip_l": 768, "clip_g": 1280}) in (True, False)


_LORA_MODEL = None


def lora_model():
    """A tiny UNet and CLIP text model (``tests.tiny_models`` sizes), built once: what LoRA keys resolve to."""
    global _LORA_MODEL
    if _LORA_MODEL is None:
        import transformers

        from tests.tiny_models import clip_config, unet_config
        from webui.engine.unet import UNetModel

        torch.manual_seed(0)
        _LORA_MODEL = (UNetModel(unet_config()).eval(), transformers.CLIPTextModel(clip_config()).eval())
    return _LORA_MODEL


def check_lora_file(sandbox: Sandbox, data: bytes, suffix: str) -> None:
    from extensions.lora.formats import read_lora

    unet, text = lora_model()
    with sandbox.run(data, "lora" + suffix) as path:
        try:
            lora = read_lora(path, unet, text)
        except ValueError:                       # CheckpointError, or what the file says does not fit
            return
        assert all(isinstance(k, str) for k in lora.unknown_keys + lora.mismatched)
        assert isinstance(lora.trained_for.label(), str)
        lora.trained_for.mismatch(64, [64])
        for module in lora.modules:              # the ones kept must merge: a delta of the weight's shape
            weight = (unet if module.target == "unet" else text).get_submodule(module.module).weight
            with torch.no_grad():
                delta = module.delta(weight)
            assert delta.shape == weight.shape and delta.dtype == torch.float32


# ------------------------------------------------------------------------------------------ styles

def check_styles(sandbox: Sandbox, data: bytes, prompt: str = "a cat", extra_names: tuple[str, ...] = ()) -> None:
    with sandbox.run(data, "styles.csv") as path:
        db = styles.StyleDatabase(path)
        found = db.styles
        assert db.error is None or isinstance(db.error, str)
        assert all(isinstance(n, str) and isinstance(s, styles.Style) for n, s in found.items())
        out = db.apply(prompt, "", list(found)[:3])
        assert all(isinstance(t, str) for t in out)
        for name in extra_names:
            try:
                db.apply(prompt, "", [name])
            except ValueError:
                assert name not in found


# ------------------------------------------------------------------------------------------ API image

def check_image(data: str) -> None:
    """The ``png-info`` route's path: ``decode_image`` (413/422 for bad input), the infotext, its parse."""
    from fastapi import HTTPException

    from webui.api.routes import decode_image
    from webui.jobs.spec import Limits

    try:
        image = decode_image(data, "image", Limits())
    except HTTPException as exc:
        assert exc.status_code in (413, 422), exc.status_code
        return
    assert isinstance(image, Image.Image) and image.width * image.height <= Limits().max_image_pixels
    text = saving.read_infotext(image)
    assert text is None or isinstance(text, str)
    if text:
        check_infotext(text)


# ------------------------------------------------------------------------------------------ bytes -> input

# Pieces of the prompt grammar, chosen by the bytes of a structured input.
PROMPT_TOKENS = (
    "(", ")", "[", "]", ":", "|", "\\", "<", ">", ",", " ", "\n", "a", "cat", "AND", " AND ", "BREAK",
    " BREAK ", "<lora:", "<hypernet:", "te=", "unet=", "=", "0", "1", "5", "20", "0.5", ".5", "1.", "-", "+",
    "e", "1e999", "-1e999", "1.0e999", "nan", "inf", "{prompt}", "\t", "é", "\u0661", "\x00", "\U0001f642",
    ":1.3)", "[a:b:10]", "[a|b]", "\\(", "\\[",
)
INFOTEXT_TOKENS = (
    "Steps", "Sampler", "Size", "Seed", "CFG scale", "Clip skip", "Model", "Schedule type", "Refiner",
    "Refiner switch at", "Denoising strength", "Negative prompt:", ": ", ":", ", ", ",", "\n", "\r\n", " ",
    '"', '\\"', "\\", "x", "512", "512x768", "-1", "7.5", "nan", "1e999", "DPM++ 2M Karras", "karras",
    "\u0661", "a", "_", "-", "/", "1" * 5000,
)


def tokens_to_text(data: bytes, tokens: tuple[str, ...]) -> str:
    return "".join(tokens[b % len(tokens)] for b in data)


def bytes_to_text(data: bytes, tokens: tuple[str, ...]) -> str:
    """First byte odd: grammar pieces chosen by the other bytes; even: the other bytes as UTF-8."""
    if data[:1] and data[0] & 1:
        return tokens_to_text(data[1:], tokens)
    return data[1:].decode("utf-8", "replace")


def safetensors_bytes(header, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def run_bytes(target: str, data: bytes, sandbox: Sandbox) -> None:
    """One byte-string input for ``target`` (the atheris / mutation-loop form)."""
    mode, rest = (data[0], data[1:]) if data else (0, b"")
    if target == "prompt":
        steps = rest[0] % 152 if rest else 20
        first_pass = (rest[1] % 60 if rest[1:2] and mode & 4 else None)
        check_prompt(bytes_to_text(rest[2:], PROMPT_TOKENS), steps, bool(mode & 2), first_pass)
    elif target == "infotext":
        check_infotext(bytes_to_text(data, INFOTEXT_TOKENS))
    elif target in ("model", "embedding", "lora"):
        suffix = (".safetensors", ".pt", ".ckpt", ".safetensors")[mode % 4]
        if mode & 4 and suffix == ".safetensors":   # the header as JSON text: the length field made to fit
            header, _, payload = rest.partition(b"\x00\x00\x00\x00")
            rest = safetensors_bytes(header, payload)
        check = {"model": check_model_file, "embedding": check_embedding_file, "lora": check_lora_file}[target]
        check(sandbox, rest, suffix)
    elif target == "styles":
        check_styles(sandbox, rest, extra_names=("a", "", "name"))
    elif target == "image":
        if mode % 3 == 0:
            text = base64.b64encode(rest).decode()
        elif mode % 3 == 1:
            text = "data:image/png;base64," + base64.b64encode(rest).decode()
        else:
            text = rest.decode("latin-1")
        check_image(text)
    else:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")


# ------------------------------------------------------------------------------------------ seeds

def _torch_bytes(obj, zip_format: bool = True) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def _safetensors_of(tensors: dict, metadata: dict | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata)


class _Mkdir:
    """Pickles as ``os.mkdir("pwned")``: if an unpickler ever ran it, the sandbox check would see the folder."""

    def __reduce__(self):
        return (os.mkdir, ("pwned",))


def image_seed_bytes() -> list[bytes]:
    out = []
    rgb = Image.new("RGB", (8, 6), (200, 30, 40))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Size: 8x6, Seed: 1")
    info.add_itxt("comment", "x" * 50, zip=True)
    for fmt, kwargs in (("PNG", {"pnginfo": info}), ("PNG", {}), ("JPEG", {"quality": 50}), ("GIF", {}),
                        ("BMP", {}), ("WEBP", {}), ("TIFF", {}), ("PPM", {}), ("ICO", {})):
        buf = io.BytesIO()
        rgb.save(buf, fmt, **kwargs)
        out.append(buf.getvalue())
    for value in (b"UNICODE\0" + "a cat, Steps: 5".encode("utf-16-be"), b"ASCII\0\0\0Steps: 1, Seed: 2, Size: 8x6",
                  "plain text", 7, (1, 2)):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = value
        buf = io.BytesIO()
        try:
            rgb.save(buf, "JPEG", exif=exif)
        except Exception:  # a value PIL cannot write: not a seed
            continue
        out.append(buf.getvalue())
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4)).save(buf, "PNG")
    out.append(buf.getvalue())
    return out


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (with one tiny IDAT): refused from the header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def lora_seed_tensors() -> list[tuple[dict, dict | None]]:
    """Valid LoRA files of each format for ``lora_model()``: (tensors, metadata)."""
    g = torch.Generator().manual_seed(0)
    r = 2
    q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q"      # Linear (32, 32)
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"   # Linear (32, 64)
    conv = "lora_unet_input_blocks_1_0_in_layers_2"                      # Conv (32, 32, 3, 3)
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"          # Linear (64, 64)
    kohya = {f"{q}.lora_down.weight": torch.randn(r, 32, generator=g), f"{q}.lora_up.weight": torch.randn(32, r, generator=g),
             f"{q}.alpha": torch.tensor(1.0),
             f"{k}.lora_down.weight": torch.randn(r, 64, generator=g), f"{k}.lora_up.weight": torch.randn(32, r, generator=g),
             f"{conv}.lora_down.weight": torch.randn(r, 32, 3, 3, generator=g),
             f"{conv}.lora_up.weight": torch.randn(32, r, 1, 1, generator=g),
             f"{te}.lora_down.weight": torch.randn(r, 64, generator=g), f"{te}.lora_up.weight": torch.randn(64, r, generator=g)}
    loha = {f"{q}.hada_w1_a": torch.randn(32, r, generator=g), f"{q}.hada_w1_b": torch.randn(r, 32, generator=g),
            f"{q}.hada_w2_a": torch.randn(32, r, generator=g), f"{q}.hada_w2_b": torch.randn(r, 32, generator=g),
            f"{q}.alpha": torch.tensor(1.0)}
    lokr = {f"{q}.lokr_w1": torch.randn(4, 4, generator=g), f"{q}.lokr_w2_a": torch.randn(8, r, generator=g),
            f"{q}.lokr_w2_b": torch.randn(r, 8, generator=g)}
    full = {f"{q}.diff": torch.randn(32, 32, generator=g)}
    peft_name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    peft = {f"{peft_name}.lora_A.weight": torch.randn(r, 32, generator=g),
            f"{peft_name}.lora_B.weight": torch.randn(32, r, generator=g)}
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": r, "unet.lora_alpha": 2,
                                                 "unet.alpha_pattern": {"attn1.to_q": 4}, "unet.use_rslora": False}),
            "ss_base_model_version": "sd_v1"}
    return [(kohya, {"ss_output_name": "x"}), (loha, None), (lokr, None), (full, None), (peft, meta)]


def seeds(target: str) -> list[bytes]:
    """Valid (and a few hostile) inputs of ``target`` in the byte form of ``run_bytes``."""
    if target == "prompt":
        texts = ["a (cat:1.3) [dog] BREAK <lora:x:0.8> AND b :1.2", "[a:b:10] [c|d|] ((x)) \\(y\\)",
                 "[[a:b:0.5]:c:5] (a:b) [a:b:c:d] <lora:n:te=0.5:unet=1>", "[" * 150 + "a", "(a:1e999) [a:b:1e999]"]
        return [bytes([0, 20, 10]) + t.encode() for t in texts] + [bytes([7, 30, 12]) + bytes(range(0, 200, 3))]
    if target == "infotext":
        texts = ["a cat\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, "
                 'Size: 512x768, Model hash: abc, Lora hashes: "x: 1, y: 2", Refiner switch at: 0.8',
                 "Steps: x, Size: 1x, Seed: 1e3, Clip skip: two", "p\r\nNegative prompt:\r\nA: 1, B: 2, C: 3"]
        return [b"\x00" + t.encode() for t in texts] + [b"\x01" + bytes(range(60))]
    if target == "model":
        tiny = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3),
                "first_stage_model.decoder.conv_in.weight": torch.ones(2, 2, dtype=torch.float16),
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(3, 2)}
        header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"k": "v"}}
        return [b"\x00" + _safetensors_of(tiny, {"format": "pt"}),
                b"\x04" + json.dumps(header).encode() + b"\x00\x00\x00\x00" + b"\x01" * 8,
                b"\x01" + _torch_bytes(tiny), b"\x02" + _torch_bytes({"state_dict": tiny}, zip_format=False),
                b"\x01" + pickle.dumps({"a": _Mkdir()}), b"\x01" + _torch_bytes({"x": [1, "a", (2.0, None)]})]
    if target == "embedding":
        g = torch.Generator().manual_seed(0)
        vec = torch.randn(2, 8, generator=g)
        return [b"\x00" + _safetensors_of({"emb_params": vec}),
                b"\x00" + _safetensors_of({"clip_l": vec, "clip_g": torch.randn(2, 12, generator=g)}),
                b"\x01" + _torch_bytes({"string_to_param": {"*": vec}, "step": 5, "sd_checkpoint": "abc",
                                        "sd_checkpoint_name": "m"}),
                b"\x01" + _torch_bytes({"<tok>": vec[0]}, zip_format=False), b"\x01" + pickle.dumps(_Mkdir())]
    if target == "lora":
        out = [b"\x00" + _safetensors_of(t, m) for t, m in lora_seed_tensors()]
        return out + [b"\x01" + _torch_bytes(lora_seed_tensors()[0][0])]
    if target == "styles":
        return [b"\x00" + t.encode("utf-8") for t in (
            "name,prompt,negative_prompt\nA,\"{prompt}, x\",bad\nB, y ,\n",
            '\ufeffname,prompt,negative_prompt,description\n"q,""r",1,2,3,4\n,,\nC\n',
            "prompt,name\nx\x00,y\n")] + [b"\x00" + b"name,prompt\n\xff\xfe,1\n"]
    if target == "image":
        out = [b"\x00" + raw for raw in image_seed_bytes()]
        return out + [b"\x01" + huge_png_header(5000, 5000), b"\x02iVBORw0KGgo=", b"\x02data:,x"]
    raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")


# ------------------------------------------------------------------------------------------ memory

def memory_cases() -> list[tuple[str, str, bytes]]:
    """(name, target, input for ``run_bytes``) whose headers claim far more memory than the input holds."""
    huge = {"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4 * 2**40]}}
    empty_huge = {"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}
    expanded = torch.zeros(1).expand(2**18, 1024)          # 1 GiB as float32 from 4 bytes
    lora_expanded = {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q.lora_down.weight":
                     torch.zeros(1).expand(2**22, 32),
                     "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q.lora_up.weight":
                     torch.zeros(1).expand(32, 2**22)}
    legacy = bytearray(_torch_bytes({"w": torch.zeros(4)}, zip_format=False))
    return [
        ("safetensors tensor of 4 TiB", "model", b"\x00" + safetensors_bytes(huge, b"\0" * 16)),
        ("safetensors header length 2**63", "model", b"\x00" + safetensors_bytes({}, length=2**63)),
        ("safetensors header length 99 MiB, file 100 bytes", "model",
         b"\x00" + safetensors_bytes(b"{" + b" " * 80 + b"}", length=99 * 2**20)),
        ("safetensors empty tensor of 2**124 elements", "model", b"\x00" + safetensors_bytes(empty_huge)),
        ("safetensors 100k duplicate keys", "model", b"\x00" + safetensors_bytes(
            b"{" + b",".join(b'"k%d":{}' % (i % 99_999) for i in range(100_000)) + b"}")),
        ("pickle: 1 GiB expanded from 4 bytes", "model", b"\x01" + _torch_bytes({"w": expanded})),
        ("legacy pickle: 1 GiB expanded", "model", b"\x01" + _torch_bytes({"w": expanded}, zip_format=False)),
        ("legacy pickle claiming a 2 GiB storage", "model", b"\x01" + _legacy_claim(legacy, 2**29)),
        ("embedding: 1 GiB expanded from 4 bytes", "embedding", b"\x01" + _torch_bytes({"emb_params": expanded})),
        ("LoRA: 512 MiB factors expanded", "lora", b"\x01" + _torch_bytes(lora_expanded)),
        ("PNG claiming 65535 x 65535", "image", b"\x00" + huge_png_header(65535, 65535)),
        ("PNG claiming 4097 x 4096", "image", b"\x00" + huge_png_header(4097, 4096)),
    ]


def _legacy_claim(data: bytearray, numel: int) -> bytes:
    """A legacy (non-zip) torch file whose storage record claims ``numel`` elements (it holds 4)."""
    # The storage's persistent id is ('storage', FloatStorage, '0', 'cpu', 4): its numel is pickled as BININT1 4
    # right after the location string (and its memo opcode). Patch that to a BININT of ``numel``.
    at = data.find(b"cpu") + 3
    at += {b"q": 2, b"\x94": 1}.get(bytes(data[at:at + 1]), 0)
    assert data[at:at + 2] == b"K\x04", "unexpected legacy torch.save layout"
    return bytes(data[:at]) + b"J" + struct.pack("<i", numel) + bytes(data[at + 2:])


def memory_report() -> dict:
    """Run ``memory_cases`` here and return {name: (outcome, peak RSS growth in MiB)}; meant for a fresh process
    (``python -c "from tests.fuzz.targets import memory_report; memory_report()"`` prints it as JSON)."""
    import resource
    import time

    sandbox = Sandbox()
    for target in ("lora", "image"):          # import and build what the cases need before measuring
        run_bytes(target, seeds(target)[0], sandbox)
    report = {}
    for name, target, data in memory_cases():
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            run_bytes(target, data, sandbox)
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, the test decides
            outcome = f"{type(exc).__name__}: {exc}"[:300]
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        report[name] = {"outcome": outcome, "rss_growth_mib": round(grown, 1),
                        "seconds": round(time.perf_counter() - start, 3)}
    sandbox.close()
    print(json.dumps(report))
    return report
