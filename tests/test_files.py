import collections
import gc
import json
import os
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from webui.engine.files import CheckpointError, read_metadata, read_state_dict


def write_safetensors(path, header, data=b"", length=None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


# --- safetensors ---------------------------------------------------------------------------------

def test_safetensors_round_trip_dtypes_and_metadata(tmp_path):
    g = torch.Generator().manual_seed(0)
    original = {
        "model.a.weight": torch.randn(4, 3, generator=g),
        "model.b.weight": torch.randn(5, generator=g).half(),
        "model.c.weight": torch.randn(2, 2, 3, generator=g).bfloat16(),
        "model.d": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "tiny.safetensors"
    save_file(original, str(path), metadata={"format": "pt", "modelspec.title": "tiny"})

    loaded = read_state_dict(path)
    assert set(loaded) == set(original)
    for key, tensor in original.items():
        assert loaded[key].dtype == tensor.dtype, key
        assert loaded[key].shape == tensor.shape, key
        assert torch.equal(loaded[key], tensor), key
        assert loaded[key].device.type == "cpu"
    assert read_metadata(path) == {"format": "pt", "modelspec.title": "tiny"}


def test_in_place_change_never_reaches_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1000)}, str(path))
    before = path.read_bytes()
    loaded = read_state_dict(path)
    loaded["w"].mul_(3)
    assert float(loaded["w"][0]) == 3.0
    del loaded
    gc.collect()
    assert path.read_bytes() == before
    assert float(read_state_dict(path)["w"][0]) == 1.0


_RSS_PROBE = """
import gc, sys
from webui.engine.files import read_state_dict

def rss_anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

gc.collect()
before = rss_anon_mb()
loaded = read_state_dict(sys.argv[1])
total = sum(float(t.sum()) for t in loaded.values())  # touch every page
grown = rss_anon_mb() - before
copy = loaded["t0"].clone()                           # a real copy of one 50 MB tensor, for scale
copy.add_(1)
print(total, grown, rss_anon_mb() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_large_file_is_not_copied_into_anonymous_memory(tmp_path):
    # ~200 MB file written in 1 MiB chunks, so the test itself never holds it in memory. Measured in a
    # fresh process: in this one, memory freed by earlier tests would hide or fake growth.
    mib, per_tensor = 1024 * 1024, 50
    header, offset = {}, 0
    for i in range(4):
        header[f"t{i}"] = {"dtype": "F32", "shape": [per_tensor * mib // 4], "data_offsets": [offset, offset + per_tensor * mib]}
        offset += per_tensor * mib
    raw = json.dumps(header).encode()
    chunk = torch.full((mib // 4,), 0.5).numpy().tobytes()
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(4 * per_tensor):
            f.write(chunk)

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], cwd=root, capture_output=True,
                         text=True, check=True).stdout.split()
    total, grown, with_copy = map(float, out)
    assert total == 0.5 * 4 * per_tensor * mib / 4
    assert grown < 20, f"loading a 200 MB file grew anonymous memory by {grown:.0f} MB"
    assert with_copy > 0.8 * per_tensor      # the measure is sensitive: one real copy shows up


@pytest.mark.parametrize("case, expected", [
    ("truncated", "truncated: header says 64 bytes of tensor data, file has 40"),
    ("bad_json", "not valid JSON"),
    ("length_past_end", "header length field says 999999 bytes"),
    ("huge_length", "expected under"),
    ("bad_dtype", "dtype 'F128'"),
    ("offsets_past_end", "truncated: header says 1024 bytes of tensor data, file has 64"),
    ("span_mismatch", "needs 64 bytes, but its data_offsets span 60"),
    ("overlap", "overlap"),
    ("bad_shape", "shape"),
    ("bad_metadata", "__metadata__"),
    ("duplicate_keys", "duplicate"),
    ("too_short", "at least 8"),
])
def test_corrupt_safetensors_are_refused_naming_the_file(tmp_path, case, expected):
    good = {"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}
    path = tmp_path / f"{case}.safetensors"
    data = bytes(64)
    if case == "truncated":
        write_safetensors(path, good, data[:40])
    elif case == "bad_json":
        raw = b'{"w": {"dtype": '
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    elif case == "length_past_end":
        write_safetensors(path, good, data, length=999999)
    elif case == "huge_length":
        write_safetensors(path, good, data, length=2**40)
    elif case == "bad_dtype":
        write_safetensors(path, {"w": {**good["w"], "dtype": "F128"}}, data)
    elif case == "offsets_past_end":
        write_safetensors(path, {"w": {"dtype": "F32", "shape": [256], "data_offsets": [0, 1024]}}, data)
    elif case == "span_mismatch":
        write_safetensors(path, {"w": {**good["w"], "data_offsets": [4, 64]}}, data)
    elif case == "overlap":
        write_safetensors(path, {"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                                 "b": {"dtype": "F32", "shape": [8], "data_offsets": [32, 64]}}, data)
    elif case == "bad_shape":
        write_safetensors(path, {"w": {**good["w"], "shape": [-16]}}, data)
    elif case == "bad_metadata":
        write_safetensors(path, {**good, "__metadata__": {"n": 1}}, data)
    elif case == "duplicate_keys":
        raw = b'{"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}, "w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}'
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    elif case == "too_short":
        path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert path.name in str(info.value)
    assert expected in str(info.value)


def test_read_metadata_validates_the_header_too(tmp_path):
    path = write_safetensors(tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}})
    with pytest.raises(CheckpointError, match="x.safetensors.*truncated"):
        read_metadata(path)


@pytest.mark.parametrize("name, content, expected", [
    ("missing.safetensors", None, "not found"),
    ("folder.ckpt", "dir", "directory"),
    ("model.gguf", b"GGUF....", "unknown extension '.gguf'"),
    ("empty.safetensors", b"", "empty"),
    ("empty.ckpt", b"", "empty"),
    ("garbage.safetensors", bytes(range(256)) * 4, "header length field says"),
    ("garbage.ckpt", b"\xde\xad\xbe\xef not a pickle at all" * 10, "not a"),
    ("garbage.pt", b"PK\x03\x04 broken zip" * 10, "not a readable torch checkpoint"),
])
def test_unreadable_files_give_clear_errors(tmp_path, name, content, expected):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert name in str(info.value)
    assert expected in str(info.value)


# --- pickles -------------------------------------------------------------------------------------

class _OpensAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


class _RunsACommand:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("payload, writer, global_name", [
    (_OpensAFile, "zip", "io.open"),
    (_OpensAFile, "legacy", "io.open"),
    (_RunsACommand, "zip", "system"),
    (_RunsACommand, "legacy", "system"),
    (_RunsACommand, "plain_pickle", "system"),
])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, writer, global_name):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    obj = {"state_dict": {"w": torch.zeros(2)}, "x": payload(str(target))}
    if writer == "zip":
        torch.save(obj, path)
    elif writer == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, not torch.save output
        path.write_bytes(pickle.dumps({"x": payload(str(target))}, protocol=2))
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "evil.ckpt" in message and "refused" in message
    assert global_name in message
    assert not target.exists()


def _fake_lightning_class(monkeypatch):
    """A class that pickles as pytorch_lightning's ModelCheckpoint (lightning is not installed)."""
    module_name = "pytorch_lightning.callbacks.model_checkpoint"

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = None
            self.best_model_path = "/logs/best.ckpt"
            self.kth_value = torch.tensor(float("inf"))

    ModelCheckpoint.__module__ = module_name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    monkeypatch.setattr(sys.modules[module_name], "ModelCheckpoint", ModelCheckpoint, raising=False)
    return ModelCheckpoint


