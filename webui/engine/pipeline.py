"""txt2img, img2img and inpainting over a resident model, with A1111's semantics.

``Engine`` keeps one checkpoint resident on its device and turns a ``GenerationRequest`` into images:
prompts -> conditioning, seeds -> CPU noise, sampler + schedule -> sigmas, the sampling loop over a
CFG denoiser, then VAE decode. img2img trims the schedule by the denoising strength as A1111 does;
inpainting blends latents for normal checkpoints and feeds mask + masked-image latents to 9-channel
inpainting checkpoints.

Model families differ only in data: the loaded model's text encoders, vector conditioning (SDXL's ``y``),
latent scale, prediction type and noise schedule come with it (``checkpoint.StableDiffusionModel``), and
conditioning travels as ``Cond`` (cross-attention tokens + vector). A refiner (A1111's
``refiner_checkpoint`` / ``refiner_switch_at``) takes over the same sampler state at the switch point with
its own conditioning (``denoiser.switching_denoiser``).

A1111's timestep samplers (DDIM, UniPC: ``vp_latent`` specs with their own schedule) keep two quirks of
its ``sd_samplers_timesteps.py`` here: img2img noises the latent to timestep ``ts[t_enc]`` but samples
over ``ts[:t_enc]`` (first model call one timestep lower), and inpainting blends the kept region into
the model's input (``mask_before_denoising``) instead of into its prediction.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from . import images as im
from .checkpoint import StableDiffusionModel, load_checkpoint, load_vae, read_checkpoint
from .control import Interrupted, JobControl, Progress, ProgressCallback, Skipped
from .denoiser import (ModelDenoiser, SamplingState, cfg_denoiser, masked_denoiser, masked_model_input,
                       switching_denoiser)
from .files import CheckpointError
from .vector import SizeConditioning
from .patches import JobPatches, ModelPatcher
from .devices import CpuAllocator, resolve_device, resolve_precision
from .layers import store_weights_in_fp8
from .memory import MEMORY_MODES, Offloader, choose_memory_mode, network_groups, weight_bytes, working_memory
from .sampling import registry
from .sampling.noise import BrownianTreeNoiseSampler
from .sampling.schedules import LCM_ORIGINAL_STEPS, DiscreteSchedule
from .seeds import ImageRNG, image_seeds, resolve_seed
from .prompts.chunks import EMPHASIS_MODES
from .prompts.composable import ExtraNetworkTag, extra_network_tags
from .prompts.conditioning import PROMPT_SETTINGS, PromptEncoder, PromptOptions

SETTING_FIELDS = (*PROMPT_SETTINGS, "pad_cond_uncond")   # request fields that default to the same-named setting
from .prompts.embeddings import EmbeddingDatabase
from .text import TextEncoder, load_tokenizer



@dataclass
class JobContext:
    """What extensions see of one job, and what they may change (``patches``, ``infotext``, ``warnings``).

    ``script_args``: per-extension arguments by extension title (from its UI section or the API's
    ``alwayson_scripts``); ``steps``: sampler steps of this run; ``size``: (width, height) in pixels."""
    request: "GenerationRequest"
    model: StableDiffusionModel
    device: torch.device
    patches: JobPatches
    infotext: dict
    warnings: list[str]
    script_args: Mapping[str, Any]
    steps: int
    size: tuple[int, int]
    batch_size: int


ExtraNetworkHandler = Callable[[list[ExtraNetworkTag], JobContext], None]


@dataclass
class JobHooks:
    """Extension callbacks for one job: ``prepare(ctx)`` each, then the tag handlers by kind."""
    prepare: Sequence[Callable[[JobContext], None]] = ()
    networks: Mapping[str, ExtraNetworkHandler] = field(default_factory=dict)
    script_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class GenerationRequest:
    """What a user asks for. Field names follow A1111's API."""
    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "Euler"
    scheduler: str = "automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    # prompt-language settings (A1111 option names); None: the default
    emphasis: str | None = None                 # "Original", "No norm", "Ignore", "None"
    comma_padding_backtrack: int | None = None  # 0..74 tokens
    use_old_scheduling: bool | None = None
    pad_cond_uncond: bool | None = None
    # img2img / inpainting
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: int = 0
    mask: Image.Image | None = None
    mask_blur: int = 4
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    latent_mask: Image.Image | None = None     # A1111's: the latent blend uses it instead of the (blurred) mask
    # SDXL's size conditioning, (height, width) / (top, left); None: A1111's (the image size, (0, 0))
    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] | None = None
    target_size: tuple[int, int] | None = None
    # refiner: a checkpoint file that takes over when this fraction of the schedule is done (A1111's fields;
    # the interfaces resolve the listed name to the file)
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8
    # variation seeds (A1111): each image's noise slerped towards its subseed's; noise drawn at another size
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    # sampler parameters, None: the sampler's default (k-diffusion's names, A1111's request fields)
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    tiling: bool = False                       # seamless images: the convolutions wrap around the edges
    disable_extra_networks: bool = False       # <kind:...> tags are removed from the prompt, not run
    initial_noise_multiplier: float = 1.0      # img2img: the noise added to the init latent, scaled
    # hires fix (txt2img): a second, img2img pass at a larger size with ``denoising_strength`` (A1111's fields;
    # ``hr_checkpoint_name`` is a file, resolved by the interfaces)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None             # a latent mode or an image upscaler (upscale.py); None: "Latent"
    hr_second_pass_steps: int = 0              # 0: the first pass's steps
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None         # None / "": the first pass's
    hr_scheduler: str | None = None
    hr_prompt: str = ""                        # "": the first pass's
    hr_negative_prompt: str = ""
    hr_checkpoint_name: str | None = None

    def _hires_problems(self) -> list[str]:
        from .upscale import check_upscaler, hires_target
        problems = []
        if self.init_image is not None:
            problems.append("hires fix is a txt2img feature")
        if self.refiner_checkpoint:
            problems.append("hires fix together with a refiner is not supported")
        if not 1.0 <= self.hr_scale <= 8.0:
            problems.append(f"hires upscale must be within 1..8 (got {self.hr_scale})")
        if self.hr_second_pass_steps < 0:
            problems.append(f"hires steps must be 0 (the first pass's) or more (got {self.hr_second_pass_steps})")
        for name in ("hr_resize_x", "hr_resize_y"):
            if not 0 <= getattr(self, name) <= 16384:
                problems.append(f"{name} must be within 0..16384 (got {getattr(self, name)})")
        try:
            check_upscaler(self.hr_upscaler)
        except ValueError as exc:
            problems.append(f"hr_upscaler: {exc}")
        if not problems and self.width >= 64 and self.height >= 64:
            target = hires_target(self.width, self.height, self.hr_scale, self.hr_resize_x, self.hr_resize_y)
            if min(target.final_size) < 64 or max(target.width, target.height) > 16384:
                problems.append(f"hires fix would make {target.final_size[0]}x{target.final_size[1]} images")
        return problems

    def validate(self) -> None:
        problems = []
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 64 or value % 8:
                problems.append(f"{name} must be a multiple of 8 and at least 64 (got {value})")
        if self.steps < 1:
            problems.append(f"steps must be at least 1 (got {self.steps})")
        if self.batch_size < 1 or self.n_iter < 1:
            problems.append("batch size and batch count must be at least 1")
        if self.clip_skip < 1:
            problems.append(f"clip skip must be at least 1 (got {self.clip_skip})")
        if self.init_image is not None and not 0.0 <= self.denoising_strength <= 1.0:
            problems.append(f"denoising strength must be within 0..1 (got {self.denoising_strength})")
        if self.resize_mode not in range(len(im.RESIZE_MODES)):
            problems.append(f"resize mode must be 0-3 ({', '.join(im.RESIZE_MODES)})")
        if self.inpainting_fill not in range(len(im.MASKED_CONTENT)):
            problems.append(f"masked content must be 0-3 ({', '.join(im.MASKED_CONTENT)})")
        if self.mask is not None and self.init_image is None:
            problems.append("a mask needs an init image")
        if self.emphasis is not None and self.emphasis not in EMPHASIS_MODES:
            problems.append(f"emphasis must be one of {', '.join(EMPHASIS_MODES)} (got {self.emphasis!r})")
        if self.enable_hr:
            problems.extend(self._hires_problems())
        if not 0.0 <= self.initial_noise_multiplier <= 1.5:
            problems.append(f"initial noise multiplier must be within 0..1.5 (got {self.initial_noise_multiplier})")
        if self.comma_padding_backtrack is not None and not 0 <= self.comma_padding_backtrack <= 74:
            problems.append(f"comma padding backtrack must be within 0..74 (got {self.comma_padding_backtrack})")
        for name in ("original_size", "crops_coords_top_left", "target_size"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or not all(isinstance(v, int) and 0 <= v <= 16384
                                                                  for v in value)):
                problems.append(f"{name} must be two whole numbers within 0..16384 (got {value!r})")
        if not 0.0 <= self.refiner_switch_at <= 1.0:
            problems.append(f"refiner switch at must be within 0..1 (got {self.refiner_switch_at})")
        if not 0.0 <= self.subseed_strength <= 1.0:
            problems.append(f"variation strength must be within 0..1 (got {self.subseed_strength})")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            if value > 0 and (value % 8 or value > 16384):
                problems.append(f"{name} must be a multiple of 8 up to 16384, or 0 / -1 for off (got {value})")
        for name in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            value = getattr(self, name)
            if value is not None and not (0.0 <= value < 1e6):
                problems.append(f"{name} must be a number >= 0 (got {value})")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    prompt: str
    negative_prompt: str
    subseed: int = -1


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    seed: int                       # the job's first seed (the one reported when -1 was asked)
    sampler_name: str               # A1111 display name, after resolving legacy names
    scheduler: str                  # A1111 label ("Karras", "Automatic" resolved to the real one)
    extra: dict = field(default_factory=dict)   # A1111 infotext extras (Denoising strength, Mask blur...)
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)   # told to the user (an unknown <kind:...> tag)
    refiner_switched: bool = False                      # the refiner took over (A1111 records it then)
    subseed: int = -1                                   # the job's first variation seed (resolved)


