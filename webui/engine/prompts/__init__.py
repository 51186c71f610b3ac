"""A1111's prompt language: emphasis, long prompts, scheduling, AND, extra-network tags, embeddings, styles.

- ``emphasis``: ``(word)``, ``[word]``, ``(word:1.3)``, escapes and ``BREAK`` -> (text, weight) pieces.
- ``schedule``: prompt editing ``[a:b:when]`` and alternation ``[a|b]`` -> the text used at each step.
- ``composable``: ``a AND b :1.2`` -> weighted sub-prompts; ``<kind:name:args>`` extra-network tags.
- ``chunks``: tokens in 75-token chunks with per-token weights and embedding positions.
- ``embeddings``: textual-inversion files and lookup by token ids.
- ``conditioning``: texts -> CLIP conditioning (emphasis modes, clip skip), per-step schedules.
- ``styles``: A1111's ``styles.csv``.
"""
