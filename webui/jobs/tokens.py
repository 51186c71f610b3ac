"""A1111's token counter and embeddings list, answered from the request threads while jobs run: the loaded
model's tokenizer and textual-inversion database (read under a lock), or a tokenizer alone before a model is
loaded (token counts need no weights)."""
from __future__ import annotations

import threading
from pathlib import Path


class TokenCounter:
    def __init__(self, models, options, styles, lock: threading.Lock):
        self.models, self.options, self.styles, self._lock = models, options, styles, lock
        self._tokenizer = None

    def _text_encoder(self):
        """The loaded model's text encoder, else a tokenizer-only one."""
        engine = self.models.engine
        if engine is not None and engine.text_encoder is not None:
            return engine.text_encoder
        if self._tokenizer is None:
            from ..engine.text import TextEncoder, load_tokenizer
            self._tokenizer = TextEncoder(None, load_tokenizer())
        return self._tokenizer

    def _database(self):
        """The loaded model's embeddings (the engine's own, reread when the folder changes), or None."""
        engine = self.models.engine
        return engine.embeddings if engine is not None and engine.text_encoder is not None else None

    def embeddings(self, folder: Path) -> dict:
        """A1111's ``/sdapi/v1/embeddings`` shape: ``{"loaded": {name: info}, "skipped": {name: info}}``."""
        with self._lock:
            db = self._database()
            if db is None:        # no model yet: the files, all unchecked against a text encoder
                from ..engine.prompts.embeddings import EmbeddingDatabase
                db = EmbeddingDatabase(folder, -1, lambda t: [])
                db.refresh()

        def info(e):
            return {"step": e.step, "sd_checkpoint": e.sd_checkpoint, "sd_checkpoint_name": e.sd_checkpoint_name,
                    "shape": e.width, "vectors": e.count}
        return {"loaded": {n: info(e) for n, e in db.loaded.items()},
                "skipped": {n: info(e) for n, e in db.skipped.items()}}

    def count(self, text: str, steps: int = 20, styles: list[str] | None = None,
              negative: bool = False) -> tuple[int, int]:
        """``(tokens, tokens allowed before one more chunk)`` for the longest text the prompt schedules to, after
        styles (setting ``include_styles_into_token_counters``), without ``<kind:...>`` tags, with ``AND`` parts
        counted apart and embeddings counted by their vectors."""
        from ..engine.prompts import composable, schedule
        from ..engine.prompts.chunks import CHUNK
        from ..engine.prompts.conditioning import PROMPT_SETTINGS, PromptOptions, make_chunker

        if styles and self.options["include_styles_into_token_counters"]:
            try:
                styled = self.styles.apply(text if not negative else "", text if negative else "", styles)
                text = styled[1] if negative else styled[0]
            except ValueError:
                pass
        text, _ = composable.extra_network_tags(text)
        flat = [text] if negative else [t for t, _ in composable.subprompts(text)]
        texts = [t for prompt in flat for _, t in schedule.schedule(prompt, max(int(steps), 1))]
        options = PromptOptions(**{key: self.options[key] for key in PROMPT_SETTINGS})
        with self._lock:
            chunker = make_chunker(self._text_encoder(), self._database(), options)
            count = max(chunker.split(t).token_count for t in texts)
        return count, max(-(-max(count, 1) // CHUNK) * CHUNK, CHUNK)
