"""Saving images as A1111 does: `NNNNN-SEED.png` / `grid-NNNN.png` with the infotext embedded.

PNG: a `parameters` text chunk (PIL's `PngInfo.add_text`, which writes tEXt for latin-1 text and
iTXt (UTF-8) otherwise). JPEG/WebP: EXIF UserComment, `b"UNICODE\\0"` + UTF-16-BE (piexif's
"unicode" encoding, as A1111 writes it). Files are never overwritten and never leave `folder`.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import io
import itertools
import math
import operator
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from PIL import Image, PngImagePlugin

IMAGE_KINDS = ("txt2img", "img2img", "extras")
GRID_KINDS = ("txt2img", "img2img")
EXTENSIONS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
JPEG_QUALITY = 80  # A1111's opts.jpeg_quality default
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_MAX_TRIES = 10000


def _day(date: datetime.date | None) -> str:
    return (date or datetime.date.today()).strftime("%Y-%m-%d")


def _kind(kind: str, allowed: tuple[str, ...]) -> str:
    if kind not in allowed:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {', '.join(allowed)}")
    return kind


def dated_folder(root: str | os.PathLike, kind: str, date: datetime.date | None = None) -> Path:
    """root/{kind}-images/YYYY-MM-DD (A1111's default outdir + `[date]` subfolder)."""
    return Path(root) / f"{_kind(kind, IMAGE_KINDS)}-images" / _day(date)


def grid_folder(root: str | os.PathLike, kind: str, date: datetime.date | None = None) -> Path:
    """root/{kind}-grids/YYYY-MM-DD."""
    return Path(root) / f"{_kind(kind, GRID_KINDS)}-grids" / _day(date)


def next_sequence_number(folder: str | os.PathLike, basename: str = "") -> int:
    """A1111's get_next_sequence_number: 1 + the largest leading number of the folder's files
    (after `basename-` when a basename is given); 0 for an empty or missing folder."""
    prefix = f"{basename}-" if basename else ""
    result = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix):
            head = os.path.splitext(name[len(prefix):])[0].split("-")[0]
            try:
                result = max(int(head), result)
            except ValueError:
                pass
    return result + 1


def _png_info(infotext: str | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    if infotext is not None:
        info.add_text("parameters", infotext)
    return info


def png_with_infotext(image: Image.Image, infotext: str | None) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=_png_info(infotext))
    return buf.getvalue()


def png_base64(image: Image.Image, infotext: str | None = None) -> str:
    """The PNG (with its infotext) as base64 text, as A1111's API sends images."""
    import base64
    return base64.b64encode(png_with_infotext(image, infotext)).decode("ascii")


def _extension(extension: str) -> str:
    ext = extension.lower().lstrip(".")
    if ext not in EXTENSIONS:
        raise ValueError(f"unsupported image extension {extension!r}; expected one of {', '.join(EXTENSIONS)}")
    return ext


def encode_image(image: Image.Image, infotext: str | None, extension: str = "png") -> bytes:
    """The file bytes A1111 would write for this image and infotext."""
    ext = _extension(extension)
    if EXTENSIONS[ext] == "PNG":
        return png_with_infotext(image, infotext)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    kwargs: dict[str, object] = {"quality": JPEG_QUALITY}
    if infotext is not None:
        exif = Image.Exif()
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + infotext.encode("utf-16-be")
        kwargs["exif"] = exif.tobytes()
    buf = io.BytesIO()
    image.save(buf, format=EXTENSIONS[ext], **kwargs)
    return buf.getvalue()


class SaveError(RuntimeError):
    """Images could not be written (full disk, no permission ...); the message says where and why."""


