"""A1111's "Prompt matrix" (``scripts/prompt_matrix.py``): ``a | b | c`` -> every combination of the
parts after the first, 2^n images, and a grid labelled with the parts (active ones black, others grey and
struck through).

``script_args`` (5, A1111's order; defaults in brackets)::

    0 Put variable parts at start of prompt [false]   1 Use different seed for each picture [false]
    2 Select prompt ["positive" | "negative"]         3 Select joining char ["comma" | "space"]
    4 Grid margins (px) [0, 0..500]

Combination ``k`` holds part ``i`` (1-based after the first) when bit ``i-1`` of ``k`` is set; the parts are
stripped of spaces and commas, the first part is kept as written (A1111's quirk), and joined with ", " or
" ". A1111 sends them as one job of ``ceil(2^n / batch size)`` batches; here each prompt is one run of one
image with its own seed (the seed, or seed + i with different seeds), which A1111's per-image noise makes
the same pictures.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from ...engine.request import GenerationRequest
from .base import (
    Runner,
    Script,
    ScriptArg,
    ScriptResult,
    ScriptRun,
    as_bool,
    as_choice,
    as_number,
    check_image_count,
    copy_request,
    fixed_seed,
)
from .grid import draw_prompt_matrix, image_grid

TITLE = "Prompt matrix"


@dataclass(frozen=True)
class PromptMatrixOptions:
    kind: str
    put_at_start: bool = False
    different_seeds: bool = False
    prompt_type: str = "positive"
    variations_delimiter: str = "comma"
    margin_size: int = 0


def matrix_prompts(prompt: str, put_at_start: bool = False, delimiter: str = ", ") -> tuple[list[str], list[str]]:
    """(``prompt.split("|")``, the 2^(parts-1) prompts in A1111's order)."""
    parts = prompt.split("|")
    prompts = []
    for combination in range(2 ** (len(parts) - 1)):
        selected = [text.strip().strip(",") for n, text in enumerate(parts[1:]) if combination & (1 << n)]
        selected = selected + [parts[0]] if put_at_start else [parts[0]] + selected
        prompts.append(delimiter.join(selected))
    return parts, prompts


class PromptMatrix(Script):
    title = TITLE

    def args(self, kind: str = "txt2img") -> list[ScriptArg]:
        return [ScriptArg("Put variable parts at start of prompt", False),
                ScriptArg("Use different seed for each picture", False),
                ScriptArg("Select prompt", "positive", choices=("positive", "negative")),
                ScriptArg("Select joining char", "comma", choices=("comma", "space")),
                ScriptArg("Grid margins (px)", 0, minimum=0, maximum=500, step=2)]

    def parse(self, script_args, kind: str = "txt2img") -> PromptMatrixOptions:
        self._kind(kind)
        a = self._positional(script_args, kind)
        return PromptMatrixOptions(
            kind, as_bool(a[0], self._what(0, kind)), as_bool(a[1], self._what(1, kind)),
            as_choice(a[2], self._what(2, kind), ("positive", "negative")),
            as_choice(a[3], self._what(3, kind), ("comma", "space")),
            int(as_number(a[4], self._what(4, kind), 0, 500, integer=True)))

    def _runs(self, request: GenerationRequest, options: PromptMatrixOptions,
              styles: Sequence[str]) -> tuple[list[str], list[ScriptRun]]:
        negative = options.prompt_type == "negative"
        source = request.negative_prompt if negative else request.prompt
        check_image_count(self.title, 2 ** source.count("|"), self.env)    # before 2^n prompts are built
        parts, prompts = matrix_prompts(source, options.put_at_start,
                                        ", " if options.variations_delimiter == "comma" else " ")
        seed = fixed_seed(request.seed, self.env)
        subseed = fixed_seed(request.subseed, self.env)          # A1111's fix_seed fixes both
        runs = []
        for i, text in enumerate(prompts):
            changes = {"negative_prompt" if negative else "prompt": text,
                       "seed": seed + (i if options.different_seeds else 0), "subseed": subseed,
                       "batch_size": 1, "n_iter": 1}
            run_request = copy_request(request, **changes)
            try:
                self.env.check(run_request)
            except ValueError as exc:
                raise ValueError(f"{self.title}: {exc}") from None
            runs.append(ScriptRun(run_request, styles=list(styles), save_grid=False, index=i, total=len(prompts),
                                  label=f"{i + 1} out of {len(prompts)}"))
        return parts, runs

    def validate(self, request, options, *, styles: Sequence[str] = ()) -> None:
        self._runs(request, options, styles)

    def run(self, request: GenerationRequest, options: PromptMatrixOptions, runner: Runner, *,
            styles: Sequence[str] = (), stop: Callable[[], bool] | None = None) -> ScriptResult:
        parts, runs = self._runs(request, options, styles)
        result = ScriptResult(grid_basename="prompt_matrix")
        for run in runs:
            if result.stopped(stop):
                break
            result.images += result.record(runner(run))
        if not result.images:
            return result
        first = result.images[0]
        result.seed = first.seed
        width, height = first.image.size
        # a matrix cut short by an interrupt keeps its shape: the missing cells are black
        cells = result.pictures + [Image.new("RGB", (width, height)) for _ in range(len(runs) - len(result.images))]
        grid = image_grid(cells, rows=1 << ((len(parts) - 1) // 2))
        grid = draw_prompt_matrix(grid, width, height, parts, options.margin_size)
        result.images.insert(0, first.replace(image=grid, path=None))
        result.index_of_first_image = result.grid_count = 1
        result.save_as_grid = [0]
        return result


__all__ = ["PromptMatrix", "PromptMatrixOptions", "matrix_prompts"]
