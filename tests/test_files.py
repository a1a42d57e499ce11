"""Atomic writes: the new content appears whole, a failure keeps the old file, nothing is left behind."""

from __future__ import annotations

import json
import os
import stat

import pytest

from dsts.files import atomic_write, staged_folder, write_json


def test_atomic_write_replaces_whole_and_keeps_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    with atomic_write(path) as handle:
        handle.write("one")
    with atomic_write(path) as handle:
        handle.write("two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    with atomic_write(path, "wb") as handle:
        handle.write(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path, "wb") as handle:
        handle.write(b"half")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_write_json_is_sorted_and_byte_stable(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1.5, "a": 2})
    write_json(tmp_path / "b.json", {"a": 2, "b": 1.5})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": 2, "b": 1.5}
    assert (tmp_path / "a.json").read_text() == '{\n  "a": 2,\n  "b": 1.5\n}\n'


def test_staged_folder_moves_files_in_and_keeps_the_others(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "r.txt").write_text("old")
    with staged_folder(out) as stage:
        (stage / "r.txt").write_text("new")
    assert (out / "keep.txt").read_text() == "mine" and (out / "r.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_folder_replace_swaps_whole_and_a_failure_changes_nothing(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, replace=True) as stage:
        (stage / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with staged_folder(out, replace=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
