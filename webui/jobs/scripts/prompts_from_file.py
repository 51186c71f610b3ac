"""A1111's "Prompts from file or textbox" (``scripts/prompts_from_file.py``): one run per non-empty line.

``script_args`` (4, A1111 1.7+ order; defaults in brackets)::

    0 Iterate seed every line [false]   1 Use same random seed for all lines [false]
    2 Insert prompts at the ["start" | "end"]   3 List of prompt inputs [""]

The three-argument form of older A1111 versions (``[iterate, same seed, text]``) is accepted too.

A line is a prompt, or -- when it contains "--" and starts with an option -- A1111's command line::

    --prompt "a cat" --negative_prompt "blurry" --steps 20 --seed 3 --width 512 --sampler_name "Euler a"

(``shlex`` quoting; ``--prompt`` / ``--negative_prompt`` take every word up to the next ``--option``.)
The options are A1111's ``prompt_tags`` with their types. Unlike A1111, which logs a bad line and uses it
as a prompt, a line that starts with an option but has an unknown one, a missing or malformed value, or
an option this server cannot honour is refused with its line number; a line that does not start with an
option is a prompt, as A1111 makes it. The line's prompt goes before (start) or after (end) the request's
prompt, joined by a space, when both are set.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...engine.request import GenerationRequest
from ...engine.sampling import registry
from .base import (
    Runner,
    Script,
    ScriptArg,
    ScriptEnvironment,
    ScriptResult,
    ScriptRun,
    as_bool,
    as_choice,
    as_text,
    check_image_count,
    copy_request,
    fixed_seed,
)

TITLE = "Prompts from file or textbox"


def _boolean(value: str) -> bool:
    return value == "true"          # A1111: anything but "true" is false


# A1111 1.10's prompt_tags (option -> type), in its order
PROMPT_TAGS: dict[str, Callable[[str], Any]] = {
    "sd_model": str, "outpath_samples": str, "outpath_grids": str, "prompt_for_display": str,
    "prompt": str, "negative_prompt": str, "styles": str, "seed": int, "subseed_strength": float,
    "subseed": int, "seed_resize_from_h": int, "seed_resize_from_w": int, "sampler_index": int,
    "sampler_name": str, "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float,
    "width": int, "height": int, "restore_faces": _boolean, "tiling": _boolean,
    "do_not_save_samples": _boolean, "do_not_save_grid": _boolean,
}
# GenerationRequest fields set as they are
_FIELDS = ("prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
           "seed_resize_from_w", "sampler_name", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height",
           "tiling")


def cmdargs(line: str) -> dict[str, Any]:
    """A1111's ``cmdargs``: ``--key value`` pairs -> {key: typed value}; ValueError naming the option."""
    try:
        args = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot split the line ({exc})") from None
    res: dict[str, Any] = {}
    pos = 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise ValueError(f'must start with "--": {arg}')
        if pos + 1 >= len(args):
            raise ValueError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in ("prompt", "negative_prompt"):
            words = [args[pos + 1]]
            pos += 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            res[tag] = " ".join(words)
            continue
        convert = PROMPT_TAGS.get(tag)
        if convert is None:
            raise ValueError(f"unknown commandline option: {arg}; known: "
                             + ", ".join(f"--{k}" for k in PROMPT_TAGS))
        try:
            res[tag] = convert(args[pos + 1])
        except ValueError:
            raise ValueError(f"bad value for {arg}: {args[pos + 1]!r}") from None
        pos += 2
    return res


@dataclass(frozen=True)
class Job:
    """One line: its options (A1111's names) as parsed."""
    line: str
    number: int              # 1-based line number in the text
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PromptsFromFileOptions:
    kind: str
    iterate_seed: bool = False
    same_random_seed: bool = False
    prompt_position: str = "start"
    jobs: tuple[Job, ...] = ()


def parse_lines(text: str, env: ScriptEnvironment | None = None) -> list[Job]:
    """The text's non-empty lines -> jobs; ValueError with the line number for a refused line."""
    env = env or ScriptEnvironment()
    jobs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("--"):
            try:
                args = cmdargs(line)
                _check_args(args, env)
            except ValueError as exc:
                raise ValueError(f"line {number} ({line!r}): {exc}") from None
        else:
            args = {"prompt": line}
        jobs.append(Job(line, number, args))
    return jobs


