"""webui/options.py: settings persist across runs; bad keys, values and files are refused clearly."""
from __future__ import annotations

import json

import pytest

from webui.options import OPTIONS, Options


def test_changes_persist_and_reload(tmp_path):
    path = tmp_path / "config.json"
    options = Options(path)
    assert options["samples_save"] is True and options["show_progress_every_n_steps"] == OPTIONS[
        "show_progress_every_n_steps"].default
    options.update({"samples_save": False, "show_progress_every_n_steps": 3, "show_progress_type": "Full"})
    again = Options(path)
    assert (again["samples_save"], again["show_progress_every_n_steps"], again["show_progress_type"]) == (False, 3, "Full")
    assert json.loads(path.read_text())["samples_save"] is False


@pytest.mark.parametrize("changes, message", [
    ({"no_such_setting": 1}, "unknown setting"),
    ({"samples_save": "yes"}, "true or false"),
    ({"show_progress_every_n_steps": 2.5}, "whole number"),
    ({"show_progress_every_n_steps": 0}, "within"),
    ({"samples_format": "gif"}, "one of"),
])
def test_bad_changes_are_refused_and_change_nothing(tmp_path, changes, message):
    options = Options(tmp_path / "config.json")
    with pytest.raises(ValueError, match=message):
        options.update({"samples_save": False, **changes})
    assert options["samples_save"] is True
    assert not (tmp_path / "config.json").exists()


def test_damaged_file_is_set_aside_not_overwritten(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    logged = []
    options = Options(path, log=logged.append)
    assert options["samples_save"] is True
    assert (tmp_path / "config.json.bad").read_text() == "{not json"
    assert logged and "unreadable" in logged[0]


def test_unknown_and_wrong_keys_in_the_file_are_reported(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_save": False, "mystery": 1, "samples_format": 5}))
    logged = []
    options = Options(path, log=logged.append)
    assert options["samples_save"] is False and options["samples_format"] == "png"
    assert any("mystery" in m for m in logged) and any("samples_format" in m for m in logged)
