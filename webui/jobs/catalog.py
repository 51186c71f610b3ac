"""Which models exist, by name: the checkpoints and VAEs in the configured folders (paths relative to their
folder), plus files named on the command line. Every request names models from these lists; anything else --
including a path that tries to leave a folder -- is refused with the list.
"""
from __future__ import annotations

from pathlib import Path

from ..paths import CHECKPOINT_EXTENSIONS, DEMO_CHECKPOINT, VAE_EXTENSIONS, Paths, default_checkpoint, list_files

VAE_AUTOMATIC, VAE_NONE = "Automatic", "None"
NO_CHECKPOINT = ("", "None", "none")     # A1111's words for "no refiner"


def _relative_names(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    return {path.relative_to(folder).as_posix(): path for path in list_files(folder, extensions)}


class Catalog:
    """Model files by name. ``add_checkpoint`` / ``add_vae``: a file the user named on the command line, listed
    under its file name (a folder's own file of that name wins)."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self._extra_checkpoints: dict[str, Path] = {}
        self._extra_vaes: dict[str, Path] = {}

    def checkpoints(self) -> dict[str, Path]:
        """Name -> file: the checkpoint folder's files, plus the shipped demo model (and command-line files)."""
        found = _relative_names(self.paths.checkpoints, CHECKPOINT_EXTENSIONS)
        listed = {p.resolve() for p in found.values()}
        if DEMO_CHECKPOINT.is_file() and DEMO_CHECKPOINT.resolve() not in listed:
            found.setdefault(DEMO_CHECKPOINT.name, DEMO_CHECKPOINT)
        for name, path in self._extra_checkpoints.items():
            if path.resolve() not in listed:
                found.setdefault(name, path)
        return found

    def vaes(self) -> dict[str, Path]:
        found = _relative_names(self.paths.vae, VAE_EXTENSIONS)
        listed = {p.resolve() for p in found.values()}
        for name, path in self._extra_vaes.items():
            if path.resolve() not in listed:
                found.setdefault(name, path)
        return found

    def add_checkpoint(self, path: Path) -> str:
        """A checkpoint file named on the command line (``--ckpt``, ``--refiner``): its listed name."""
        return self._add(Path(path), self.checkpoints(), self._extra_checkpoints, "checkpoint")

    def add_vae(self, path: Path) -> str:
        """A VAE file named on the command line (``--vae``): its listed name."""
        return self._add(Path(path), self.vaes(), self._extra_vaes, "VAE")

    @staticmethod
    def _add(path: Path, found: dict[str, Path], extra: dict[str, Path], what: str) -> str:
        if not path.is_file():
            raise ValueError(f"{what} file {path} {'is not a file' if path.exists() else 'not found'}")
        listed = {p.resolve(): n for n, p in found.items()}
        if path.resolve() in listed:
            return listed[path.resolve()]
        name = path.name if path.name not in found else str(path.resolve())
        extra[name] = path
        return name

    def checkpoint_path(self, name: str) -> Path:
        found = self.checkpoints()
        if name not in found:
            raise ValueError(f"unknown checkpoint {name!r}; available: {', '.join(found) or 'none'}")
        return found[name]

    def find_checkpoint(self, title: str) -> str:
        """A listed name from what A1111 and infotext call a model: the name, ``name [hash]``, or the file
        name with or without its extension (``Model: v1-5-pruned-emaonly``). ValueError lists the names."""
        bare = title.split(" [", 1)[0].strip()
        found = list(self.checkpoints())
        for name in found:
            base = name.rsplit("/", 1)[-1]
            if bare in (name, name.rsplit(".", 1)[0], base, base.rsplit(".", 1)[0]):
                return name
        raise ValueError(f"unknown checkpoint {title!r}; available: {', '.join(found) or 'none'}")

    def check_vae(self, choice: str) -> str:
        """``choice`` if it is Automatic, None or a listed VAE; else ValueError listing them."""
        found = self.vaes()
        if choice not in (VAE_AUTOMATIC, VAE_NONE) and choice not in found:
            raise ValueError(f"unknown VAE {choice!r}; available: {', '.join([VAE_AUTOMATIC, VAE_NONE, *found])}")
        return choice

    def vae_path(self, choice: str | None, checkpoint: Path) -> Path | None:
        """``Automatic``: a VAE named like the checkpoint (``<stem>.vae.*`` beside it or ``<stem>.*`` in the
        VAE folder), else the checkpoint's own; ``None``: the checkpoint's own; else a listed VAE file."""
        if choice in (None, "", VAE_NONE):
            return None
        if choice == VAE_AUTOMATIC:
            stem = checkpoint.name.rsplit(".", 1)[0]
            for folder, name in ((checkpoint.parent, f"{stem}.vae"), (self.paths.vae, stem)):
                for ext in VAE_EXTENSIONS:
                    if (folder / (name + ext)).is_file():
                        return folder / (name + ext)
            return None
        return self.vaes()[self.check_vae(choice)]

    def default_checkpoint_name(self, wanted: str | None = None) -> str | None:
        """``wanted`` (the ``sd_model_checkpoint`` setting) when listed, else the default file's name."""
        found = self.checkpoints()
        if wanted in found:
            return wanted
        path = default_checkpoint(self.paths)
        if path is None:
            return None
        return next((name for name, p in found.items() if p == path), None)

    def native_size_of(self, name: str | None) -> int:
        """The size the UI starts with for a listed checkpoint, read without loading it: its
        ``webui.native_size`` metadata, else its family's (1024 for SDXL, 768 for SD 2.x, 512 for SD 1.x and
        for files that cannot be read)."""
        from ..engine import detection, families
        from ..engine.files import CheckpointError, read_metadata, read_state_dict

        if not name:
            return 512
        try:
            path = self.checkpoint_path(name)
            size = families.metadata_native_size(read_metadata(path))
            return size or detection.detect_family(read_state_dict(path), name=name, need_vae=False).native_size
        except (ValueError, CheckpointError, OSError):
            return 512

    def check_second_model(self, name: str, base: str | None) -> None:
        """A refiner (or hires fix's checkpoint) must work in the base checkpoint's latent space (read from the
        files' keys, nothing loaded); ``base``: the base checkpoint's listed name (None: not known yet)."""
        from ..engine import detection
        from ..engine.files import CheckpointError, read_state_dict

        def family(path: Path):
            return detection.detect_family(read_state_dict(path), name=path.name, need_vae=False)
        base_path = self.checkpoints().get(base) if base is not None else None
        try:
            refiner = family(self.checkpoint_path(name))
            model = family(base_path) if base_path is not None else None
        except CheckpointError as exc:
            raise ValueError(f"refiner {name}: {exc}") from None
        if model is not None and refiner.latent_scale != model.latent_scale:
            raise ValueError(f"refiner {name} is a {refiner.label} model; it cannot refine {model.label} images "
                             f"({base_path.name}): their latent spaces differ")
