"""The project's folders. Everything is relative to a root chosen by the caller (no globals)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
VAE_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    root: Path = PROJECT_ROOT
    ckpt_dir: Path | None = None
    vae_dir: Path | None = None
    outdir: Path | None = None

    @property
    def checkpoints(self) -> Path:
        return self.ckpt_dir or self.root / "models" / "checkpoints"

    @property
    def vae(self) -> Path:
        return self.vae_dir or self.root / "models" / "vae"

    @property
    def outputs(self) -> Path:
        return self.outdir or self.root / "outputs"

    @property
    def hash_cache(self) -> Path:
        return self.root / "cache" / "hashes.json"


def list_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Model files directly in ``folder`` or its subfolders, sorted; symlinks leaving it are skipped."""
    if not folder.is_dir():
        return []
    base = folder.resolve()
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in extensions and path.is_file() and path.resolve().is_relative_to(base):
            found.append(path)
    return found
