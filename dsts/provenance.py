"""Where a run's code and data came from, read from git and DVC's files (no MLflow here).

- :func:`git_commit` and :func:`git_dirty`: the commit, and the uncommitted paths that are not the
  pipeline's own outputs (``dvc.lock``, the outs, metrics and plots that ``dvc.yaml`` declares, and
  the ``.gitignore`` files DVC writes beside them), so that ``dvc repro`` on a clean checkout reads
  as clean while an edited source file, or a changed ``params.yaml``, reads as dirty.
- :func:`data_md5`: the md5 DVC records for a data folder. It is read from ``dvc.lock`` (the
  ``prepare`` outs for the generated benchmark; a stage's dependency on ``${data.root}`` for real
  data) when the entry's file count and total size match the folder as it is now; otherwise it is
  computed the way DVC computes a directory's md5 (:func:`dir_md5`; tests/test_provenance.py checks
  it against ``dvc_data``). A folder that does not exist has no md5.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

__all__ = ["data_md5", "dir_md5", "dvc_output_patterns", "git_commit", "git_dirty"]

_INTERPOLATION = re.compile(r"\$\{[^}]*\}")
# libyaml when PyYAML has it: dvc.lock grows with every run, and every stage reads it
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CHUNK = 1 << 20


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(root: Path) -> str:
    out = _git(root, "rev-parse", "HEAD")
    return out.strip() if out else "unknown"


def dvc_output_patterns(root: Path) -> list[str]:
    """Glob patterns of every out, metric and plot file that ``root/dvc.yaml`` declares (a
    ``${...}`` becomes ``*``), and the paths ``root/dvc.lock`` records as outs."""
    patterns = []
    try:
        spec = yaml.load((root / "dvc.yaml").read_text(), Loader=_LOADER) or {}
    except (OSError, yaml.YAMLError):
        spec = {}
    for stage in (spec.get("stages") or {}).values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for section in ("outs", "metrics", "plots"):
            for entry in body.get(section) or []:
                name = next(iter(entry)) if isinstance(entry, dict) else entry
                if isinstance(name, str):
                    patterns.append(_INTERPOLATION.sub("*", name).rstrip("/"))
    for entry in _lock_entries(root, ("outs",)):
        patterns.append(str(entry["path"]).rstrip("/"))
    return patterns


def _is_output(path: str, patterns: list[str]) -> bool:
    if path == "dvc.lock" or Path(path).name == ".gitignore":
        return True
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p + "/*") for p in patterns)


def git_dirty(root: Path) -> list[str] | None:
    """The paths that differ from ``HEAD`` (changed, staged or untracked and not ignored), less the
    pipeline's outputs; None when ``root`` is not in a git work tree."""
    top = _git(root, "rev-parse", "--show-toplevel")
    status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    if top is None or status is None:
        return None
    top_dir = Path(top.strip())
    patterns = dvc_output_patterns(top_dir)
    fields = status.split("\0")
    paths, i = [], 0
    while i < len(fields):
        field = fields[i]
        i += 1
        if len(field) < 4:
            continue
        if field[0] in "RC":  # a rename or copy: the source path follows
            i += 1
        paths.append(field[3:])
    return sorted(p for p in set(paths) if not _is_output(p, patterns))


def _lock_entries(root: Path, sections: tuple[str, ...]) -> list[dict[str, Any]]:
    try:
        lock = yaml.load((root / "dvc.lock").read_text(), Loader=_LOADER) or {}
    except (OSError, yaml.YAMLError):
        return []
    found = []
    for stage in (lock.get("stages") or {}).values():
        for section in sections:
            found.extend(e for e in (stage or {}).get(section) or [] if isinstance(e, dict) and "path" in e)
    return found


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def dir_md5(folder: Path) -> str:
    """DVC's md5 of a directory: the md5 of the JSON list ``[{"md5": ..., "relpath": ...}]`` of its
    files sorted by relative path (keys sorted, DVC's separators), with ``.dir`` appended."""
    entries = [{"md5": _file_md5(p), "relpath": p.relative_to(folder).as_posix()} for p in _files(folder)]
    entries.sort(key=lambda e: e["relpath"])
    blob = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(blob, usedforsecurity=False).hexdigest() + ".dir"


def _matches(entry: dict[str, Any], path: Path) -> bool:
    """Does ``path`` still have the file count and total size ``dvc.lock`` recorded?"""
    if path.is_dir():
        files = _files(path)
        nfiles, size = len(files), sum(p.stat().st_size for p in files)
        return entry.get("nfiles") == nfiles and entry.get("size") == size
    return path.is_file() and entry.get("size") == path.stat().st_size


def data_md5(root: Path, data_root: str | os.PathLike) -> tuple[str | None, str]:
    """``(md5, source)`` of the data at ``data_root`` (relative to ``root``): source is
    ``"dvc.lock"``, ``"computed"``, or ``"missing"`` (then md5 is None)."""
    path = (root / data_root).resolve()
    if not path.exists():
        return None, "missing"
    for entry in _lock_entries(root, ("outs", "deps")):
        if (root / str(entry["path"])).resolve() == path and entry.get("md5") and _matches(entry, path):
            return str(entry["md5"]), "dvc.lock"
    return (dir_md5(path) if path.is_dir() else _file_md5(path)), "computed"