def _check_args(args: dict, env: ScriptEnvironment) -> None:
    for key in ("outpath_samples", "outpath_grids"):
        if key in args:
            raise ValueError(f"--{key} is not allowed (images are saved only into the server's output folders)")
    if args.get("restore_faces"):
        raise ValueError("--restore_faces true: face restoration is not supported")
    if "sampler_name" in args:
        registry.resolve(args["sampler_name"])
    if "sd_model" in args:
        env.resolve_checkpoint(args["sd_model"])
    for name in _styles(args):
        env.resolve_style(name)


def _styles(args: dict) -> list[str]:
    return [s.strip() for s in args.get("styles", "").split(",") if s.strip()]


class PromptsFromFile(Script):
    title = TITLE

    def args(self, kind: str = "txt2img") -> list[ScriptArg]:
        return [ScriptArg("Iterate seed every line", False),
                ScriptArg("Use same random seed for all lines", False),
                ScriptArg("Insert prompts at the", "start", choices=("start", "end")),
                ScriptArg("List of prompt inputs", "")]

    def parse(self, script_args, kind: str = "txt2img") -> PromptsFromFileOptions:
        self._kind(kind)
        if (isinstance(script_args, (list, tuple)) and len(script_args) == 3
                and not (isinstance(script_args[2], str) and script_args[2].strip().lower() in ("start", "end"))):
            script_args = [script_args[0], script_args[1], "start", script_args[2]]   # A1111 < 1.7
        a = self._positional(script_args, kind)
        text = as_text(a[3], self._what(3, kind))
        try:
            jobs = parse_lines(text, self.env)
        except ValueError as exc:
            raise ValueError(f"{self._what(3, kind)}: {exc}") from None
        if not jobs:
            raise ValueError(f"{self._what(3, kind)}: no prompts (every line is empty)")
        return PromptsFromFileOptions(kind, as_bool(a[0], self._what(0, kind)), as_bool(a[1], self._what(1, kind)),
                                      as_choice(a[2], self._what(2, kind), ("start", "end")), tuple(jobs))

    def _runs(self, request: GenerationRequest, options: PromptsFromFileOptions,
              styles: Sequence[str]) -> list[ScriptRun]:
        env = self.env
        seed = request.seed
        if (options.iterate_seed or options.same_random_seed) and seed == -1:
            seed = fixed_seed(seed, env)
        runs, images = [], 0
        total = len(options.jobs)
        for i, job in enumerate(options.jobs):
            args = job.args
            changes = {key: args[key] for key in _FIELDS if key in args}
            changes["seed"] = args.get("seed", seed)
            for key in ("prompt", "negative_prompt"):      # the line's text joins the request's, when both are set
                line_text, request_text = args.get(key), getattr(request, key)
                if line_text and request_text:
                    changes[key] = (f"{line_text} {request_text}" if options.prompt_position == "start"
                                    else f"{request_text} {line_text}")
            run_request = copy_request(request, **changes)
            try:
                env.check(run_request)
            except ValueError as exc:
                raise ValueError(f"{self.title}: line {job.number} ({job.line!r}): {exc}") from None
            images += run_request.batch_size * run_request.n_iter
            checkpoint = env.resolve_checkpoint(args["sd_model"]) if "sd_model" in args else None
            runs.append(ScriptRun(run_request, checkpoint=checkpoint, styles=[*styles, *_styles(args)],
                                  save_grid=False, save_samples=False if args.get("do_not_save_samples") else None,
                                  index=i, total=total, label=f"{i + 1} out of {total}"))
            if options.iterate_seed:
                seed = seed + request.batch_size * request.n_iter
        check_image_count(self.title, images, env)
        return runs

    def validate(self, request, options, *, styles: Sequence[str] = ()) -> None:
        self._runs(request, options, styles)

    def run(self, request: GenerationRequest, options: PromptsFromFileOptions, runner: Runner, *,
            styles: Sequence[str] = (), stop: Callable[[], bool] | None = None) -> ScriptResult:
        result = ScriptResult()
        for run in self._runs(request, options, styles):
            if result.stopped(stop):
                break
            result.images += result.record(runner(run))
        result.seed = result.images[0].seed if result.images else None
        return result


__all__ = ["PROMPT_TAGS", "Job", "PromptsFromFile", "PromptsFromFileOptions", "cmdargs", "parse_lines"]
