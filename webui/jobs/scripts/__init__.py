"""A1111's selectable scripts (X/Y/Z plot, Prompt matrix, Prompts from file or textbox), engine-agnostic.

What an interface calls::

    registry = ScriptRegistry.with_builtins(ScriptEnvironment(checkpoints=..., find_checkpoint=..., ...))
    script, options = registry.parse(body.script_name, body.script_args, "txt2img")   # ValueError -> 422
    script.validate(request, options, styles=styles)                                  # ValueError -> 422
    # on the job's worker thread:
    result = script.run(request, options, runner, styles=styles, stop=lambda: job.control.interrupted)
    save_grids(result, saving.grid_folder(outputs, kind))          # when grids are saved

``runner(ScriptRun) -> GenerationOutput`` generates one run (see ``base``). Grids are drawn in ``grid``.
"""
from .base import (
    KINDS,
    Runner,
    Script,
    ScriptArg,
    ScriptEnvironment,
    ScriptResult,
    ScriptRun,
)
from .grid import GridAnnotation, draw_grid_annotations, draw_prompt_matrix, image_grid
from .output import save_grids
from .prompt_matrix import PromptMatrix, PromptMatrixOptions, matrix_prompts
from .prompts_from_file import (
    PromptsFromFile,
    PromptsFromFileOptions,
    cmdargs,
    parse_lines,
)
from .registry import ScriptRegistry, builtin_scripts
from .xyz import AXIS_OPTIONS, AxisOption, XYZOptions, XYZPlot, axis_options

__all__ = [
    "AXIS_OPTIONS",
    "KINDS",
    "AxisOption",
    "GridAnnotation",
    "PromptMatrix",
    "PromptMatrixOptions",
    "PromptsFromFile",
    "PromptsFromFileOptions",
    "Runner",
    "Script",
    "ScriptArg",
    "ScriptEnvironment",
    "ScriptRegistry",
    "ScriptResult",
    "ScriptRun",
    "XYZOptions",
    "XYZPlot",
    "axis_options",
    "builtin_scripts",
    "cmdargs",
    "draw_grid_annotations",
    "draw_prompt_matrix",
    "image_grid",
    "matrix_prompts",
    "parse_lines",
    "save_grids",
]