@dataclass
class _JobSeeds:
    seeds: list[int]
    subseeds: list[int]
    sampler_kwargs: dict


@dataclass
class _Img2ImgInputs:
    init_latent: torch.Tensor                  # (B, 4, h, w), scaled
    source: torch.Tensor                       # (B, 3, H, W) in [-1, 1] after fill
    image_mask: Image.Image | None             # processing-size mask (white = repaint)
    keep_mask: torch.Tensor | None = None      # latent-size, 1 = keep
    overlay: Image.Image | None = None         # original with alpha = keep
    paste_box: tuple | None = None


class Engine:
    """One resident model on one device. Not thread-safe: the job queue runs one job at a time."""

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
        self._offloader = Offloader(self.device)
        self._placed: tuple = ()
        self.checkpoints_limit = 1             # A1111's sd_checkpoints_limit: models kept loaded, this one included
        self.keep_in_cpu = True                # sd_checkpoints_keep_in_cpu: the others wait in RAM, not VRAM
        self._kept: OrderedDict[tuple, StableDiffusionModel] = OrderedDict()
        self._allocator = CpuAllocator.tune() if self.device.type == "cpu" else None
        self.model: StableDiffusionModel | None = None
        self.vae_path: Path | None = None
        self._tokenizer = None
        self._text_encoder: TextEncoder | None = None
        self._text_encoders: list[TextEncoder] = []
        self.embeddings_dir: Path | None = None
        self.hash_cache: Path | None = None
        self._embeddings: EmbeddingDatabase | None = None
        self._patcher = ModelPatcher()
        self._schedules: dict[int, DiscreteSchedule] = {}
        self._refiner: StableDiffusionModel | None = None
        self.fast_decoder = None       # a TAESD decoder that replaces the VAE's decode (``--vae-decode taesd``)

    @property
    def schedule(self) -> DiscreteSchedule:
        """The resident model's noise schedule on the device (SD's when none is loaded)."""
        return self._schedule_of(self.model)

    def _schedule_of(self, model: StableDiffusionModel | None) -> DiscreteSchedule:
        key = id(model.schedule) if model is not None else 0
        if key not in self._schedules:
            base = model.schedule if model is not None else DiscreteSchedule.sd()
            self._schedules = {k: v for k, v in self._schedules.items() if k == 0} | {key: base.to(self.device)}
        return self._schedules[key]

    # ---- model residency -------------------------------------------------------------------
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
        self.model = model
        self._place()
        if self.compile and getattr(model.unet, "_compiled_call_impl", None) is None:
            model.unet.compile(dynamic=None)
        self._text_encoders = self._encoders_of(model)
        self._text_encoder = self._text_encoders[0]
        self._embeddings = None
        self.vae_path = None if model.vae_path is None else Path(model.vae_path)
        if (None if vae_path is None else Path(vae_path)) != self.vae_path:
            self.set_vae(vae_path)
        return model

    # ---- memory modes and kept checkpoints ---------------------------------------------------
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
        from . import families
        family = families.detect_family(state_dict, name=str(path))   # read_checkpoint checked it: no error
        unet_size = 1 if self.fp8 else self.precision.unet.itemsize
        groups = [("unet", (family.unet_prefix,), unet_size), ("vae", (family.vae_prefix,), self.precision.vae.itemsize)]
        groups += [(f"text{'' if i == 0 else f'_{i + 1}'}", tuple(spec.prefixes), self.precision.text.itemsize)
                   for i, spec in enumerate(family.text)]
        return {name: sum(state_dict[k].numel() for k in state_dict if k.startswith(prefixes)) * itemsize
                for name, prefixes, itemsize in groups}

    def _place(self) -> None:
        """Put the resident model (and refiner) where ``memory_mode`` says; hooks for medvram / lowvram."""
        placed = (id(self.model), id(self._refiner), id(self.model.vae) if self.model else 0, self.memory_mode)
        if placed != self._placed:
            self._offloader.attach([self.model, self._refiner], self.memory_mode)
            self._placed = placed

    def _keep(self, model: StableDiffusionModel | None) -> None:
        """Keep a model being replaced for a quick switch back (``checkpoints_limit`` > 1), in RAM when
        ``keep_in_cpu``; the least recently used ones beyond the limit are freed."""
        if model is None or self.checkpoints_limit <= 1 or getattr(model, "key", None) is None:
            return
        self._offloader.detach()
        self._placed = ()
        if self.keep_in_cpu or self.memory_mode != "normal":
            for modules in network_groups(model).values():
                for module in modules:
                    module.to("cpu")
        self._kept[model.key] = model
        while len(self._kept) > self.checkpoints_limit - 1:
            self._kept.popitem(last=False)

    @property
    def kept_checkpoints(self) -> list[str]:
        """Paths of the models kept loaded besides the resident one, least recently used first."""
        return [model.path for model in self._kept.values()]

    def _encoders_of(self, model: StableDiffusionModel) -> list[TextEncoder]:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer()
        return [TextEncoder(text_model, self._tokenizer, spec, device=self.device)
                for text_model, spec in zip(model.text_models, model.family.text)]

    def set_fast_decoder(self, folder: str | Path | None) -> Path | None:
        """Decode with TAESD (Bohan Ou's tiny autoencoder: a fraction of the VAE's time, softer detail) from
        ``folder`` (``models/vae_approx``: ``taesd_decoder.*`` for SD 1.x / 2.x, ``taesdxl_decoder.*`` for
        SDXL); None: the model's VAE again. Returns the file used; ValueError when the folder has none for the
        loaded model's family."""
        from .preview import find_taesd, load_taesd
        if folder is None:
            self.fast_decoder = None
            return None
        model = self._require_model()
        path = find_taesd(Path(folder), model.family.name)
        if path is None:
            raise ValueError(f"--vae-decode taesd: no TAESD decoder for {model.family.label} in {folder} "
                             "(taesd_decoder.safetensors for SD 1.x / 2.x, taesdxl_decoder.safetensors for SDXL)")
        self.fast_decoder = load_taesd(path, self.device, self.precision.vae)
        return path

    def set_vae(self, vae_path: str | Path | None) -> None:
        """Replace the VAE with an external file; ``None`` restores the checkpoint's own."""
        model = self._require_model()
        if vae_path is None and self.vae_path is None:
            return
        model.vae = load_vae(vae_path or model.path, device=self._load_device, dtype=self.precision.vae)
        self.vae_path = None if vae_path is None else Path(vae_path)
        model.vae_path = None if vae_path is None else str(vae_path)
        self._place()

    def restore_weights(self) -> None:
        """Undo weight patches still merged from the last job (they stay while jobs ask for the same)."""
        if self.model is not None:
            self._patcher.restore(self.model)

    def unload(self, *, kept_models: bool = False) -> None:
        """Free the resident model (and, unless ``kept_models``, the kept ones too)."""
        freed = self.model is not None or self._refiner is not None or (self._kept and not kept_models)
        self._patcher.forget()
        self._offloader.detach()
        self._placed = ()
        if not kept_models:
            self._kept.clear()
        self.model = None
        self.fast_decoder = None
        self._refiner = None
        self._text_encoder = None
        self._text_encoders = []
        self._embeddings = None
        self.vae_path = None
        if freed:                           # (a first load has nothing to collect: 0.17 s saved)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _require_model(self) -> StableDiffusionModel:
        if self.model is None:
            raise RuntimeError("no checkpoint is loaded")
        return self.model

    @property
    def text_encoder(self) -> TextEncoder | None:
        """The loaded model's prompt encoder (None without a model)."""
        return self._text_encoder

    @property
    def embeddings(self) -> EmbeddingDatabase:
        """Textual-inversion embeddings of ``embeddings_dir`` for the loaded model, reread when files change."""
        self._require_model()
        if self._embeddings is None or self._embeddings.folder != self.embeddings_dir:
            widths = {e.name: e.width for e in self._text_encoders}
            self._embeddings = EmbeddingDatabase(self.embeddings_dir, widths,
                                                 lambda text: self._text_encoder.tokenize([text])[0])
        self._embeddings.refresh()
        return self._embeddings

    def prompt_encoder(self, request: GenerationRequest, model: StableDiffusionModel | None = None) -> PromptEncoder:
        """The prompt encoder of the resident model (or ``model``, the refiner) for ``request``."""
        given = {key: getattr(request, key) for key in PROMPT_SETTINGS if getattr(request, key) is not None}
        options = PromptOptions(clip_skip=request.clip_skip, **given)
        sizes = SizeConditioning.for_image(request.width, request.height, original_size=request.original_size,
                                           crops_coords_top_left=request.crops_coords_top_left,
                                           target_size=request.target_size)
        if model is None or model is self.model:
            model, encoders, embeddings = self._require_model(), self._text_encoders, self.embeddings
        else:
            encoders, embeddings = self._encoders_of(model), None
        return PromptEncoder(encoders, embeddings, options, self.hash_cache, vector_kind=model.family.vector,
                             sizes=sizes)

    def refiner(self, path: str | Path) -> StableDiffusionModel:
        """The refiner (or hires fix's second-pass checkpoint), loaded once and kept beside the resident model
        (without its VAE: the base model's decodes) while jobs ask for it. Its latent space must be the
        resident model's."""
        model = self._require_model()
        if self._refiner is not None and self._refiner.path == str(path):
            return self._refiner
        self._refiner = None
        gc.collect()
        refiner = load_checkpoint(path, device=self._load_device, dtype=self.precision.unet, prediction=self.prediction,
                                  with_vae=False, text_dtype=self.precision.text)
        if refiner.family.latent_scale != model.family.latent_scale:
            raise CheckpointError(f"{path}: a {refiner.family.label} model cannot refine {model.family.label} "
                                  "images (their latent spaces differ)")
        if self.fp8:
            store_weights_in_fp8(refiner.unet)
        if self.compile:
            refiner.unet.compile(dynamic=None)
        self._refiner = refiner
        self._place()
        return refiner

    @property
    def is_inpainting_model(self) -> bool:
        return self._require_model().family.is_inpainting

    # ---- building blocks -------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (the distribution's mean, as A1111)."""
        model = self._require_model()
        latent = self._vae_call(model.vae.encode, images)
        return latent * model.family.latent_scale

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (B, 3, H, W) in [-1, 1], one image at a time to bound memory. With a TAESD decoder
        set (``set_fast_decoder``, ``--vae-decode taesd``) it decodes instead of the model's VAE."""
        model = self._require_model()
        if self.fast_decoder is not None:
            from .preview import taesd_preview
            return torch.cat([taesd_preview(self.fast_decoder, z[None]) for z in latents]).float()
        with self._allocator.decode_working_memory() if self._allocator else contextlib.nullcontext():
            return torch.cat([self._vae_call(model.vae.decode, z[None] / model.family.latent_scale)
                              for z in latents])

    def _vae_call(self, fn, x: torch.Tensor) -> torch.Tensor:
        vae = self._require_model().vae
        dtype = next(vae.parameters()).dtype
        out = fn(x.to(self.device, dtype)).float()
        if dtype != torch.float32 and torch.isnan(out).any():
            vae.to(torch.float32)                   # the fp16 VAE overflowed: stay in fp32 from now on
            out = fn(x.to(self.device, torch.float32)).float()
        return out

    # ---- generation ------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None,
                 control: JobControl | None = None, hooks: JobHooks | None = None) -> GenerationResult:
        """``hooks``: extensions' per-job callbacks and extra-network tag handlers (``lora``). They fill the
        job's ``JobPatches``, applied to the resident model for this job only. Tags of a kind nobody
        handles are removed and reported in ``warnings``."""
        request.validate()
        model = self._require_model()
        spec, scheduler_key = registry.resolve(request.sampler_name, request.scheduler)
        refiner = self.refiner(request.refiner_checkpoint) if request.refiner_checkpoint else None
        if refiner is None and not (request.enable_hr and request.hr_checkpoint_name):
            self._refiner = None     # kept only while jobs ask for it (refiner, hires checkpoint): its memory goes back
        self._place()
        steps, batch = request.steps, request.batch_size
        options = {"sdxl": True} if (model.family.is_sdxl and scheduler_key != "automatic"
                                     and registry.effective_scheduler(spec, scheduler_key) == "align_your_steps") else {}
        full_sigmas = sigmas = registry.build_sigmas(spec, scheduler_key, self._sampling_schedule(spec), steps,
                                                     **options)
        extra: dict = {}
        seed = resolve_seed(request.seed)
        all_seeds = image_seeds(seed, batch * request.n_iter)
        subseed = resolve_seed(request.subseed)
        all_subseeds = image_seeds(subseed, batch * request.n_iter)
        sampler_kwargs, sampler_info = _sampler_parameters(spec, request)

        prepared, noise_sigma = None, None
        if request.init_image is not None:
            prepared = self._prepare_img2img(request, all_seeds[:batch])
            noise_sigma, sigmas = _img2img_sigmas(spec, scheduler_key, self.schedule, sigmas, steps,
                                                  request.denoising_strength)
            extra["Denoising strength"] = request.denoising_strength
            if request.mask is not None:
                extra.update(self._inpaint_infotext(request, masked=prepared.image_mask is not None))
            if request.initial_noise_multiplier != 1.0:
                extra["Noise multiplier"] = request.initial_noise_multiplier

        extra.update(sampler_info)
        if request.enable_hr:
            extra.update(self._hires_infotext(request, spec, scheduler_key))
        hooks = hooks or JobHooks()
        prompt, tags = extra_network_tags(request.prompt)
        if request.disable_extra_networks:
            tags = []
        ctx = JobContext(request, model, self.device, JobPatches(), extra, [], hooks.script_args, len(sigmas) - 1,
                         (request.width, request.height), batch)
        if request.tiling:
            ctx.patches.conv_padding = "circular"
            extra["Tiling"] = True
        for prepare in hooks.prepare:
            prepare(ctx)
        _run_extra_networks(tags, hooks.networks, ctx)
        switched = []
        try:
            with self._patcher.applied(model, ctx.patches):
                seeds = _JobSeeds(all_seeds, all_subseeds, sampler_kwargs)
                results, interrupted = self._sample_job(request, ctx, prompt, spec, sigmas, full_sigmas, seeds,
                                                        prepared, noise_sigma, progress, control, refiner, switched)
        finally:
            self._offloader.release()          # lowvram: a block left on the device by an exception goes back
        return GenerationResult(results, seed, spec.name, registry.scheduler_label(spec, scheduler_key),
                                extra, interrupted, ctx.warnings, refiner_switched=bool(switched), subseed=subseed)

    def _skipped_embeddings_named(self, model: StableDiffusionModel, *texts: str) -> list[str]:
        """A warning for each embedding a prompt names that was made for other text encoders (it is not used:
        its name stays ordinary text, as in A1111, which says nothing)."""
        database = self.embeddings
        found = []
        for name, reason in database.skip_reasons.items():
            pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)
            if any(pattern.search(text) for text in texts):
                found.append(f"embedding {reason}; the loaded model is {model.family.label}: not used")
        return found

    @staticmethod
    def _hires_infotext(request: GenerationRequest, spec, scheduler_key: str) -> dict:
        """A1111's hires fix keys, in the order its txt2img processing adds them."""
        from .upscale import hires_target
        info: dict = {"Denoising strength": request.denoising_strength}
        if request.hr_checkpoint_name:
            info["Hires checkpoint"] = Path(request.hr_checkpoint_name).stem
        if request.hr_sampler_name and request.hr_sampler_name != spec.name:
            info["Hires sampler"] = request.hr_sampler_name
        if request.hr_scheduler:
            hr_spec, hr_key = registry.resolve(request.hr_sampler_name or spec.name, request.hr_scheduler)
            if hr_key != scheduler_key:
                info["Hires schedule type"] = registry.scheduler_label(hr_spec, hr_key)
        if request.hr_prompt and request.hr_prompt != request.prompt:
            info["Hires prompt"] = request.hr_prompt
        if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
            info["Hires negative prompt"] = request.hr_negative_prompt
        key, value = hires_target(request.width, request.height, request.hr_scale, request.hr_resize_x,
                                  request.hr_resize_y).infotext
        info[key] = value
        if request.hr_second_pass_steps:
            info["Hires steps"] = request.hr_second_pass_steps
        if request.hr_upscaler is not None:
            info["Hires upscaler"] = request.hr_upscaler
        return info

    def _hires_pass(self, request: GenerationRequest, ctx: JobContext, samples: torch.Tensor, seeds: list[int],
                    subseeds: list[int], progress, control, iteration: int,
                    first_pass_steps: int) -> tuple[torch.Tensor, bool]:
        """A1111's ``sample_hr_pass``: the first pass's latents upscaled (in latent space, or decoded, upscaled
        as images and encoded again), cropped to the asked aspect ratio, then an img2img pass over them with
        the hires sampler, schedule type, steps, prompts and ``denoising_strength``. -> (latents, interrupted)"""
        from . import upscale
        model = ctx.model
        if request.hr_checkpoint_name:
            model = self.refiner(request.hr_checkpoint_name)
        target = upscale.hires_target(request.width, request.height, request.hr_scale, request.hr_resize_x,
                                      request.hr_resize_y)
        mode = request.hr_upscaler if request.hr_upscaler is not None else upscale.DEFAULT_LATENT_MODE
        if mode in upscale.LATENT_UPSCALE_MODES:
            latents = upscale.upscale_latent(samples, target.height, target.width, mode)
        else:
            images = [upscale.upscale_image(im.to_pil(img), target.width, target.height, mode)
                      for img in self.decode_latents(samples)]
            latents = self.encode_images(torch.stack([im.to_tensor(i) for i in images]).to(self.device))
        latents = upscale.truncate(latents, target)
        height, width = latents.shape[2] * 8, latents.shape[3] * 8
        hr_request = dataclasses.replace(
            request, width=width, height=height, prompt=request.hr_prompt or request.prompt,
            negative_prompt=request.hr_negative_prompt or request.negative_prompt)
        spec, scheduler_key = registry.resolve(request.hr_sampler_name or request.sampler_name,
                                               request.hr_scheduler or request.scheduler)
        steps = request.hr_second_pass_steps or request.steps
        sigmas = registry.build_sigmas(spec, scheduler_key, self._sampling_schedule(spec, model), steps)
        noise_sigma, sigmas = _img2img_sigmas(spec, scheduler_key, self._schedule_of(model), sigmas, steps,
                                              request.denoising_strength)
        schedule_steps = steps * 2 if spec.second_order else steps
        text, _ = extra_network_tags(hr_request.prompt)
        cond, uncond, empty = self._conditioning(hr_request, model, text, schedule_steps,
                                                 first_pass_steps=first_pass_steps)
        image_cond = (self._image_conditioning(hr_request, None, latents.shape[0])
                      if model.family.is_inpainting else None)
        patches = ctx.patches if model is ctx.model else None
        state = SamplingState(0, len(sigmas) - 1)
        denoiser = cfg_denoiser(self._model_denoiser(spec, model, patches), cond, uncond, request.cfg_scale,
                                image_cond=image_cond, check=None if control is None else control.check, empty=empty,
                                patches=patches, state=state)
        rng = _image_rng(request, seeds, subseeds, tuple(latents.shape[1:]), self.device)
        prepared = _Img2ImgInputs(latents, None, None)
        x = _start_latent(spec, rng.first(), sigmas, prepared, noise_sigma)
        noise_sampler = self._noise_sampler(spec, rng, x, sigmas, seeds)
        reporter = _progress_reporter(progress, iteration, request.n_iter, len(sigmas) - 1, state,
                                      ctx.patches.step_callbacks if patches is not None else ())
        return _sample(spec, denoiser, x, sigmas, noise_sampler, reporter, _sampler_parameters(spec, request)[0])

    def _sampling_schedule(self, spec, model: StableDiffusionModel | None = None) -> DiscreteSchedule:
        """The schedule the sigmas are built on and the denoiser maps sigmas with: the model's, or for LCM
        the sub-schedule of its original timesteps."""
        schedule = self._schedule_of(model or self.model)
        return schedule.every(len(schedule) // LCM_ORIGINAL_STEPS) if spec.lcm else schedule

    def _model_denoiser(self, spec, model: StableDiffusionModel, patches=None) -> ModelDenoiser:
        schedule = self._schedule_of(model)
        stride = len(schedule) // LCM_ORIGINAL_STEPS if spec.lcm else None
        return ModelDenoiser(model.unet, self._sampling_schedule(spec, model), model.prediction.kind, patches,
                             lcm_stride=stride)

    def _conditioning(self, request, model: StableDiffusionModel, prompt: str, schedule_steps: int,
                      encoder: PromptEncoder | None = None, *, first_pass_steps: int | None = None):
        """(cond MultiCond, uncond CondSchedule, empty-prompt padding or None) of ``model`` for a job;
        ``first_pass_steps``: for hires fix's second pass (``schedule.schedule``)."""
        encoder = encoder or self.prompt_encoder(request, model)
        uncond = encoder.schedule(request.negative_prompt, schedule_steps, negative=True,
                                  first_pass_steps=first_pass_steps)
        cond = encoder.multicond(prompt, schedule_steps, first_pass_steps=first_pass_steps)
        empty = encoder.encode([""])[0] if request.pad_cond_uncond else None
        return cond, uncond, empty

    def _sample_job(self, request, ctx: JobContext, prompt, spec, sigmas, full_sigmas, job_seeds: "_JobSeeds",
                    prepared, noise_sigma, progress, control, refiner=None,
                    switched=None) -> tuple[list[GeneratedImage], bool]:
        model, batch, patches = ctx.model, request.batch_size, ctx.patches
        all_seeds = job_seeds.seeds
        encoder = self.prompt_encoder(request)
        schedule_steps = request.steps * 2 if spec.second_order else request.steps   # A1111 counts model calls
        cond, uncond, empty = self._conditioning(request, model, prompt, schedule_steps, encoder)
        ctx.infotext.update(encoder.infotext())
        ctx.warnings.extend(self._skipped_embeddings_named(model, prompt, request.negative_prompt))
        needs_image_cond = model.family.is_inpainting or (refiner is not None and refiner.family.is_inpainting)
        image_cond = self._image_conditioning(request, prepared, batch) if needs_image_cond else None
        latent_shape = (4, request.height // 8, request.width // 8)
        model_denoiser = self._model_denoiser(spec, model, patches)
        check = None if control is None else control.check
        second = None
        if refiner is not None:
            r_cond, r_uncond, r_empty = self._conditioning(request, refiner, prompt, schedule_steps)
            r_model = self._model_denoiser(spec, refiner)
            r_image_cond = image_cond if refiner.family.is_inpainting else None
            switch_at = refiner_switch_flags(self.schedule, sigmas, request.refiner_switch_at)

            def second(state):
                return cfg_denoiser(r_model, r_cond, r_uncond, request.cfg_scale, image_cond=r_image_cond, check=check,
                                    empty=r_empty, state=state)

        def make_denoiser(state):   # a fresh one per batch: its call count (the schedule's step) starts at 0
            denoiser = cfg_denoiser(model_denoiser, cond, uncond, request.cfg_scale,
                                    image_cond=image_cond if model.family.is_inpainting else None,
                                    check=check, empty=empty, patches=patches, state=state)
            if second is not None:
                denoiser = switching_denoiser(denoiser, second(state), switch_at, state,
                                              on_switch=lambda: switched.append(True))
            if prepared is not None and prepared.keep_mask is not None:
                blend = masked_model_input if spec.vp_latent else masked_denoiser
                denoiser = blend(denoiser, prepared.init_latent, prepared.keep_mask)
            return denoiser

        results: list[GeneratedImage] = []
        interrupted = False
        for iteration in range(request.n_iter):
            if control is not None:
                control.new_batch()
            seeds = all_seeds[iteration * batch:(iteration + 1) * batch]
            subseeds = job_seeds.subseeds[iteration * batch:(iteration + 1) * batch]
            rng = _image_rng(request, seeds, subseeds, latent_shape, self.device)
            noise = rng.first()
            if prepared is not None and request.initial_noise_multiplier != 1.0:
                noise = noise * request.initial_noise_multiplier
            x = _start_latent(spec, noise, sigmas, prepared, noise_sigma)
            noise_sampler = self._noise_sampler(spec, rng, x, full_sigmas, seeds)
            state = SamplingState(0, len(sigmas) - 1)
            reporter = _progress_reporter(progress, iteration, request.n_iter, len(sigmas) - 1, state,
                                          patches.step_callbacks)
            samples, interrupted = _sample(spec, make_denoiser(state), x, sigmas, noise_sampler, reporter,
                                           job_seeds.sampler_kwargs)
            if request.enable_hr and prepared is None and not interrupted:
                samples, interrupted = self._hires_pass(request, ctx, samples, seeds, subseeds, progress, control,
                                                        iteration, schedule_steps)
            if prepared is not None and prepared.keep_mask is not None:
                samples = samples * (1.0 - prepared.keep_mask) + prepared.init_latent * prepared.keep_mask
            for img, img_seed, img_subseed in zip(self.decode_latents(samples), seeds, subseeds):
                pil = im.to_pil(img)
                if prepared is not None and prepared.overlay is not None:
                    pil = im.apply_overlay(pil, prepared.paste_box, prepared.overlay)
                results.append(GeneratedImage(pil, img_seed, request.prompt, request.negative_prompt, img_subseed))
            if interrupted:
                break
        return results, interrupted

    def _noise_sampler(self, spec, rng: ImageRNG, x, sigmas, seeds):
        """``sigmas``: the full schedule; A1111 spans the Brownian tree over it in img2img too. Every other
        sampler that draws noise (ancestral steps, Euler's churn, DDIM with eta) draws it from the images'
        own generators, as A1111's ``randn_like`` does."""
        if spec.noise == "brownian":
            positive = sigmas[sigmas > 0]
            return BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seeds)
        return rng.noise_sampler

    @staticmethod
    def _inpaint_infotext(request: GenerationRequest, masked: bool) -> dict:
        """A1111's extra parameters; ``masked`` is False when "only masked" fell back to img2img."""
        info = {}
        if request.inpainting_mask_invert:
            info["Mask mode"] = "Inpaint not masked"
        if request.mask_blur > 0:
            info["Mask blur"] = request.mask_blur
        if masked and request.inpaint_full_res:
            info["Inpaint area"] = "Only masked"
            info["Masked area padding"] = request.inpaint_full_res_padding
        if masked and request.inpainting_fill != 1:
            info["Masked content"] = im.MASKED_CONTENT[request.inpainting_fill]
        return info

    def _prepare_img2img(self, request: GenerationRequest, first_seeds: list[int]) -> _Img2ImgInputs:
        """A1111's StableDiffusionProcessingImg2Img.init, step by step."""
        width, height, batch = request.width, request.height, request.batch_size
        image = im.flatten(request.init_image)
        image_mask = overlay_mask = region = paste_box = overlay = None
        if request.mask is not None:
            mask = im.binary_mask(request.mask)
            if request.inpainting_mask_invert:
                mask = ImageOps.invert(mask)
            if request.mask_blur > 0:
                mask = im.blur_mask(mask, request.mask_blur)
            if request.inpaint_full_res:
                overlay_mask = mask
                region = im.crop_region(mask, request.inpaint_full_res_padding)
                if region is not None:
                    region = im.expand_crop_region(region, width, height, mask.width, mask.height)
                    image_mask = im.resize_image(2, mask.crop(region), width, height)
                    x1, y1, x2, y2 = region
                    paste_box = (x1, y1, x2 - x1, y2 - y1)
                else:
                    overlay_mask = None            # blank mask: plain img2img, as A1111
            else:
                image_mask = im.resize_image(request.resize_mode, mask, width, height)
                doubled = np.clip(np.asarray(image_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
                overlay_mask = Image.fromarray(doubled)
        if region is None and request.resize_mode != 3:
            image = im.resize_image(request.resize_mode, image, width, height)
        if image_mask is not None:
            if overlay_mask.size != image.size:
                overlay_mask = im.resize_image(request.resize_mode, overlay_mask, image.width, image.height)
            overlay = im.overlay(image, ImageOps.invert(overlay_mask))
        if region is not None:
            image = im.resize_image(2, image.crop(region), width, height)
        if image_mask is not None and request.inpainting_fill != 1:
            image = im.fill(image, image_mask)

        source = im.to_tensor(image)[None].expand(batch, -1, -1, -1).to(self.device)
        init_latent = self.encode_images(source)
        if request.resize_mode == 3 and region is None:
            init_latent = torch.nn.functional.interpolate(init_latent, size=(height // 8, width // 8),
                                                          mode="bilinear")
        keep_mask = None
        if image_mask is not None:
            size = (init_latent.shape[3], init_latent.shape[2])
            blend_mask = request.latent_mask if request.latent_mask is not None else image_mask   # A1111's order
            latmask = np.asarray(blend_mask.convert("RGB").resize(size), dtype=np.float32)[..., 0] / 255.0
            latmask = torch.from_numpy(np.around(latmask)).to(self.device)[None, None]
            keep_mask = 1.0 - latmask
            if request.inpainting_fill == 2:
                noise = ImageRNG(first_seeds, tuple(init_latent.shape[1:]), self.device).next()
                init_latent = init_latent * keep_mask + noise * latmask
            elif request.inpainting_fill == 3:
                init_latent = init_latent * keep_mask
        return _Img2ImgInputs(init_latent, source, image_mask, keep_mask, overlay, paste_box)

    def _image_conditioning(self, request, prepared: _Img2ImgInputs | None, batch: int) -> torch.Tensor:
        """Extra UNet input of 9-channel inpainting models: [mask, latent of the masked image]."""
        if prepared is None:   # txt2img: everything is "to be painted", the masked image is grey
            source = torch.zeros(batch, 3, request.height, request.width, device=self.device)
            mask = torch.ones(1, 1, request.height, request.width, device=self.device)
        else:
            source = prepared.source
            if prepared.image_mask is not None:
                arr = np.asarray(prepared.image_mask.convert("L"), dtype=np.float32) / 255.0
                mask = torch.from_numpy(arr).round()[None, None].to(self.device)
            else:
                mask = torch.ones(1, 1, *source.shape[-2:], device=self.device)
        latent = self.encode_images(source * (1.0 - mask))
        mask = torch.nn.functional.interpolate(mask, size=latent.shape[-2:]).expand(latent.shape[0], -1, -1, -1)
        return torch.cat([mask, latent], dim=1)


def _file_key(path) -> tuple:
    """A checkpoint file as the kept-models cache knows it: its path and identity (size, mtime)."""
    resolved = Path(path).resolve()
    try:
        stat = os.stat(resolved)
    except OSError:
        return (str(resolved),)
    return (str(resolved), stat.st_size, stat.st_mtime_ns)


def _sampler_parameters(spec, request: GenerationRequest) -> tuple[dict, dict]:
    """``registry.sampler_parameters`` of the request's eta / s_churn / s_tmin / s_tmax / s_noise for ``spec``."""
    return registry.sampler_parameters(spec, eta=request.eta, s_churn=request.s_churn, s_tmin=request.s_tmin,
                                       s_tmax=request.s_tmax, s_noise=request.s_noise)


def _image_rng(request: GenerationRequest, seeds: list[int], subseeds: list[int], shape: tuple[int, int, int],
               device: torch.device) -> ImageRNG:
    """The batch's generators with the request's variation seed and seed resize (0 / -1 sides: off)."""
    resize = (request.seed_resize_from_h, request.seed_resize_from_w)
    return ImageRNG(seeds, shape, device, subseeds=subseeds, subseed_strength=request.subseed_strength,
                    seed_resize_from=resize if min(resize) > 0 else None)


def _img2img_sigmas(spec, scheduler_key: str, schedule: DiscreteSchedule, sigmas: torch.Tensor, steps: int,
                    denoising_strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sigma the init latent is noised to, the sigmas sampled) of an img2img pass: the sampler's own rule
    (DDIM, UniPC with the automatic schedule), else the last ``t_enc + 1`` of ``sigmas`` (A1111's)."""
    t_enc = int(min(denoising_strength, 0.999) * steps)
    if spec.own_img2img is not None and scheduler_key == "automatic":
        return spec.own_img2img(schedule, steps, t_enc)
    sigmas = sigmas[steps - t_enc - 1:]
    return sigmas[0], sigmas


def refiner_switch_flags(schedule: DiscreteSchedule, sigmas: torch.Tensor, switch_at: float) -> list[bool]:
    """Per schedule sigma: whether the refiner runs from there, by A1111's rule (``apply_refiner``): the
    sigma's nearest timestep ``t`` in the model's table, done when ``(999 - t) / 1000 >= switch_at``."""
    table = schedule.sigmas.detach().to("cpu")
    flags = []
    for sigma in sigmas.detach().to("cpu"):
        t = int(torch.argmin((table - sigma).abs()))
        flags.append((len(table) - 1 - t) / len(table) >= switch_at)
    return flags


def _run_extra_networks(tags: list[ExtraNetworkTag], networks: Mapping[str, ExtraNetworkHandler],
                        ctx: JobContext) -> None:
    by_kind: dict[str, list[ExtraNetworkTag]] = {}
    for tag in tags:
        by_kind.setdefault(tag.kind, []).append(tag)
    for kind, found in by_kind.items():
        handler = networks.get(kind)
        if handler is None:
            known = ", ".join(sorted(networks)) or "none"
            ctx.warnings.append(f"{' '.join(t.text for t in found)}: no extension handles <{kind}:...> tags "
                                f"(known kinds: {known}); removed from the prompt")
            continue
        handler(found, ctx)


def _start_latent(spec, noise, sigmas, prepared: _Img2ImgInputs | None, noise_sigma):
    """The sampler's first ``x``: noise at ``sigmas[0]`` (txt2img) or the init latent noised to
    ``noise_sigma`` (img2img). Timestep samplers (``vp_latent``) start, as in A1111, from unscaled noise in
    the variance-preserving space, which is ``noise * sqrt(1 + sigma^2)`` in the engine's space."""
    if prepared is not None:
        x = prepared.init_latent + noise * noise_sigma
        if spec.vp_latent:   # VP latent noised to noise_sigma, seen by the sampler as at sigmas[0]
            x = x * ((1.0 + sigmas[0] ** 2) / (1.0 + noise_sigma ** 2)).sqrt()
        return x
    if spec.vp_latent:
        return noise * (1.0 + sigmas[0] ** 2).sqrt()
    return noise * sigmas[0]


def _progress_reporter(progress: ProgressCallback | None, iteration: int, iterations: int, total: int,
                       state: SamplingState | None = None, step_callbacks=()):
    """A k-diffusion callback that remembers the last x0 prediction, keeps ``state`` (A1111's
    ``sampling_step``) and forwards progress to the job and the extensions' step callbacks."""
    def callback(d):
        callback.last_denoised = d["denoised"]
        if state is not None:
            state.sampling_step = d["i"]
            state.steps_reported = d["i"] + 1
        if progress is not None or step_callbacks:
            report = Progress(d["i"] + 1, total, iteration, iterations, d["x"], d["denoised"])
            for step_callback in step_callbacks:
                step_callback(report)
            if progress is not None:
                progress(report)
    callback.last_denoised = None
    return callback


def _sample(spec, denoiser, x, sigmas, noise_sampler, callback, options=None) -> tuple[torch.Tensor, bool]:
    """Run the sampler -> (latent, interrupted). Interrupt and skip keep the last x0 prediction, as
    A1111 does, so the partial image is still shown and saved. ``options``: the request's sampler
    parameters (``registry.sampler_parameters``)."""
    try:
        samples = spec.function(denoiser, x, sigmas, callback=callback, noise_sampler=noise_sampler,
                                **{**spec.options, **(options or {})})
    except (Interrupted, Skipped) as stop:
        last = callback.last_denoised
        return (x if last is None else last), isinstance(stop, Interrupted)
    if spec.vp_latent:
        samples = samples / (1.0 + sigmas[-1] ** 2).sqrt()
    return samples, False
