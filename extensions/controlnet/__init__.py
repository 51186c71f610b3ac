"""ControlNet, built on the extension hook (docs/extensions.md).

Files: ``models/controlnet/`` (original ``control_model.*`` or diffusers format; ``.safetensors``, or
``.pth/.pt`` read with weights_only), for SD 1.x, SD 2.x and SDXL; a unit whose ControlNet belongs to
another family than the loaded checkpoint is not applied, and the warning names both families. Up to 3
units in the UI; over the API ``alwayson_scripts: {"controlnet": {"args": [{unit}, ...]}}`` with
sd-webui-controlnet's unit fields.
Each enabled unit adds a residual provider to the job's patches; nothing else in the app changes.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from webui.hooks.api import file_identity, file_sha256, files_by_stem, model_folders, png_base64

from . import preprocessors as pp
from .units import CONTROL_MODES, MAX_UNITS, RESIZE_MODES, Unit, control_residuals, decode_image, hint_tensor, \
    infotext, prepare_hint, unit_from_dict

EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
FIELDS = ("enabled", "image", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode",
          "resize_mode", "processor_res", "threshold_a", "threshold_b", "pixel_perfect")


class ControlNets:
    """The ControlNet files, by title (``name [hash8]``, the hash kept until the file changes), and a small
    cache of loaded networks."""

    def __init__(self, paths):
        self.folders = model_folders(paths.root / "models" / "controlnet", "controlnet")
        self.hash_cache = paths.hash_cache
        self._hashes: dict[tuple, str] = {}
        self._loaded: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        return files_by_stem(self.folders, EXTENSIONS)

    def title(self, path: Path) -> str:
        identity = file_identity(path)
        if identity not in self._hashes:
            self._hashes[identity] = file_sha256(path, self.hash_cache)[:8]
        return f"{path.stem} [{self._hashes[identity]}]"

    def titles(self) -> list[str]:
        return [self.title(path) for path in self.files().values()]

    def find(self, name: str, files: dict[str, Path]) -> Path:
        """A file from its title, stem or file name (``control_canny [abcd1234]``, ``control_canny``)."""
        bare = name.split(" [", 1)[0].strip()
        for stem, path in files.items():
            if bare in (stem, path.name):
                return path
        raise ValueError(f"no ControlNet model {name!r}; available: {', '.join(files) or 'none'} "
                         f"(folder {self.folders[0]})")

    def load(self, path: Path, device, dtype):
        from .cldm import load_controlnet

        key = (*file_identity(path), str(device), dtype)
        with self._lock:
            if key not in self._loaded:
                while len(self._loaded) >= MAX_UNITS:
                    self._loaded.pop(next(iter(self._loaded)))
                self._loaded[key] = load_controlnet(path, device=device, dtype=dtype)
            return self._loaded[key]


def units_from_ui(args: dict) -> list[Unit]:
    """The enabled units of the UI section (values named ``unit{n}_{field}``)."""
    units = []
    for n in range(MAX_UNITS):
        values = {f: args.get(f"unit{n}_{f}") for f in FIELDS}
        if values["enabled"]:
            units.append(unit_from_dict({k: v for k, v in values.items() if v is not None}, n))
    return units


def setup(hooks):
    nets = ControlNets(hooks.paths)

    @hooks.api_args
    def parse(args):
        if len(args) > MAX_UNITS:
            raise ValueError(f"at most {MAX_UNITS} ControlNet units")
        units, files = [], nets.files()
        for n, entry in enumerate(args):
            if not isinstance(entry, dict):
                raise ValueError(f"ControlNet unit {n} must be an object with sd-webui-controlnet's fields")
            unit = unit_from_dict(entry, n)
            if unit.enabled and unit.model not in ("None", ""):
                nets.find(unit.model, files)       # an unknown model is a 422, before the job is queued
            units.append(unit)
        return {"units": units}

    @hooks.on_job
    def prepare(ctx, args):
        units = args.get("units") if "units" in args else units_from_ui(args)
        width, height = ctx.size
        dtype = ctx.model.unet.dtype
        files = nets.files()
        for n, unit in enumerate(units or []):
            if not unit.enabled:
                continue
            image = unit.image
            if image is None and ctx.request.init_image is not None:
                image = np.asarray(ctx.request.init_image.convert("RGB"))   # img2img: the init image
            if image is None or unit.model in ("None", ""):
                ctx.warnings.append(f"ControlNet unit {n}: needs an image and a model; skipped")
                continue
            path = nets.find(unit.model, files)
            net = nets.load(path, ctx.device, dtype)
            problem = net.compatible_with(ctx.model.unet.config, getattr(ctx.model.family, "label", None))
            if problem:                          # e.g. an SD 1.x ControlNet with an SDXL checkpoint
                ctx.warnings.append(f"ControlNet unit {n}: {path.stem} is {problem}: not applied")
                continue
            hint = hint_tensor(prepare_hint(unit, image, width, height), ctx.device, dtype)
            ctx.patches.residuals.append(control_residuals(net, hint, unit))
            ctx.infotext[f"ControlNet {n}"] = infotext(unit, nets.title(path))

    @hooks.ui
    def section(ui):
        from .ui import build_units
        return build_units(ui, nets)

    def model_list(update: bool = True):
        return {"model_list": nets.titles()}

    def module_list(alias_names: bool = False):
        names = pp.labels() if alias_names else list(pp.PREPROCESSORS)
        detail = {n: {"sliders": [{"name": s.label, "min": s.minimum, "max": s.maximum, "value": s.default,
                                   "step": s.step} for s in sliders]}
                  for n, (_, sliders) in pp.PREPROCESSORS.items()}
        return {"module_list": names, "module_detail": detail, "control_modes": list(CONTROL_MODES),
                "resize_modes": list(RESIZE_MODES)}

    def version():
        return {"version": 2}

    def detect(body: dict):
        """sd-webui-controlnet's POST /controlnet/detect: run a preprocessor on base64 images."""
        from fastapi import HTTPException
        try:
            module = pp.resolve(str(body.get("controlnet_module", "none")))
        except ValueError as exc:
            raise HTTPException(422, f"controlnet_module: {exc}") from None
        images = body.get("controlnet_input_images") or body.get("controlnet_images") or []
        if not isinstance(images, list):
            raise HTTPException(422, "controlnet_input_images must be a list of base64 images")
        value = body.get("controlnet_processor_res", 512)
        try:
            resolution = int(value)
        except (TypeError, ValueError, OverflowError):
            resolution = None
        if resolution is None or isinstance(value, bool) or not pp.resolution_allowed(resolution):
            raise HTTPException(422, f"controlnet_processor_res must be {pp.RESOLUTION_RULE} (got {value!r})")
        thresholds = []
        for x in "ab":
            value = body.get(f"controlnet_threshold_{x}")
            try:
                number = None if value is None else float(value)
            except (TypeError, ValueError, OverflowError):
                number = math.nan
            if isinstance(value, bool) or (number is not None and not math.isfinite(number)):
                raise HTTPException(422, f"controlnet_threshold_{x} must be a number (got {value!r})")
            thresholds.append(number)
        outputs = []
        for i, image in enumerate(images):
            try:
                array = decode_image(image)
                if array is None:
                    raise ValueError("empty image")
                detected = pp.run_preprocessor(module, array, resolution, *thresholds)
            except (ValueError, TypeError) as exc:
                raise HTTPException(422, f"controlnet_input_images[{i}]: {exc}") from None
            outputs.append(png_base64(Image.fromarray(detected)))
        return {"images": outputs, "info": "Success"}

    for path, fn, methods in (("/model_list", model_list, ("GET",)), ("/module_list", module_list, ("GET",)),
                              ("/version", version, ("GET",)), ("/detect", detect, ("POST",))):
        hooks.route(path, fn, methods)                       # /extensions-api/controlnet/...
        hooks.route(path, fn, methods, at_root=True)         # /controlnet/... as sd-webui-controlnet serves them
