"""A1111 file naming, PNG `parameters` chunk, EXIF UserComment, grids, and the no-overwrite rules."""
import datetime
import io
import os

import pytest
from PIL import Image, features

from webui.jobs import saving
from webui.jobs.saving import (dated_folder, grid_folder, make_grid, next_sequence_number, png_with_infotext,
                               read_infotext, save_grid, save_image)

INFO = "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 8x8"
UNICODE_INFO = "猫 と ünïcödé 🐱\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 8x8"


def _img(color=(255, 0, 0), size=(8, 6), mode="RGB"):
    return Image.new(mode, size, color)


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"old")


def _listing(folder):
    return sorted(os.listdir(folder))


def test_sequence_number_rules(tmp_path):
    assert next_sequence_number(tmp_path / "missing") == 0
    assert next_sequence_number(tmp_path) == 0
    _touch(tmp_path, "00007-123.png", "00003-9.png", "notes.txt", "grid-0041.png", "00005.jpg", ".hidden")
    assert next_sequence_number(tmp_path) == 8
    assert next_sequence_number(tmp_path, "grid") == 42


def test_first_save_creates_folder(tmp_path):
    folder = tmp_path / "txt2img-images" / "2024-01-02"
    path = save_image(_img(), folder, seed=123, infotext=INFO)
    assert path == folder / "00000-123.png"
    assert _listing(folder) == ["00000-123.png"]


def test_next_number_after_existing_files(tmp_path):
    _touch(tmp_path, "00007-123.png", "00002-5.png")
    path = save_image(_img(), tmp_path, seed=456, infotext=INFO)
    assert path.name == "00008-456.png"
    assert save_image(_img(), tmp_path, seed=457, infotext=INFO).name == "00009-457.png"


def test_png_chunk_read_back_by_pil(tmp_path):
    path = save_image(_img(), tmp_path, seed=123, infotext=INFO)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.info["parameters"] == INFO
    assert read_infotext(path) == INFO
    assert read_infotext(str(path)) == INFO
    assert read_infotext(path.read_bytes()) == INFO
    assert b"tEXtparameters\0" in path.read_bytes()  # latin-1 text: tEXt, as PIL's add_text writes it


def test_non_latin1_infotext_goes_to_itxt():
    data = png_with_infotext(_img(), UNICODE_INFO)
    assert b"iTXtparameters\0" in data and b"tEXtparameters" not in data
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["parameters"] == UNICODE_INFO
    assert read_infotext(data) == UNICODE_INFO


def test_read_infotext_from_pil_image_and_missing():
    im = _img()
    assert read_infotext(im) is None
    im.info["parameters"] = INFO  # what A1111 sets on returned images
    assert read_infotext(im) == INFO
    assert read_infotext(png_with_infotext(_img(), None)) is None


def test_never_overwrites_an_existing_file(tmp_path, monkeypatch):
    _touch(tmp_path, "00000-1.png", "00001-1.png")
    monkeypatch.setattr(saving, "next_sequence_number", lambda folder, basename="": 0)  # a racing writer
    path = save_image(_img(), tmp_path, seed=1, infotext=INFO)
    assert path.name == "00002-1.png"
    assert (tmp_path / "00000-1.png").read_bytes() == b"old" and (tmp_path / "00001-1.png").read_bytes() == b"old"


def test_without_number_and_without_seed(tmp_path):
    assert save_image(_img(), tmp_path, seed=123, infotext=INFO, prefix_number=False).name == "123.png"
    assert save_image(_img(), tmp_path, seed=123, infotext=INFO, prefix_number=False).name == "123-1.png"
    other = tmp_path / "other"
    assert save_image(_img(), other, seed=None, infotext=INFO).name == "00000.png"
    with pytest.raises(ValueError):
        save_image(_img(), other, seed=None, infotext=INFO, prefix_number=False)


@pytest.mark.parametrize("seed", ["../evil", "1/2", 1.5, True, "123"])
def test_seed_must_be_an_integer(tmp_path, seed):
    with pytest.raises(ValueError):
        save_image(_img(), tmp_path / "out", seed=seed, infotext=INFO)
    assert not (tmp_path / "out").exists() or _listing(tmp_path / "out") == []


@pytest.mark.parametrize("extension", ["png/../x", "../png", "exe", "", "tar.gz"])
def test_bad_extensions_refused(tmp_path, extension):
    with pytest.raises(ValueError):
        save_image(_img(), tmp_path, seed=1, infotext=INFO, extension=extension)
    assert _listing(tmp_path) == []


