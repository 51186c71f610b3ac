"""Command line: ``python app.py`` serves the web UI (``webui.server``); subcommands run headless jobs."""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from .paths import PROJECT_ROOT, Paths, default_checkpoint
from .server import PREDICTIONS, add_memory_args, add_server_args, compile_cache, memory_mode

SUBCOMMANDS = ("txt2img", "img2img")


def _size(text: str) -> tuple[int, int]:
    """``WxH`` -> (height, width), the order of SDXL's size conditioning."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1024x1024 (got {text!r})")
    return int(height), int(width)


def _pair(text: str) -> tuple[int, int]:
    top, sep, left = text.partition(",")
    if not sep or not top.strip().isdigit() or not left.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected TOP,LEFT, e.g. 0,0 (got {text!r})")
    return int(top), int(left)


def _add_generation_args(p: argparse.ArgumentParser, img2img: bool) -> None:
    p.add_argument("--ckpt", type=Path,
                   help="checkpoint file (default: the first in --ckpt-dir that is not the demo model, "
                        "else the demo model)")
    p.add_argument("--ckpt-dir", type=Path, help="folder of checkpoints (default: models/checkpoints)")
    p.add_argument("--vae", type=Path, help="external VAE file replacing the checkpoint's own")
    p.add_argument("--prompt", "-p", default="")
    p.add_argument("--negative-prompt", "-n", default="")
    p.add_argument("--sampler", default="Euler", help='sampler name, e.g. "Euler a", "DPM++ 2M Karras"')
    p.add_argument("--scheduler", default="automatic", help="schedule type (automatic, uniform, karras, ...)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=-1, help="-1 = random; image i of the job uses seed+i")
    p.add_argument("--width", type=int, help="default: the model's native size (512 for SD 1.x)")
    p.add_argument("--height", type=int, help="default: the model's native size (512 for SD 1.x)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--n-iter", type=int, default=1, help="batch count")
    p.add_argument("--clip-skip", type=int, default=1)
    p.add_argument("--emphasis", default="Original", choices=("Original", "No norm", "Ignore", "None"),
                   help="how (word:1.2) / [word] weights apply (A1111's setting)")
    p.add_argument("--style", action="append", default=[], metavar="NAME",
                   help="a style from <data-dir>/styles.csv (repeatable, applied in order)")
    p.add_argument("--embeddings-dir", type=Path, help="textual-inversion embeddings (default: <data-dir>/models/embeddings)")
    p.add_argument("--precision", default="auto", choices=("auto", "full", "half", "bf16"),
                   help="auto: fp16 on CUDA; on CPU bf16 where the processor has it natively, else fp32")
    p.add_argument("--no-half", action="store_true", help="keep every network in float32")
    p.add_argument("--no-half-vae", action="store_true", help="keep the VAE in float32")
    p.add_argument("--vae-decode", choices=("full", "taesd"), default="full",
                   help="taesd: decode with TAESD from <data-dir>/models/vae_approx (much faster, softer detail)")
    add_memory_args(p)
    p.add_argument("--prediction", choices=PREDICTIONS,
                   help="force what the model predicts (default: from the file: SD 2.x measured, v_pred keys)")
    p.add_argument("--refiner", type=Path, metavar="FILE", help="a checkpoint that takes over at --refiner-switch-at")
    p.add_argument("--refiner-switch-at", type=float, default=0.8,
                   help="fraction of the schedule after which the refiner runs (default 0.8)")
    p.add_argument("--original-size", type=_size, metavar="WxH", help="SDXL size conditioning (default: the image size)")
    p.add_argument("--target-size", type=_size, metavar="WxH", help="SDXL size conditioning (default: the image size)")
    p.add_argument("--crop-top-left", type=_pair, metavar="TOP,LEFT", help="SDXL crop conditioning (default 0,0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("-o", "--output", type=Path,
                   help="a .png path for one image, or a folder for images and grid "
                        "(default: <outdir>/<kind>-images/<date>, grids in <outdir>/<kind>-grids/<date>)")
    p.add_argument("--outdir", type=Path, help="root of the default output folders (default: <data-dir>/outputs)")
    p.add_argument("--data-dir", type=Path,
                   help="base folder of user data: models/, outputs/, cache/ (default: the project folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if img2img:
        p.add_argument("--init-image", type=Path, required=True)
        p.add_argument("--denoising-strength", type=float, default=0.75)
        p.add_argument("--resize-mode", type=int, default=0,
                       help="0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale")
        p.add_argument("--mask", type=Path, help="inpainting mask (white = repaint)")
        p.add_argument("--mask-blur", type=int, default=4)
        p.add_argument("--inpainting-fill", type=int, default=1,
                       help="masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing")
        p.add_argument("--inpaint-full-res", action="store_true", help='inpaint area "Only masked"')
        p.add_argument("--inpaint-full-res-padding", type=int, default=32)
        p.add_argument("--inpainting-mask-invert", action="store_true", help="repaint what is NOT masked")


def build_parser() -> argparse.ArgumentParser:
    # no abbreviations at the top: argparse matches them across the subcommands' options too, so a
    # subcommand's --vae would be "ambiguous" with the server's --vae-dir / --vae-decode
    parser = argparse.ArgumentParser(prog="app.py", description="Stable Diffusion web UI and headless jobs.",
                                     allow_abbrev=False)
    add_server_args(parser)
    sub = parser.add_subparsers(dest="command")
    _add_generation_args(sub.add_parser("txt2img", help="generate images from a prompt"), img2img=False)
    _add_generation_args(sub.add_parser("img2img", help="transform or inpaint an image"), img2img=True)
    _add_train_demo_args(sub.add_parser("train-demo", help="train the small demo model on procedural shape scenes"))
    return parser


def _add_train_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path,
                   help="checkpoint to write (default: models/checkpoints/webui-demo-<size>px.safetensors)")
    p.add_argument("--size", type=int, default=64, help="image side the model is trained at (its native size)")
    p.add_argument("--minutes", type=float, default=60.0, help="time budget of the whole run; sets the step counts")
    p.add_argument("--vae-steps", type=int, help="VAE steps (default: planned from --minutes)")
    p.add_argument("--text-steps", type=int, help="text-encoder stage steps (default: 400)")
    p.add_argument("--unet-steps", type=int, help="UNet steps (default: planned from --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, help="training state folder (default: cache/train-demo-<size>px)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --work-dir (its settings win)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--smoke", action="store_true", help="tiny networks, a few steps: checks the pipeline in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train_demo(args) -> int:
    from .demo.train import TrainConfig, train

    settings = dict(size=args.size, seed=args.seed, minutes=args.minutes, threads=args.threads)
    settings.update({k: v for k, v in (("vae_steps", args.vae_steps), ("text_steps", args.text_steps),
                                                     ("unet_steps", args.unet_steps))
                     if v is not None})
    try:
        config = TrainConfig.smoke(**settings) if args.smoke else TrainConfig(**settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = f"webui-demo-{args.size}px{'-smoke' if args.smoke else ''}"
    out = args.out or Paths().checkpoints / f"{name}.safetensors"
    work_dir = args.work_dir or PROJECT_ROOT / "cache" / f"train-{name.removeprefix('webui-')}"
    try:
        train(config, out, work_dir, resume=args.resume, progress=not args.quiet)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _open_image(path: Path, what: str):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise SystemExit(f"error: cannot read {what} {path}: {exc}") from None


def _pick_checkpoint(args, paths: Paths) -> Path:
    if args.ckpt is not None:
        return args.ckpt
    found = default_checkpoint(paths)
    if found is None:
        raise SystemExit(f"error: no checkpoint given and none found in {paths.checkpoints}; "
                         "put a .safetensors file there or pass --ckpt PATH")
    return found


def _require_file(path: Path | None, what: str) -> None:
    if path is not None and not path.is_file():
        raise SystemExit(f"error: {what} {path} {'is not a file' if path.exists() else 'not found'}")


def run_generation(args) -> int:
    paths = Paths(root=args.data_dir or PROJECT_ROOT, ckpt_dir=args.ckpt_dir, outdir=args.outdir,
                  embeddings_dir=args.embeddings_dir)
    ckpt = _pick_checkpoint(args, paths)
    _require_file(ckpt, "checkpoint file")     # before importing torch: a typo fails fast
    _require_file(args.vae, "VAE file")
    _require_file(args.refiner, "refiner file")
    images = {}
    if args.command == "img2img":
        images["init_image"] = _open_image(args.init_image, "init image")
        images["mask"] = _open_image(args.mask, "mask") if args.mask else None

    from .engine.files import CheckpointError
    from .engine.pipeline import Engine, GenerationRequest
    from .jobs import saving
    from .jobs.generation import ModelInfo, save_result
    from .progress_bar import StepBar

    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, sampler_name=args.sampler,
        scheduler=args.scheduler, steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed,
        width=args.width or 512, height=args.height or 512, batch_size=args.batch_size, n_iter=args.n_iter,
        clip_skip=args.clip_skip, emphasis=args.emphasis, original_size=args.original_size,
        target_size=args.target_size, crops_coords_top_left=args.crop_top_left,
        refiner_checkpoint=str(args.refiner) if args.refiner else None, refiner_switch_at=args.refiner_switch_at)
    if args.command == "img2img":
        request.init_image, request.mask = images["init_image"], images["mask"]
        request.denoising_strength = args.denoising_strength
        request.resize_mode = args.resize_mode
        request.mask_blur = args.mask_blur
        request.inpainting_fill = args.inpainting_fill
        request.inpaint_full_res = args.inpaint_full_res
        request.inpaint_full_res_padding = args.inpaint_full_res_padding
        request.inpainting_mask_invert = args.inpainting_mask_invert
    try:
        if args.style:
            from .engine.prompts.styles import StyleDatabase
            request.prompt, request.negative_prompt = StyleDatabase(paths.styles).apply(
                request.prompt, request.negative_prompt, args.style)
        request.validate()
        from .engine.sampling import registry
        registry.resolve(request.sampler_name, request.scheduler)
        compile_cache(args, paths.root)
        engine = Engine(args.device, args.precision, no_half=args.no_half, no_half_vae=args.no_half_vae,
                        prediction=args.prediction, memory=memory_mode(args), fp8=args.fp8, compile=args.compile)
        loaded = engine.load(ckpt, vae_path=args.vae)
        if args.vae_decode == "taesd":
            engine.set_fast_decoder(paths.root / "models" / "vae_approx")
        engine.embeddings_dir, engine.hash_cache = paths.embeddings, paths.hash_cache
        request.width = args.width or loaded.native_size   # validated above with 512 in their place
        request.height = args.height or loaded.native_size
    except (ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = ModelInfo.of(ckpt, args.vae, paths.hash_cache)
    refiner = ModelInfo.of(args.refiner, hash_cache=paths.hash_cache) if args.refiner else None
    try:
        with StepBar(disable=args.quiet) as bar:
            result = engine.generate(request, progress=bar.update)
    except CheckpointError as exc:            # a refiner that is not a checkpoint or does not fit
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.output is not None:
        out, grid_dir = args.output, None          # a folder given with -o holds the grid too
    else:
        today = datetime.date.today()              # A1111: <kind>-images/<date>, <kind>-grids/<date>
        out = saving.dated_folder(paths.outputs, args.command, today)
        grid_dir = saving.grid_folder(paths.outputs, args.command, today)
    for path in save_result(request, result, model, out, kind=args.command, grid_dir=grid_dir, refiner=refiner):
        print(path)
    if request.seed < 0:
        print(f"seed: {result.seed}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in SUBCOMMANDS:
        return run_generation(args)
    if args.command == "train-demo":
        return run_train_demo(args)
    from .server import run
    return run(args)