@pytest.mark.parametrize("legacy", [False, True])
def test_lightning_checkpoint_loads_with_inert_stubs(tmp_path, monkeypatch, legacy):
    state = collections.OrderedDict([
        ("model.diffusion_model.input_blocks.0.0.weight", torch.randn(8, 4, 3, 3)),
        ("first_stage_model.decoder.conv_out.bias", torch.randn(3).half()),
        ("model.param", torch.nn.Parameter(torch.ones(2))),
        ("not_a_tensor", 7),
    ])
    path = tmp_path / "sd-like.ckpt"
    with monkeypatch.context() as m:
        callback = _fake_lightning_class(m)()
        obj = {"epoch": 6, "global_step": 1, "state_dict": state,
               "callbacks": {type(callback): callback},
               "extras": {"np_scalar": np.float64(0.5), "np_dtype": np.dtype("float32"), "tags": {"a", "b"}}}
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    assert "pytorch_lightning" not in sys.modules  # loading must not need the real class

    loaded = read_state_dict(path)
    assert set(loaded) == {"model.diffusion_model.input_blocks.0.0.weight",
                           "first_stage_model.decoder.conv_out.bias", "model.param"}
    for key in loaded:
        assert torch.equal(loaded[key], state[key]) and loaded[key].dtype == state[key].dtype
    assert type(loaded["model.param"]) is torch.Tensor
    with pytest.raises(pickle.UnpicklingError, match="ModelCheckpoint"):  # the allow-list stayed local
        torch.load(path, weights_only=True)
    assert read_metadata(path) == {}


def test_unlisted_class_is_refused_by_name(tmp_path, monkeypatch):
    path = tmp_path / "other.pt"
    with monkeypatch.context() as m:
        cls = _fake_lightning_class(m)
        cls.__qualname__ = cls.__name__ = "EarlyStopping"  # same fake module, a name not on the list
        m.setattr(sys.modules[cls.__module__], "EarlyStopping", cls, raising=False)
        torch.save({"w": torch.zeros(1), "cb": cls()}, path)
    with pytest.raises(CheckpointError, match=r"other\.pt.*pytorch_lightning\.callbacks\.model_checkpoint\.EarlyStopping"):
        read_state_dict(path)


def test_plain_tensor_dict_and_non_dict_pickles(tmp_path):
    path = tmp_path / "vae.pt"
    torch.save({"decoder.conv_in.weight": torch.ones(2, 2)}, path)
    assert torch.equal(read_state_dict(path)["decoder.conv_in.weight"], torch.ones(2, 2))

    listed = tmp_path / "list.bin"
    torch.save([torch.ones(1)], listed)
    with pytest.raises(CheckpointError, match=r"list\.bin.*holds a list, expected a dict of tensors"):
        read_state_dict(listed)
