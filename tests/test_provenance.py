"""Provenance: DVC's directory md5 computed as DVC computes it, read from dvc.lock while the folder
still matches, and a git tree that is dirty for a source or params change but not for the
pipeline's own outputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from dvc_data.hashfile.build import build
from dvc_data.hashfile.db import HashFileDB
from dvc_objects.fs.local import LocalFileSystem

from dsts.provenance import data_md5, dir_md5, git_dirty


def make_data(folder: Path) -> Path:
    (folder / "rgb" / "sub").mkdir(parents=True)
    (folder / "rgb" / "a.mp4").write_bytes(bytes(range(256)) * 4000)
    (folder / "rgb" / "sub" / "é.txt").write_bytes(b"windows\r\nline\r\n")  # md5 of the bytes as they are
    (folder / "empty").write_bytes(b"")
    (folder / "vocab.json").write_text('{"a": 0}')
    return folder


def test_dir_md5_is_what_dvc_computes(tmp_path):
    data = make_data(tmp_path / "data")
    fs = LocalFileSystem()
    _, meta, obj = build(HashFileDB(fs, str(tmp_path / "odb")), str(data), fs, "md5", dry_run=True)
    assert dir_md5(data) == obj.hash_info.value and obj.hash_info.value.endswith(".dir")
    assert meta.nfiles == 4


def write_lock(root: Path, entry: dict, section: str = "outs", stage: str = "prepare") -> None:
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {stage: {section: [entry]}}}))


def test_data_md5_reads_dvc_lock_while_the_folder_matches_it(tmp_path):
    data = make_data(tmp_path / "data" / "generated")
    files = [p for p in data.rglob("*") if p.is_file()]
    recorded = "0123456789abcdef0123456789abcdef.dir"  # not the real md5: proves where it was read
    entry = {
        "path": "data/generated",
        "md5": recorded,
        "nfiles": len(files),
        "size": sum(p.stat().st_size for p in files),
    }
    write_lock(tmp_path, entry)
    assert data_md5(tmp_path, "data/generated") == (recorded, "dvc.lock")
    assert data_md5(tmp_path, str(data)) == (recorded, "dvc.lock")  # the same folder, named absolutely

    (data / "extra.txt").write_text("new")  # no longer what DVC recorded: computed instead
    assert data_md5(tmp_path, "data/generated") == (dir_md5(data), "computed")
    assert data_md5(tmp_path, "data/none") == (None, "missing")


def test_real_data_md5_is_the_dependency_dvc_recorded(tmp_path):
    data = make_data(tmp_path / "elsewhere" / "diving48")
    files = [p for p in data.rglob("*") if p.is_file()]
    real = dir_md5(data)
    entry = {
        "path": str(data),
        "md5": real,
        "nfiles": len(files),
        "size": sum(p.stat().st_size for p in files),
    }
    workspace = tmp_path / "ws"
    workspace.mkdir()
    write_lock(workspace, entry, "deps", "train@dsts-0")
    assert data_md5(workspace, str(data)) == (real, "dvc.lock")


def git(repo: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "PATH": "/usr/bin:/bin"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid")
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


@pytest.fixture
def repo(tmp_path):
    spec = {
        "stages": {
            "prepare": {"cmd": "x", "outs": ["data/generated"]},
            "train": {
                "matrix": {"variant": ["a"], "seed": [0]},
                "cmd": "x",
                "outs": [{"runs/${item.variant}/seed${item.seed}/timing.json": {"cache": False}}],
                "metrics": [{"runs/${item.variant}/seed${item.seed}/metrics.json": {"cache": False}}],
            },
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "params.yaml").write_text("seeds: [0]\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "code")
    return tmp_path


def test_the_pipelines_outputs_leave_the_tree_clean(repo):
    assert git_dirty(repo) == []
    make_data(repo / "data" / "generated")
    (repo / "data" / ".gitignore").write_text("/generated\n")
    (repo / "runs" / "a" / "seed0").mkdir(parents=True)
    for name in ("metrics.json", "timing.json"):
        (repo / "runs" / "a" / "seed0" / name).write_text("{}")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    assert git_dirty(repo) == []
    assert git_dirty(repo / "runs") == []  # from a subfolder, the same tree


def test_a_source_or_params_change_is_dirty(repo):
    (repo / "params.yaml").write_text("seeds: [0, 1]\n")
    (repo / "new_module.py").write_text("y = 2\n")
    (repo / "runs" / "a" / "seed0").mkdir(parents=True)
    (repo / "runs" / "a" / "seed0" / "notes.txt").write_text("not an output")
    assert git_dirty(repo) == ["new_module.py", "params.yaml", "runs/a/seed0/notes.txt"]
    git(repo, "add", "-A")
    git(repo, "mv", "code.py", "renamed.py")
    assert git_dirty(repo) == ["new_module.py", "params.yaml", "renamed.py", "runs/a/seed0/notes.txt"]


def test_outside_git_the_state_is_unknown(tmp_path):
    assert git_dirty(tmp_path) is None
