"""Command line: ``python app.py`` serves the web UI (``webui.server``); subcommands run headless jobs.

``txt2img`` / ``img2img`` go through the same door as the server: a ``Backend`` (without task persistence) with
the same extensions loaded, the same request parser (``jobs/request/cli.py``; ``--request FILE.json`` takes an
A1111 request body) and the same queue and executor, so LoRA tags, ControlNet units and every job hook work
here too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .flags import add_engine_args, add_folder_args, compile_cache, engine_options, extensions_folder, folders
from .paths import PROJECT_ROOT, Paths
from .server import add_server_args

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
    add_folder_args(p, defaults=False)
    add_engine_args(p, defaults=False)
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
    p.add_argument("--refiner", type=Path, metavar="FILE", help="a checkpoint that takes over at --refiner-switch-at")
    p.add_argument("--refiner-switch-at", type=float, default=0.8,
                   help="fraction of the schedule after which the refiner runs (default 0.8)")
    p.add_argument("--original-size", type=_size, metavar="WxH",
                   help="SDXL size conditioning (default: the image size)")
    p.add_argument("--target-size", type=_size, metavar="WxH", help="SDXL size conditioning (default: the image size)")
    p.add_argument("--crop-top-left", type=_pair, metavar="TOP,LEFT", help="SDXL crop conditioning (default 0,0)")
    p.add_argument("--request", type=Path, metavar="FILE.json",
                   help="an A1111 request body (as POST /sdapi/v1/txt2img or img2img takes it: hires fix, scripts, "
                        "refiner ...) instead of the generation flags")
    p.add_argument("--alwayson-scripts", type=Path, metavar="FILE.json",
                   help="the extensions' arguments: A1111's alwayson_scripts object (title -> {\"args\": [...]})")
    p.add_argument("--controlnet", action="append", metavar="KEY=VALUE,...",
                   help="a ControlNet unit, e.g. model=control_sd15_canny,image=hint.png,module=canny,weight=0.8 "
                        "(repeatable; sd-webui-controlnet's unit fields)")
    p.add_argument("-o", "--output", type=Path,
                   help="a .png path for one image, or a folder for images and grid "
                        "(default: <outdir>/<kind>-images/<date>, grids in <outdir>/<kind>-grids/<date>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if img2img:
        p.add_argument("--init-image", type=Path, help="the picture to start from (required without --request)")
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
    parser.subcommands = {}
    for kind, text in (("txt2img", "generate images from a prompt"), ("img2img", "transform or inpaint an image")):
        parser.subcommands[kind] = sub.add_parser(kind, help=text)
        _add_generation_args(parser.subcommands[kind], img2img=kind == "img2img")
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


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_generation(args, defaults: dict) -> int:
    if args.command == "img2img" and args.request is None and args.init_image is None:
        return _error("img2img needs --init-image FILE (or --request FILE.json)")
    paths = folders(args)
    log = lambda message: print(message, file=sys.stderr)   # noqa: E731

    from .hooks.registry import ExtensionManager
    from .jobs import saving
    from .jobs.backend import Backend
    from .jobs.queue import DONE
    from .jobs.request.cli import job_from_args
    from .options import Options
    from .progress_bar import StepBar

    options = Options(None, log=log)
    extensions = ExtensionManager(extensions_folder(args), paths, options, log)
    extensions.load()
    compile_cache(args, paths.root)
    backend = Backend(paths, options, extensions=extensions, log=log, persist=False, taesd_required=True,
                      tracebacks=False,
                      **engine_options(args))
    try:
        spec = job_from_args(backend.requests, args, defaults)    # checked before the model loads
        load = backend.start(spec.checkpoint, spec.vae)
        load.wait()
        if load.state != DONE:
            return _error(load.error or "the model did not load")
        if args.request is None and (args.width is None or args.height is None):   # the model's native size
            size = backend.native_size or 512
            spec = job_from_args(backend.requests, args, defaults, width=size, height=size)
        with StepBar(disable=args.quiet) as bar:
            job = backend.submit(spec, watch=bar.update)
            job.wait()
        if job.state != DONE:
            return _error(job.error or job.state, 1)
        out = job.result
        written = saving.save_to(out.images, args.output) if args.output is not None else out.paths
    except ValueError as exc:
        return _error(str(exc))
    finally:
        backend.stop()
    for path in written:
        print(path)
    if spec.request.seed < 0 and out.images:
        print(f"seed: {out.images[0].seed}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in SUBCOMMANDS:
        sub = parser.subcommands[args.command]
        return run_generation(args, {a.dest: a.default for a in sub._actions})
    if args.command == "train-demo":
        return run_train_demo(args)
    from .server import run
    return run(args)
