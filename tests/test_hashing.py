import hashlib
import json
import os

from webui.engine import hashing
from webui.engine.hashing import file_sha256, model_hash


def make_file(path, size=2 * 1024 * 1024 + 123, seed=1):
    data = bytes((i * seed + i // 7) % 251 for i in range(size))
    path.write_bytes(data)
    return data


def test_digest_matches_hashlib_across_chunks(tmp_path):
    path = tmp_path / "model.safetensors"
    data = make_file(path)  # spans three 1 MiB chunks
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(str(path)) == expected
    assert model_hash(path) == expected[:10]
    assert len(model_hash(path)) == 10


def test_cache_entry_is_used_while_size_and_mtime_are_unchanged(tmp_path, monkeypatch):
    path, cache = tmp_path / "m.ckpt", tmp_path / "cache" / "hashes.json"
    data = make_file(path, 5000)
    assert file_sha256(path, cache) == hashlib.sha256(data).hexdigest()

    entries = json.loads(cache.read_text())
    key = os.path.abspath(path)
    assert entries[key]["size"] == 5000 and entries[key]["mtime_ns"] == os.stat(path).st_mtime_ns
    entries[key]["sha256"] = "ab" * 32
    cache.write_text(json.dumps(entries))

    def no_rereading(*args, **kwargs):
        raise AssertionError("the file was hashed again")

    monkeypatch.setattr(hashing, "_hash_file", no_rereading)
    assert file_sha256(path, cache) == "ab" * 32
    assert model_hash(path, cache) == "ababababab"


def test_changed_file_invalidates_the_entry(tmp_path):
    path, cache = tmp_path / "m.safetensors", tmp_path / "hashes.json"
    make_file(path, 4000, seed=1)
    stat = os.stat(path)
    file_sha256(path, cache)

    new = make_file(path, 4000, seed=3)  # same size, other bytes, other mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_sha256(path, cache) == hashlib.sha256(new).hexdigest()

    grown = make_file(path, 4001, seed=3)  # other size, same mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_sha256(path, cache) == hashlib.sha256(grown).hexdigest()
    assert json.loads(cache.read_text())[os.path.abspath(path)]["size"] == 4001


def test_corrupt_cache_is_ignored_and_replaced_atomically(tmp_path):
    path, cache = tmp_path / "m.pt", tmp_path / "hashes.json"
    data = make_file(path, 3000)
    other = os.path.abspath(tmp_path / "other.ckpt")
    for corrupt in ("{not json", "[1, 2]", json.dumps({os.path.abspath(path): "garbage"})):
        cache.write_text(corrupt)
        assert file_sha256(path, cache) == hashlib.sha256(data).hexdigest()
        assert json.loads(cache.read_text())[os.path.abspath(path)]["sha256"] == hashlib.sha256(data).hexdigest()

    entries = json.loads(cache.read_text())
    entries[other] = {"sha256": "cd" * 32, "size": 1, "mtime_ns": 1}
    cache.write_text(json.dumps(entries))
    os.utime(path, ns=(0, 10**18))
    file_sha256(path, cache)
    assert json.loads(cache.read_text())[other]["sha256"] == "cd" * 32  # other entries are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hashes.json", "m.pt"]  # no temp files left
