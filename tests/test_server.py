"""webui/server.py: A1111's UI flags, login parsing and the --listen warning (no server started here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webui.cli import build_parser
from webui.server import api_warning, listen_warning, parse_auth

ROOT = Path(__file__).resolve().parents[1]


def test_a1111_flags_parse():
    args = build_parser().parse_args([
        "--listen", "--port", "7000", "--gradio-auth", "a:b", "--ckpt-dir", "c", "--vae-dir", "v", "--lora-dir", "l",
        "--embeddings-dir", "e", "--outdir", "o", "--device", "cpu", "--precision", "full", "--no-half",
        "--theme", "dark"])
    assert (args.command, args.listen, args.port, args.gradio_auth, args.theme, args.no_half) == \
        (None, True, 7000, "a:b", "dark", True)
    assert (args.ckpt_dir, args.vae_dir, args.lora_dir, args.embeddings_dir, args.outdir) == \
        tuple(Path(x) for x in "cvleo")


def test_auth_from_flag_and_file(tmp_path):
    file = tmp_path / "auth.txt"
    file.write_text("carol:pw3\n\ndave:pw:with:colons, erin:x\n")
    assert parse_auth("alice:pw1,bob:pw2", file) == [("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3"),
                                                      ("dave", "pw:with:colons"), ("erin", "x")]
    assert parse_auth(None, None) == []


@pytest.mark.parametrize("text", ["alice", "alice:", ":pw"])
def test_bad_auth_entries_are_refused_without_echoing_passwords(text):
    with pytest.raises(ValueError, match="expected user:password") as error:
        parse_auth(text, None)
    assert "pw" not in str(error.value)


def test_missing_auth_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read --gradio-auth-path"):
        parse_auth(None, tmp_path / "missing.txt")


def test_listen_without_auth_warns():
    assert "WARNING" in listen_warning(True, [], 7860) and "7860" in listen_warning(True, [], 7860)
    assert listen_warning(True, [("a", "b")], 7860) is None and listen_warning(False, [], 7860) is None


def test_listen_with_the_api_and_no_api_auth_warns():
    assert "--api-auth" in api_warning(True, [], 7861)
    assert api_warning(True, [("a", "b")], 7861) is None and api_warning(False, [], 7861) is None


def test_bad_flags_stop_the_app_before_serving(tmp_path):
    proc = subprocess.run([sys.executable, "app.py", "--gradio-auth", "nopassword", "--data-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "expected user:password" in proc.stderr
    proc = subprocess.run([sys.executable, "app.py", "--ckpt", str(tmp_path / "none.safetensors"), "--data-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr
