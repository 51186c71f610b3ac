"""CLIP tokenizer (offline vocabulary in clip_vocab/) and the CLIPTextModel text encoder.

Tokenization equals open_clip's ``SimpleTokenizer`` (OpenAI CLIP): ``clean_text`` reproduces its
cleaning (ftfy.fix_text, html.unescape twice, whitespace collapse, lowercase) without depending on
ftfy; only ftfy's mojibake repair ("cafÃ©" -> "café") is left out.
"""
from __future__ import annotations

import gzip
import html
import re
import unicodedata
from html.entities import html5
from pathlib import Path
from types import MappingProxyType

import torch
import transformers

VOCAB_FILE = Path(__file__).with_name("clip_vocab") / "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77  # BOS + 75 tokens + EOS
CHUNK_TOKENS = CONTEXT_LENGTH - 2


def _byte_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for bytes 0..255, in vocab order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return [chr(b) for b in bs] + [chr(256 + n) for n in range(len(extra))]


def load_tokenizer() -> transformers.CLIPTokenizer:
    """Build the SD1 CLIP tokenizer (49408 ids, BOS 49406, EOS 49407 = pad) from the shipped vocab."""
    with gzip.open(VOCAB_FILE, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    chars = _byte_unicode()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return transformers.CLIPTokenizer(
        vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=CONTEXT_LENGTH
    )


# ftfy.fix_text's character fixes, in its order: C1 controls as windows-1252, Latin ligatures,
# half/full-width forms, curly quotes; then terminal escapes and control characters are removed.
def _char_fixes() -> dict[int, str]:
    table = {c: bytes([c]).decode("cp1252", errors="ignore") or chr(c) for c in range(0x80, 0xA0)}
    ligatures = "Ĳ IJ ĳ ij ŉ ʼn Ǳ DZ ǲ Dz ǳ dz Ǆ DŽ ǅ Dž ǆ dž Ǉ LJ ǈ Lj ǉ lj Ǌ NJ ǋ Nj ǌ nj ﬀ ff ﬁ fi ﬂ fl ﬃ ffi ﬄ ffl ﬅ ſt ﬆ st"
    table |= {ord(k): v for k, v in zip(ligatures.split()[::2], ligatures.split()[1::2])}
    width = {0x3000: " "} | {c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFF01, 0xFFF0)}
    quotes = {c: "'" for c in [0x2BC, *range(0x2018, 0x201C)]} | {c: '"' for c in range(0x201C, 0x2020)}

    def fix(ch: str) -> str:
        for step in (table, width, quotes):
            ch = "".join(step.get(ord(x), x) for x in ch)
        return ch

    keys = set(table) | set(width) | set(quotes)
    return {c: fix(chr(c)) for c in keys if fix(chr(c)) != chr(c)}


_FIXES = MappingProxyType(_char_fixes())
_CONTROLS = MappingProxyType(dict.fromkeys([*range(0x09), 0x0B, *range(0x0E, 0x20), 0x7F,
                                            *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)]))
_ANSI = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")


def _entity(m: re.Match) -> str:  # ftfy.fixes.unescape_html for one entity
    s, name = m.group(0), m.group(0)[1:]
    if name in html5:
        return html5[name]
    if name.startswith("#"):
        return s if ";" in (u := html.unescape(s)) else u
    if name == name.upper() and name.lower() in html5 and html.unescape(s) == s:
        return html5[name.lower()].upper()
    return s