def test_files_stay_inside_folder_and_no_temp_left(tmp_path):
    folder = tmp_path / "a" / "b"
    for seed in (1, 2, 3):
        save_image(_img(), folder, seed=seed, infotext=INFO)
    save_grid([_img()] * 2, folder, INFO)
    assert _listing(folder) == ["00000-1.png", "00001-2.png", "00002-3.png", "grid-0000.png"]
    assert _listing(tmp_path) == ["a"] and _listing(tmp_path / "a") == ["b"]


@pytest.mark.parametrize("extension", ["jpg", "jpeg", "webp"])
def test_exif_user_comment(tmp_path, extension):
    if extension == "webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = save_image(_img(mode="RGBA", color=(1, 2, 3, 4)), tmp_path, seed=7, infotext=UNICODE_INFO, extension=extension)
    assert path.name == f"00000-7.{extension}"
    with Image.open(path) as im:
        raw = im.getexif().get_ifd(0x8769)[0x9286]
    assert raw == b"UNICODE\0" + UNICODE_INFO.encode("utf-16-be")  # piexif's "unicode" UserComment
    assert read_infotext(path) == UNICODE_INFO


def test_exif_user_comment_variants():
    def jpeg(raw):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = raw
        buf = io.BytesIO()
        _img().save(buf, "JPEG", exif=exif.tobytes())
        return buf.getvalue()

    assert read_infotext(jpeg(b"ASCII\0\0\0Steps: 1")) == "Steps: 1"
    assert read_infotext(jpeg(b"UNICODE\0" + "\ufeffhé".encode("utf-16-le"))) == "hé"
    assert read_infotext(jpeg("plain utf8 é".encode())) == "plain utf8 é"


def test_dated_and_grid_folders(tmp_path):
    day = datetime.date(2024, 1, 2)
    assert dated_folder(tmp_path, "txt2img", day) == tmp_path / "txt2img-images" / "2024-01-02"
    assert dated_folder(tmp_path, "img2img", day) == tmp_path / "img2img-images" / "2024-01-02"
    assert grid_folder(tmp_path, "txt2img", day) == tmp_path / "txt2img-grids" / "2024-01-02"
    assert grid_folder(str(tmp_path), "img2img", day) == tmp_path / "img2img-grids" / "2024-01-02"
    assert dated_folder(tmp_path, "txt2img").name == datetime.date.today().isoformat()
    for bad in ("../x", "txt2img/..", "", "TXT2IMG"):
        with pytest.raises(ValueError):
            dated_folder(tmp_path, bad)
    with pytest.raises(ValueError):
        grid_folder(tmp_path, "extras")


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


@pytest.mark.parametrize("count, rows, shape", [
    (1, None, (1, 1)), (2, None, (1, 2)), (3, None, (2, 2)), (4, None, (2, 2)), (5, None, (2, 3)),
    (6, None, (2, 3)), (4, 1, (1, 4)), (4, 4, (4, 1)), (3, 10, (3, 1)),
])
def test_make_grid_layout(count, rows, shape):
    images = [_img(COLORS[i]) for i in range(count)]
    grid = make_grid(images, rows)
    n_rows, n_cols = shape
    assert grid.mode == "RGB" and grid.size == (n_cols * 8, n_rows * 6)
    for i, color in enumerate(COLORS[:count]):
        assert grid.getpixel((i % n_cols * 8 + 4, i // n_cols * 6 + 3)) == color
    for i in range(count, n_rows * n_cols):  # empty spots stay black
        assert grid.getpixel((i % n_cols * 8 + 4, i // n_cols * 6 + 3)) == (0, 0, 0)


def test_make_grid_refuses_nothing():
    with pytest.raises(ValueError):
        make_grid([])
    with pytest.raises(ValueError):
        make_grid([_img()], rows=0)


def test_grid_naming(tmp_path):
    first = save_grid([_img(c) for c in COLORS[:4]], tmp_path, INFO)
    assert first.name == "grid-0000.png"
    assert save_grid([_img()], tmp_path, INFO).name == "grid-0001.png"
    _touch(tmp_path, "grid-0041.png", "00050-1.png")  # image numbers do not count for grids
    assert save_grid([_img()], tmp_path, INFO).name == "grid-0042.png"
    with Image.open(first) as im:
        assert im.size == (16, 12) and im.info["parameters"] == INFO
