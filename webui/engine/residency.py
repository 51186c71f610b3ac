"""``Engine``: the models resident on one device, and the door to generation.

It loads a checkpoint (checked before the resident one is freed; a failed load brings the previous back), keeps
replaced ones for a quick switch back (A1111's ``sd_checkpoints_limit``), places the networks by memory mode
(normal / medvram / lowvram, ``memory.py``), swaps the VAE, decodes with TAESD when asked, keeps a second model
beside the first while jobs ask for it (the refiner, or hires fix's checkpoint), and encodes and decodes
images with the VAE. ``generate`` hands a request to ``generation.py``, which plans the job and runs its passes
over the ``ResidentModel`` objects this class makes. Not thread-safe: the job queue runs one job at a time.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .checkpoint import StableDiffusionModel, load_checkpoint, load_vae, read_checkpoint
from .control import JobControl, ProgressCallback
from .devices import CpuAllocator, resolve_device, resolve_precision
from .files import CheckpointError
from .job_hooks import JobHooks
from .layers import store_weights_in_fp8
from .memory import MEMORY_MODES, Offloader, choose_memory_mode, network_groups, weight_bytes, working_memory
from .patches import JobPatches, ModelPatcher
from .prompts.conditioning import PromptEncoder
from .prompts.embeddings import EmbeddingDatabase
from .request import GenerationRequest
from .resident import ResidentModel
from .result import GenerationResult
from .sampling.schedules import DiscreteSchedule
from .text import TextEncoder, load_tokenizer


class Engine:
    """One resident model (and at most one second model) on one device."""

    def __init__(self, device: str | None = None, precision: str = "auto", *, no_half: bool = False,
                 no_half_vae: bool = False, prediction: str | None = None, memory: str = "auto",
                 fp8: bool = False, compile: bool = False):
        """``prediction``: "eps" / "v" forces the prediction type of every model loaded (``--prediction``).
        ``memory``: where the networks live (``memory.MEMORY_MODES``; auto: ``normal`` unless the free VRAM
        says otherwise). ``fp8``: the UNet's linear / convolution weights stored as float8_e4m3fn.
        ``compile``: the UNet run through ``torch.compile`` (compiled on its first call per shape; inductor
        caches the kernels on disk)."""
        if memory not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(self.device, precision, no_half=no_half, no_half_vae=no_half_vae)
        self.prediction = prediction
        self.memory, self.fp8, self.compile = memory, fp8, compile
        self.memory_mode = "normal"            # what ``memory`` came to for the resident model
        self.offloader = Offloader(self.device)
        self._placed: tuple = ()
        self.checkpoints_limit = 1             # A1111's sd_checkpoints_limit: models kept loaded, this one included
        self.keep_in_cpu = True                # sd_checkpoints_keep_in_cpu: the others wait in RAM, not VRAM
        self._kept: OrderedDict[tuple, StableDiffusionModel] = OrderedDict()
        self._allocator = CpuAllocator.tune() if self.device.type == "cpu" else None
        self.resident: ResidentModel | None = None
        self.second: ResidentModel | None = None  # the refiner or hires fix's checkpoint, while jobs ask for it
        self.vae_path: Path | None = None
        self._tokenizer = None
        self.embeddings_dir: Path | None = None
        self.hash_cache: Path | None = None
        self._embeddings: EmbeddingDatabase | None = None
        self._patcher = ModelPatcher()
        self.fast_decoder = None       # a TAESD decoder that replaces the VAE's decode (``--vae-decode taesd``)

    # ---- what is resident ----------------------------------------------------------------------------
    @property
    def model(self) -> StableDiffusionModel | None:
        return self.resident.model if self.resident is not None else None

    def require(self) -> ResidentModel:
        if self.resident is None:
            raise RuntimeError("no checkpoint is loaded")
        return self.resident

    @property
    def schedule(self) -> DiscreteSchedule:
        """The resident model's noise schedule on the device (SD's when none is loaded)."""
        return self.resident.schedule if self.resident is not None else DiscreteSchedule.sd().to(self.device)

    @property
    def text_encoders(self) -> list[TextEncoder]:
        return self.resident.text_encoders if self.resident is not None else []

    @property
    def text_encoder(self) -> TextEncoder | None:
        """The loaded model's first prompt encoder (None without a model)."""
        return self.text_encoders[0] if self.text_encoders else None

    @property
    def is_inpainting_model(self) -> bool:
        return self.require().family.is_inpainting

    @property
    def embeddings(self) -> EmbeddingDatabase:
        """Textual-inversion embeddings of ``embeddings_dir`` for the loaded model, reread when files change."""
        resident = self.require()
        if self._embeddings is None or self._embeddings.folder != self.embeddings_dir:
            widths = {e.name: e.width for e in resident.text_encoders}
            self._embeddings = EmbeddingDatabase(self.embeddings_dir, widths,
                                                 lambda text: self.text_encoder.tokenize([text])[0])
        self._embeddings.refresh()
        return self._embeddings

    def prompt_encoder(self, request: GenerationRequest, model: ResidentModel | None = None) -> PromptEncoder:
        """The prompt encoder of the resident model (with its embeddings) or of ``model`` (the second one)."""
        if model is None or model is self.resident:
            return self.require().prompt_encoder(request, self.embeddings, self.hash_cache)
        return model.prompt_encoder(request, None, self.hash_cache)

    @property
    def kept_checkpoints(self) -> list[str]:
        """Paths of the models kept loaded besides the resident one, least recently used first."""
        return [model.path for model in self._kept.values()]

    # ---- loading -----------------------------------------------------------------------------------------
    def load(self, path: str | Path, vae_path: str | Path | None = None) -> StableDiffusionModel:
        """Load a checkpoint (and optionally an external VAE), freeing the previous model first.

        The file is checked (readable, a known family) before the resident model is freed, so a bad file
        leaves the engine as it was; a failure later in loading restores the previous model.
        """
        key = _file_key(path)
        kept = self._kept.pop(key, None)
        # memory-mapped (safetensors, zip .ckpt): read once, here
        state_dict = read_checkpoint(path) if kept is None else None
        if self.model is not None:
            self._patcher.restore(self.model)   # a patched resident model goes back as it was first
        previous = (self.model.path, self.vae_path) if self.model is not None else None
        self._keep(self.model)
        self.unload(kept_models=True)
        try:
            if kept is not None:
                model = kept
                self.memory_mode = self._memory_mode(
                    lambda: {n: weight_bytes(m) for n, m in network_groups(model).items()}, model.native_size)
            else:
                sizes = functools.partial(self._planned_sizes, state_dict, path)
                self.memory_mode = self._memory_mode(sizes, None)
                del sizes
                model = load_checkpoint(path, device=self._load_device, dtype=self.precision.unet,
                                        vae_dtype=self.precision.vae, text_dtype=self.precision.text,
                                        state_dict=state_dict, prediction=self.prediction)
                model.key = key
                if self.fp8:
                    store_weights_in_fp8(model.unet)
        except Exception:
            if previous is not None:
                self.load(*previous)
            raise
        del state_dict                           # unmaps the file
        self.resident = ResidentModel(model, self._encoders_of(model), self.device)
        self._place()
        if self.compile and getattr(model.unet, "_compiled_call_impl", None) is None:
            model.unet.compile(dynamic=None)
        self._embeddings = None
        self.vae_path = None if model.vae_path is None else Path(model.vae_path)
        if (None if vae_path is None else Path(vae_path)) != self.vae_path:
            self.set_vae(vae_path)
        return model

    def refiner(self, path: str | Path) -> ResidentModel:
        """The second model (the refiner, or hires fix's checkpoint), loaded once and kept beside the resident
        one (without its VAE: the resident model's decodes) while jobs ask for it. Its latent space must be the
        resident model's."""
        resident = self.require()
        if self.second is not None and self.second.model.path == str(path):
            return self.second
        self.second = None
        gc.collect()
        model = load_checkpoint(path, device=self._load_device, dtype=self.precision.unet, prediction=self.prediction,
                                with_vae=False, text_dtype=self.precision.text)
        if model.family.latent_scale != resident.family.latent_scale:
            raise CheckpointError(f"{path}: a {model.family.label} model cannot refine {resident.family.label} "
                                  "images (their latent spaces differ)")
        if self.fp8:
            store_weights_in_fp8(model.unet)
        if self.compile:
            model.unet.compile(dynamic=None)
        self.second = ResidentModel(model, self._encoders_of(model), self.device)
        self._place()
        return self.second

    def release_second(self) -> None:
        """A job without a refiner or hires checkpoint: the second model's memory goes back."""
        self.second = None
        self._place()

    def set_vae(self, vae_path: str | Path | None) -> None:
        """Replace the VAE with an external file; ``None`` restores the checkpoint's own."""
        model = self.require().model
        if vae_path is None and self.vae_path is None:
            return
        model.vae = load_vae(vae_path or model.path, device=self._load_device, dtype=self.precision.vae)
        self.vae_path = None if vae_path is None else Path(vae_path)
        model.vae_path = None if vae_path is None else str(vae_path)
        self._place()

    def set_fast_decoder(self, folder: str | Path | None) -> Path | None:
        """Decode with TAESD (Bohan Ou's tiny autoencoder: a fraction of the VAE's time, softer detail) from
        ``folder`` (``models/vae_approx``: ``taesd_decoder.*`` for SD 1.x / 2.x, ``taesdxl_decoder.*`` for
        SDXL); None: the model's VAE again. Returns the file used; ValueError when the folder has none for the
        loaded model's family."""
        from .preview import find_taesd, load_taesd
        if folder is None:
            self.fast_decoder = None
            return None
        family = self.require().family
        path = find_taesd(Path(folder), family.name)
        if path is None:
            raise ValueError(f"--vae-decode taesd: no TAESD decoder for {family.label} in {folder} "
                             "(taesd_decoder.safetensors for SD 1.x / 2.x, taesdxl_decoder.safetensors for SDXL)")
        self.fast_decoder = load_taesd(path, self.device, self.precision.vae)
        return path

    def restore_weights(self) -> None:
        """Undo weight patches still merged from the last job (they stay while jobs ask for the same)."""
        if self.model is not None:
            self._patcher.restore(self.model)

    @contextlib.contextmanager
    def patched(self, patches: JobPatches) -> Iterator[None]:
        """The resident model with a job's patches for the ``with`` block (``patches.ModelPatcher.applied``); a
        lowvram block left on the device by an exception goes back afterwards."""
        try:
            with self._patcher.applied(self.require().model, patches):
                yield
        finally:
            self.offloader.release()

    def unload(self, *, kept_models: bool = False) -> None:
        """Free the resident model (and, unless ``kept_models``, the kept ones too)."""
        freed = self.resident is not None or self.second is not None or (self._kept and not kept_models)
        self._patcher.forget()
        self.offloader.detach()
        self._placed = ()
        if not kept_models:
            self._kept.clear()
        self.resident = self.second = None
        self.fast_decoder = None
        self._embeddings = None
        self.vae_path = None
        if freed:                           # (a first load has nothing to collect: 0.17 s saved)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ---- the VAE -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents (the distribution's mean, as A1111, in the latent format)."""
        resident = self.require()
        return resident.latent.from_vae(self._vae_call(resident.model.vae.encode, images))

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, 3, H, W) in [-1, 1], one image at a time to bound memory. With a TAESD decoder set
        (``set_fast_decoder``, ``--vae-decode taesd``) it decodes instead of the model's VAE."""
        resident = self.require()
        if self.fast_decoder is not None:
            from .preview import taesd_preview
            return torch.cat([taesd_preview(self.fast_decoder, z[None]) for z in latents]).float()
        with self._allocator.decode_working_memory() if self._allocator else contextlib.nullcontext():
            return torch.cat([self._vae_call(resident.model.vae.decode, resident.latent.to_vae(z[None]))
                              for z in latents])

    def _vae_call(self, fn, x: torch.Tensor) -> torch.Tensor:
        vae = self.require().model.vae
        dtype = next(vae.parameters()).dtype
        out = fn(x.to(self.device, dtype)).float()
        if dtype != torch.float32 and torch.isnan(out).any():
            vae.to(torch.float32)                   # the fp16 VAE overflowed: stay in fp32 from now on
            out = fn(x.to(self.device, torch.float32)).float()
        return out

    # ---- generation ----------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None,
                 control: JobControl | None = None, hooks: JobHooks | None = None) -> GenerationResult:
        """A job: ``generation.generate`` over the resident model(s). ``hooks``: extensions' per-job callbacks and
        extra-network tag handlers (``lora``); they fill the job's ``JobPatches``, applied for this job only."""
        from .generation import generate
        return generate(self, request, progress, control, hooks)

    # ---- memory modes and kept checkpoints -------------------------------------------------------------
    def _memory_mode(self, sizes: Callable[[], dict[str, int]], native_size: int | None) -> str:
        """``memory`` as asked, or for ``auto`` on CUDA: ``memory.choose_memory_mode`` from the free VRAM."""
        if self.memory != "auto":
            return self.memory
        if self.device.type != "cuda":
            return "normal"
        gc.collect()
        torch.cuda.empty_cache()
        free, _total = torch.cuda.mem_get_info(self.device)
        return choose_memory_mode(free, sizes(), working_memory(native_size or 512))

    @property
    def _load_device(self) -> torch.device:
        """Where networks are loaded: the device in ``normal`` mode, else the CPU (the offloader moves them)."""
        return self.device if self.memory_mode == "normal" else torch.device("cpu")

    def _planned_sizes(self, state_dict, path) -> dict[str, int]:
        """Bytes each network of the file at ``path`` will take in this engine's dtypes (from the header)."""
        from . import detection
        family = detection.detect_family(state_dict, name=str(path))   # read_checkpoint checked it: no error
        unet_size = 1 if self.fp8 else self.precision.unet.itemsize
        groups = [("unet", (family.unet_prefix,), unet_size),
                  ("vae", (family.vae_prefix,), self.precision.vae.itemsize)]
        groups += [(f"text{'' if i == 0 else f'_{i + 1}'}", tuple(spec.prefixes), self.precision.text.itemsize)
                   for i, spec in enumerate(family.text)]
        return {name: sum(state_dict[k].numel() for k in state_dict if k.startswith(prefixes)) * itemsize
                for name, prefixes, itemsize in groups}

    def _place(self) -> None:
        """Put the resident model (and the second one) where ``memory_mode`` says; hooks for medvram / lowvram."""
        model, second = self.model, self.second.model if self.second is not None else None
        placed = (id(model), id(second), id(model.vae) if model else 0, self.memory_mode)
        if placed != self._placed:
            self.offloader.attach([model, second], self.memory_mode)
            self._placed = placed

    def _keep(self, model: StableDiffusionModel | None) -> None:
        """Keep a model being replaced for a quick switch back (``checkpoints_limit`` > 1), in RAM when
        ``keep_in_cpu``; the least recently used ones beyond the limit are freed."""
        if model is None or self.checkpoints_limit <= 1 or getattr(model, "key", None) is None:
            return
        self.offloader.detach()
        self._placed = ()
        if self.keep_in_cpu or self.memory_mode != "normal":
            for modules in network_groups(model).values():
                for module in modules:
                    module.to("cpu")
        self._kept[model.key] = model
        while len(self._kept) > self.checkpoints_limit - 1:
            self._kept.popitem(last=False)

    def _encoders_of(self, model: StableDiffusionModel) -> list[TextEncoder]:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer()
        return [TextEncoder(text_model, self._tokenizer, spec, device=self.device)
                for text_model, spec in zip(model.text_models, model.family.text)]


def _file_key(path) -> tuple:
    """A checkpoint file as the kept-models cache knows it: its path and identity (size, mtime)."""
    resolved = Path(path).resolve()
    try:
        stat = os.stat(resolved)
    except OSError:
        return (str(resolved),)
    return (str(resolved), stat.st_size, stat.st_mtime_ns)