@contextlib.contextmanager
def reporting_write_errors(folder: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError while saving into a ``SaveError`` that names the folder and, for a full disk, says so."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "the disk is full" if full else (exc.strerror or type(exc).__name__)
        raise SaveError(f"could not save the images in {folder}: {why}"
                        + (f" ({exc.strerror})" if full and exc.strerror else "")) from exc


def _write_new(folder: Path, names: Iterable[str], data: bytes) -> Path:
    """Write `data` under the first name in `names` that does not exist yet; never overwrites.

    The bytes go to a hidden temporary file first and are hard-linked in place (link fails when
    the name exists), so no half-written image is ever visible under its final name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".saving-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        for name in itertools.islice(names, _MAX_TRIES):
            if name in ("", ".", "..") or os.sep in name or (os.altsep and os.altsep in name):
                raise ValueError(f"refusing to save outside {folder}: {name!r}")
            path = folder / name
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            except OSError:  # no hard links on this filesystem: exclusive create instead
                try:
                    with open(path, "xb") as f:
                        f.write(data)
                except FileExistsError:
                    continue
            return path
        raise FileExistsError(f"no free file name in {folder}")
    finally:
        os.unlink(tmp)


def _seed_text(seed: object) -> str:
    if seed is None:
        return ""
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    try:
        return str(operator.index(seed))
    except TypeError:
        raise ValueError(f"seed must be an integer, got {seed!r}") from None


def save_image(image: Image.Image, folder: str | os.PathLike, *, seed: int | None, infotext: str | None,
               extension: str = "png", prefix_number: bool = True) -> Path:
    """Save as `folder/NNNNN-SEED.ext` (NNNNN: A1111's next sequence number, 5 digits).

    seed None -> `NNNNN.ext`. prefix_number=False -> `SEED.ext` (then `SEED-1.ext`, ... if taken).
    The folder is created if missing; an existing file is never overwritten (the number advances).
    """
    ext = _extension(extension)
    folder = Path(folder)
    seed_text = _seed_text(seed)
    data = encode_image(image, infotext, ext)
    if prefix_number:
        tail = f"-{seed_text}" if seed_text else ""
        start = next_sequence_number(folder)
        names: Iterator[str] = (f"{n:05}{tail}.{ext}" for n in itertools.count(start))
    else:
        if not seed_text:
            raise ValueError("prefix_number=False needs a seed to name the file")
        names = itertools.chain([f"{seed_text}.{ext}"], (f"{seed_text}-{i}.{ext}" for i in itertools.count(1)))
    return _write_new(folder, names, data)


def save_to(records, out: str | os.PathLike) -> list[Path]:
    """The command line's ``-o``: ``out`` a ``.png`` path (one image, or ``name-N.png`` for several) or a folder
    (A1111 naming ``NNNNN-SEED.png``, and a ``grid-NNNN.png`` of several). ``records``: ``ImageRecord``s."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = [out] if len(records) == 1 else [out.with_name(f"{out.stem}-{i + 1}.png") for i in range(len(records))]
        for record, path in zip(records, paths):
            path.write_bytes(png_with_infotext(record.image, record.infotext))
        return paths
    paths = [save_image(r.image, out, seed=r.seed, infotext=r.infotext) for r in records]
    if len(paths) > 1:
        paths.append(save_grid([r.image for r in records], out, records[0].infotext))
    return paths


def grid_rows(count: int, rows: int | None = None) -> int:
    """A1111's image_grid rule for opts.n_rows = -1 (default): round(sqrt(n)); never more than n."""
    if count < 1:
        raise ValueError("a grid needs at least one image")
    if rows is None or rows < 0:
        rows = round(math.sqrt(count))
    elif rows == 0:
        raise ValueError("rows must be positive (or None for A1111's automatic rule)")
    return min(rows, count)


def make_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """Images pasted row-major on a black RGB canvas of cells the size of the first image."""
    rows = grid_rows(len(images), rows)
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), color="black")
    for i, img in enumerate(images):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid


def save_grid(images: Sequence[Image.Image], folder: str | os.PathLike, infotext: str | None,
              rows: int | None = None, *, extension: str = "png") -> Path:
    """Save make_grid(images) as `folder/grid-NNNN.ext` (A1111: basename "grid", 4 digits)."""
    ext = _extension(extension)
    folder = Path(folder)
    data = encode_image(make_grid(images, rows), infotext, ext)
    start = next_sequence_number(folder, "grid")
    return _write_new(folder, (f"grid-{n:04}.{ext}" for n in itertools.count(start)), data)


def _decode_user_comment(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, (bytes, bytearray)):   # a number or a tuple where a file has the wrong tag type
        return ""
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        codec = "utf-16" if body[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-16-be"
        return body.decode(codec, errors="replace")
    if prefix == b"ASCII\0\0\0":
        return body.decode("ascii", errors="replace")
    if prefix == b"JIS\0\0\0\0\0":
        return body.decode("shift_jis", errors="replace")
    return raw.decode("utf-8", errors="ignore").strip("\0")  # A1111's fallback


def _read(image: Image.Image) -> str | None:
    text = image.info.get("parameters")
    if text is None and isinstance(image, PngImagePlugin.PngImageFile):
        text = image.text.get("parameters")  # chunks after IDAT too
    try:
        raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # malformed EXIF: ignore it, like a missing one
        raw = None
    comment = _decode_user_comment(raw) if raw else ""
    if comment:  # A1111: a non-empty EXIF UserComment wins
        return comment
    return None if text is None else str(text)


def read_infotext(source: Image.Image | str | os.PathLike | bytes) -> str | None:
    """The infotext of an image (PIL image, path or file bytes): PNG `parameters`, else EXIF UserComment."""
    if isinstance(source, Image.Image):
        return _read(source)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with Image.open(source) as image:
        return _read(image)
