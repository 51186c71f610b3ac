"""What an extension may import: the one public surface of this project for extension authors.

Everything here keeps its name and meaning across updates (``docs/extensions.md`` describes each). An extension
imports from this module only -- ``from webui.hooks.api import WeightPatch, JobContext`` -- never from
``webui.engine`` or ``webui.jobs`` directly: those are free to change.

- **The job**: ``JobContext`` (what ``on_job`` and tag handlers get), ``ExtraNetworkTag``.
- **What a job may change** (``ctx.patches``, a ``JobPatches``): ``WeightPatch``, ``CallInfo``, ``UNetExtras``,
  ``Cond``, and ``PATCH_KINDS`` (every kind of change, its field and what a failed entry falls back to).
- **Networks shaped like the model's** (ControlNet and its like): ``UNetConfig``, ``UNetModel``, ``embed_time``,
  ``unet_module_names`` (diffusers <-> original module names), ``build_network`` / ``infer_config`` (build on
  the meta device and fill from a state dict), ``families`` (the family table, shape readers), ``detection``
  (which family a state dict holds: ``detection.detect_family``).
- **Files**: ``read_state_dict`` / ``read_metadata`` (safe reading: no pickled code runs), ``CheckpointError``,
  ``file_sha256``, and the folders: ``model_folders``, ``files_by_stem``, ``file_identity``, ``PROJECT_ROOT``.
- **Images and infotext**: ``images`` (resize modes, base64 decoding with a pixel limit), ``png_base64``,
  ``hash_entry`` (one ``name: hash`` of ``Lora hashes`` / ``TI hashes``).
- **Scripts**: ``Script``, ``ScriptArg``, ``ScriptRun``, ``ScriptResult``, ``ImageRecord`` and the built-in scripts
  to build on (``PromptMatrix`` ...): ``webui.jobs.scripts`` re-exported.
"""
from __future__ import annotations

from ..engine import detection, families, images
from ..engine.checkpoint import build_network, infer_config
from ..engine.cond import Cond
from ..engine.diffusers_names import unet_module_names
from ..engine.files import CheckpointError, read_metadata, read_state_dict
from ..engine.hashing import file_sha256
from ..engine.job_hooks import ExtraNetworkHandler, JobContext
from ..engine.patches import PATCH_KINDS, CallInfo, JobPatches, PatchKind, WeightPatch
from ..engine.prompts.composable import ExtraNetworkTag
from ..engine.result import ImageRecord
from ..engine.unet import UNetConfig, UNetExtras, UNetModel, embed_time
from ..jobs.infotext import hash_entry
from ..jobs.saving import png_base64
from ..jobs.scripts import (PromptMatrix, PromptsFromFile, Script, ScriptArg, ScriptEnvironment, ScriptResult,
                            ScriptRun, XYZPlot)
from ..paths import PROJECT_ROOT, file_identity, files_by_stem, model_folders

__all__ = [
    # the job
    "JobContext", "ExtraNetworkTag", "ExtraNetworkHandler",
    # what a job may change
    "JobPatches", "WeightPatch", "CallInfo", "UNetExtras", "Cond", "PATCH_KINDS", "PatchKind",
    # networks shaped like the model's
    "UNetConfig", "UNetModel", "embed_time", "unet_module_names", "build_network", "infer_config", "families",
    "detection",
    # files and folders
    "read_state_dict", "read_metadata", "CheckpointError", "file_sha256", "model_folders", "files_by_stem",
    "file_identity", "PROJECT_ROOT",
    # images and infotext
    "images", "png_base64", "hash_entry",
    # scripts
    "Script", "ScriptArg", "ScriptRun", "ScriptResult", "ScriptEnvironment", "ImageRecord", "PromptMatrix",
    "PromptsFromFile", "XYZPlot",
]
