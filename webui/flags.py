"""The flags the server and the command line share, declared once: where models, outputs and extensions are
(``add_folder_args``) and how the engine runs (``add_engine_args``: device, precision, memory modes, fp8,
compile, prediction, VAE decode). ``python app.py --device cpu`` and ``python app.py txt2img --device cpu`` both
work: a subcommand declares them again without defaults, so a value given before it is kept."""
from __future__ import annotations

import argparse
from pathlib import Path

PREDICTIONS = ("eps", "v")   # engine.families.PREDICTIONS (named here so that the flags need no torch import)


def _adder(p, defaults: bool):
    def add(*names, **kwargs):
        if not defaults:
            kwargs["default"] = argparse.SUPPRESS
        return p.add_argument(*names, **kwargs)
    return add


def add_folder_args(p, defaults: bool = True) -> None:
    add = _adder(p, defaults)
    add("--ckpt", type=Path, help="checkpoint file to use (default: the first in --ckpt-dir that is not a demo "
                                  "model, else the demo model)")
    add("--ckpt-dir", type=Path, help="folder of checkpoints (default: models/checkpoints)")
    add("--vae-dir", type=Path, help="folder of VAE files (default: models/vae)")
    add("--lora-dir", type=Path, help="folder of LoRA files (default: models/lora)")
    add("--embeddings-dir", type=Path, help="folder of textual-inversion embeddings (default: models/embeddings)")
    add("--outdir", type=Path, help="root of the output folders (default: <data-dir>/outputs)")
    add("--data-dir", type=Path, help="base folder of models/, outputs/, cache/ (default: the project folder)")
    add("--extensions-dir", type=Path, help="folder of extensions (default: the project's extensions/)")


def add_engine_args(p, defaults: bool = True) -> None:
    add = _adder(p, defaults)
    add("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    add("--precision", default="auto", choices=("auto", "full", "half", "bf16"),
        help="auto: fp16 on CUDA; on CPU bf16 where the processor has it natively, else fp32")
    add("--no-half", action="store_true", help="keep every network in float32")
    add("--no-half-vae", action="store_true", help="keep the VAE in float32")
    add("--vae-decode", choices=("full", "taesd"), default="full",
        help="taesd: decode with TAESD from <data-dir>/models/vae_approx (much faster, softer detail)")
    vram = p.add_mutually_exclusive_group()
    vadd = _adder(vram, defaults)
    vadd("--medvram", action="store_true",
         help="only the network in use (text encoder, UNet or VAE) on the GPU, the others in RAM")
    vadd("--lowvram", action="store_true",
         help="weights in RAM, each block copied to the GPU just before it runs (slow, least VRAM)")
    vadd("--normalvram", action="store_true",
         help="every network on the GPU (default: chosen from the free VRAM at each load)")
    add("--fp8", action="store_true",
        help="store the UNet's weights as float8 (half the memory of fp16), compute in fp16/bf16")
    add("--compile", action="store_true",
        help="torch.compile the UNet (slow first image per size, faster after; kernels cached on disk)")
    add("--prediction", default=None, choices=PREDICTIONS,
        help="force what every model predicts (default: from the file: SD 2.x measured, v_pred keys)")


def memory_mode(args) -> str:
    return "medvram" if args.medvram else "lowvram" if args.lowvram else "normal" if args.normalvram else "auto"


def engine_options(args) -> dict:
    """``Backend``'s engine keyword arguments from the engine flags."""
    return dict(device=args.device, precision=args.precision, no_half=args.no_half, no_half_vae=args.no_half_vae,
                prediction=args.prediction, vae_decode=args.vae_decode, memory=memory_mode(args), fp8=args.fp8,
                compile=args.compile)


def folders(args):
    """``Paths`` from the folder flags."""
    from .paths import PROJECT_ROOT, Paths
    return Paths(root=args.data_dir or PROJECT_ROOT, ckpt_dir=args.ckpt_dir, vae_dir=args.vae_dir, outdir=args.outdir,
                 lora_dir=args.lora_dir, embeddings_dir=args.embeddings_dir)


def extensions_folder(args) -> Path:
    from .paths import PROJECT_ROOT
    return args.extensions_dir or PROJECT_ROOT / "extensions"


def compile_cache(args, root: Path) -> None:
    """``--compile``: inductor's kernel cache under the data folder unless the user set one."""
    if getattr(args, "compile", False):
        import os
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "cache" / "torch-compile"))
