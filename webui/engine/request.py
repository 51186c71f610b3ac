"""What a user asks the engine for: ``GenerationRequest``, with the checks the engine itself needs.

Field names follow A1111's API. ``validate`` checks invariants only -- what would make a generation wrong or
fail (sizes the networks cannot take, values outside their meaning). Limits a server sets (largest size,
steps, prompt length ...), A1111's sentinel strings ("None", "Use same checkpoint") and model names are the
business of ``webui/jobs/request/``, which builds every request and calls ``validate`` last.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from . import images as im
from .prompts.chunks import EMPHASIS_MODES
from .prompts.conditioning import PROMPT_SETTINGS

SETTING_FIELDS = (*PROMPT_SETTINGS, "pad_cond_uncond")   # request fields that default to the same-named setting


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
