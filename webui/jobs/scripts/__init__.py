"""A1111's selectable scripts (X/Y/Z plot, Prompt matrix, Prompts from file or textbox), engine-agnostic.

What an interface calls::

    registry = ScriptRegistry.with_builtins(ScriptEnvironment(checkpoints=..., find_checkpoint=..., ...))
    script, options = registry.parse(body.script_name, body.script_args, "txt2img")   # ValueError -> 422
    script.validate(request, options, styles=styles)                                  # ValueError -> 422
    # on the job's worker thread:
    result = script.run(request, options, runner, styles=styles, stop=lambda: job.control.interrupted)

``runner(ScriptRun) -> RunResult`` generates one run (see ``base``). Grids are drawn in ``grid``.
"""
from .base import (KINDS, RunResult, Runner, Script, ScriptArg, ScriptEnvironment, ScriptResult, ScriptRun)
from .grid import GridAnnotation, draw_grid_annotations, draw_prompt_matrix, image_grid
from .prompt_matrix import PromptMatrix, PromptMatrixOptions, matrix_prompts
from .prompts_from_file import PromptsFromFile, PromptsFromFileOptions, cmdargs, parse_lines
from .registry import ScriptRegistry, builtin_scripts
from .xyz import AXIS_OPTIONS, AxisOption, XYZOptions, XYZPlot, axis_options

__all__ = [
    "KINDS", "RunResult", "Runner", "Script", "ScriptArg", "ScriptEnvironment", "ScriptResult", "ScriptRun",
    "GridAnnotation", "draw_grid_annotations", "draw_prompt_matrix", "image_grid",
    "PromptMatrix", "PromptMatrixOptions", "matrix_prompts",
    "PromptsFromFile", "PromptsFromFileOptions", "cmdargs", "parse_lines",
    "ScriptRegistry", "builtin_scripts",
    "AXIS_OPTIONS", "AxisOption", "XYZOptions", "XYZPlot", "axis_options",
]
