"""Atomic writes: a failure in the middle leaves the old state, never a half-written one."""

from __future__ import annotations

import json

import pytest

from scratchlm.fsutil import atomic_directory, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "f.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_atomic_directory_appears_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            atomic_write_text(tmp / "part.txt", "half")
            raise RuntimeError("crash in the middle")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []

    with atomic_directory(final) as tmp:
        atomic_write_text(tmp / "done.txt", "whole")
    assert (final / "done.txt").read_text() == "whole"


def test_atomic_directory_failure_keeps_previous_output(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        atomic_write_text(tmp / "v1.txt", "1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final) as tmp:
            atomic_write_text(tmp / "v2.txt", "2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["v1.txt"]
    with atomic_directory(final) as tmp:
        atomic_write_text(tmp / "v3.txt", "3")
    assert sorted(p.name for p in final.iterdir()) == ["v3.txt"]


def test_read_json_object_gives_one_clear_error_of_the_callers_kind(tmp_path):
    from scratchlm.errors import DataError, ModelError
    from scratchlm.fsutil import read_json_object

    good = tmp_path / "good.json"
    good.write_text('{"a": 1}')
    assert read_json_object(good, DataError) == {"a": 1}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ModelError, match="broken.json: not valid JSON"):
        read_json_object(broken, ModelError)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(DataError, match="list.json: expected a JSON object"):
        read_json_object(listing, DataError)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="binary.json: not valid JSON"):
        read_json_object(binary, DataError)
