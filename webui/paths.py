"""The project's folders. Everything is relative to a root chosen by the caller (no globals)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
VAE_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_PREFIX = "webui-demo-"  # the embedded demo model(s) trained by `app.py train-demo`
DEMO_CHECKPOINT = PROJECT_ROOT / "models" / "checkpoints" / "webui-demo-64px.safetensors"  # shipped


@dataclass(frozen=True)
class Paths:
    root: Path = PROJECT_ROOT
    ckpt_dir: Path | None = None
    vae_dir: Path | None = None
    outdir: Path | None = None
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    styles_file: Path | None = None

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
    def lora(self) -> Path:
        return self.lora_dir or self.root / "models" / "lora"

    @property
    def embeddings(self) -> Path:
        return self.embeddings_dir or self.root / "models" / "embeddings"

    @property
    def styles(self) -> Path:
        return self.styles_file or self.root / "styles.csv"

    @property
    def tasks(self) -> Path:
        """The task records (``jobs.store``): queued tasks survive a restart."""
        return self.root / "tasks.sqlite3"

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


def model_folders(user_folder: Path, kind: str) -> list[Path]:
    """Where files of one kind (``"lora"``, ``"controlnet"``) are looked for: the user's folder, then the
    project's ``models/<kind>`` (the shipped demo files) when that is another folder."""
    folders = [Path(user_folder)]
    shipped = PROJECT_ROOT / "models" / kind
    if shipped.resolve() != folders[0].resolve():
        folders.append(shipped)
    return folders


def files_by_stem(folders: list[Path], extensions: tuple[str, ...]) -> dict[str, Path]:
    """``list_files`` of each folder, by file stem; the first folder wins a name both have."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in list_files(folder, extensions):
            found.setdefault(path.stem, path)
    return found


def file_identity(path: Path) -> tuple[str, int, int]:
    """(path, mtime_ns, size): changes when the file does; a key for caches of what was read from it."""
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def is_demo_checkpoint(path: Path) -> bool:
    return path.name.startswith(DEMO_PREFIX)


def default_checkpoint(paths: Paths) -> Path | None:
    """The checkpoint used when the user names none: the first of the user's own files in the
    checkpoint folder, else a demo model there, else the demo model shipped with the project."""
    found = list_files(paths.checkpoints, CHECKPOINT_EXTENSIONS)
    candidates = [p for p in found if not is_demo_checkpoint(p)] or found
    if candidates:
        return candidates[0]
    return DEMO_CHECKPOINT if DEMO_CHECKPOINT.is_file() else None