def clean_text(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy.fix_text (no mojibake repair), html.unescape x2, whitespace, lower."""
    out, unescape = [], True
    for seg in re.findall(r"[^\n]*\n|[^\n]+", text):  # ftfy fixes line by line; '<' turns unescaping off
        unescape = unescape and "<" not in seg
        while True:
            prev = seg
            seg = _ENTITY.sub(_entity, seg) if unescape else seg
            seg = _ANSI.sub("", seg.translate(_FIXES)).translate(_CONTROLS)
            seg = unicodedata.normalize("NFC", seg)
            if seg == prev:
                break
        out.append(seg)
    return " ".join(html.unescape(html.unescape("".join(out))).split()).lower()


class TextEncoder:
    """A prompt encoder over one transformers CLIP text model, as its family uses it (``spec``, a
    ``families.TextSpec``; None: SD 1.x's CLIP-L -- last layer, EOS padding, no pooled output).

    What the UNet gets (``spec.layer``): ``"last"`` -- the last hidden state after the final norm, or with
    clip skip n the n-th hidden state from the end through the final norm (SD 1.x); ``"penultimate_norm"``
    -- the penultimate layer's output through the final norm (SD 2.x); ``"penultimate"`` -- the
    penultimate layer's output as is (SDXL). Clip skip applies to ``"last"`` encoders only (as A1111).
    After the first end-of-text token a row is filled with ``spec.pad`` when it is set (the OpenCLIP models:
    0, as open_clip's tokenizer and A1111 pad); ``spec.pooled``: the projected pooled output is returned too.
    """

    def __init__(self, model, tokenizer: transformers.CLIPTokenizer, spec=None, device: torch.device | None = None):
        """``device``: where the token ids go (default: the model's; given when the model moves between calls,
        ``--medvram`` / ``--lowvram``)."""
        self.model, self.tokenizer, self.spec, self.device = model, tokenizer, spec, device
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id  # SD1: EOS
        self.comma_id = tokenizer.get_vocab().get(",</w>")
        self.layer = "last" if spec is None else spec.layer
        self.fill_id = None if spec is None else spec.pad
        self.name = "clip_l" if spec is None else spec.name

    def tokenize(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt, without BOS/EOS and untruncated."""
        if not prompts:
            return []
        texts = [clean_text(p) for p in prompts]
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenize([prompt])[0])

    def pad_ids(self, ids: list[int]) -> list[int]:
        """BOS + ids (at most 75) + EOS, padded to 77 with the pad id."""
        ids = [self.bos_id, *ids[:CHUNK_TOKENS], self.eos_id]
        return ids + [self.pad_id] * (CONTEXT_LENGTH - len(ids))

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def pooled(self) -> bool:
        return self.spec is not None and self.spec.pooled

    @property
    def _text_model(self):
        return getattr(self.model, "text_model", self.model)

    def _input_ids(self, ids: list[list[int]]) -> torch.Tensor:
        rows = [list(row) for row in ids]
        if self.fill_id is not None:
            for row in rows:
                if self.eos_id in row:
                    end = row.index(self.eos_id) + 1
                    row[end:] = [self.fill_id] * (len(row) - end)
        return torch.tensor(rows, dtype=torch.long).to(self.device or next(self.model.parameters()).device)

    def encode_ids(self, ids: list[list[int]], clip_skip: int = 1, fixes=None, *, with_pooled: bool = False):
        """Encode rows of 77 ids -> ``[B, 77, hidden]`` as the family uses it (see the class), and with
        ``with_pooled`` also the pooled, projected output ``[B, projection]`` (None when the encoder has none).

        ``fixes``: per row, ``[(offset, vectors), ...]``: the token-embedding vectors from ``offset + 1``
        (after BOS) are replaced by ``vectors`` (``[n, hidden]``, or an object with ``vectors``: textual
        inversion), through a forward hook on this model's own token-embedding module for this call only.
        """
        layers = self.model.config.num_hidden_layers
        if not 1 <= clip_skip <= layers:
            raise ValueError(f"clip_skip must be in 1..{layers}, got {clip_skip}")
        input_ids = self._input_ids(ids)
        text_model = self._text_model
        hook = None
        if fixes and any(fixes):
            hook = text_model.embeddings.token_embedding.register_forward_hook(_insert_vectors(fixes))
        try:
            pooled = None
            if self.layer == "last" and clip_skip == 1 and not self.pooled:
                z = self.model(input_ids=input_ids).last_hidden_state
            else:
                out = self.model(input_ids=input_ids, output_hidden_states=True)
                if self.layer == "last":
                    z = out.last_hidden_state if clip_skip == 1 else \
                        text_model.final_layer_norm(out.hidden_states[-clip_skip])
                elif self.layer == "penultimate_norm":
                    z = text_model.final_layer_norm(out.hidden_states[-2])
                else:
                    z = out.hidden_states[-2]
                pooled = getattr(out, "text_embeds", None) if self.pooled else None
        finally:
            if hook is not None:
                hook.remove()
        return (z, pooled) if with_pooled else z

    def encode(self, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
        """[B, 77, hidden] conditioning (prompts longer than 75 tokens are truncated)."""
        return self.encode_ids([self.pad_ids(t) for t in self.tokenize(prompts)], clip_skip)


def _insert_vectors(fixes):
    """A forward hook for the token embedding: writes each row's embedding vectors at their offsets."""
    def hook(module, args, output):
        rows = []
        for row_fixes, row in zip(fixes, output):
            for offset, embedding in row_fixes:
                vectors = getattr(embedding, "vectors", embedding).to(row.device, row.dtype)
                n = min(row.shape[0] - offset - 1, vectors.shape[0])
                row = torch.cat([row[:offset + 1], vectors[:n], row[offset + 1 + n:]])
            rows.append(row)
        return torch.stack(rows)
    return hook
