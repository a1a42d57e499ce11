"""DVC workspaces for the end-to-end tests: a git repository holding this checkout's code with a
tiny profile merged into params.yaml, a ``dvc`` runner, and data sets in the real formats."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from dsts.data.dives import class_specs
from dsts.data.generate import encode_mp4
from dsts.data.render import render_clip
from pipeline.smoke import make_copy
from tests.pipeline.e2e import TINY

# Two variants, one seed, one epoch on the e2e tests' tiny data (clips of 4 frames at 32x32): a whole
# `dvc repro` in about a minute.
TINY_GRID = {
    "variants": ["baseline", "dsts"],
    "seeds": [0],
    "report": {"confusion_run": "dsts/seed0"},
    "data": copy.deepcopy(TINY["data"]),
    "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
}


def tiny_grid(variant: str) -> dict:
    """A copy of ``TINY_GRID`` that trains ``variant`` alone (a test that checks one kind of stage,
    or how data is read, needs no second variant)."""
    grid = copy.deepcopy(TINY_GRID)
    grid.update(variants=[variant], report={"confusion_run": f"{variant}/seed0"})
    return grid


def env_for(workspace: Path) -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=f"sqlite:///{workspace / 'mlflow.db'}")
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid", GIT_COMMITTER_NAME="t")
    env["GIT_COMMITTER_EMAIL"] = "t@t.invalid"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)  # stages import the workspace's own copy of the code
    # and write its bytecode next to it, as they do for a user (whose shell does not forbid it)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(workspace: Path, *cmd: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(cmd), cwd=workspace, env=env_for(workspace), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def dvc(workspace: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    return run(workspace, "dvc", *args, check=check, timeout=timeout)


@contextmanager
def queue_workers(workspace: Path, jobs: int, env: dict[str, str] | None = None) -> Iterator[None]:
    """``dvc queue start -j jobs`` for the body of the ``with``; every worker is stopped after it.

    The workers are daemons that inherit ``queue start``'s stdout, so it goes to a file: a captured
    pipe would stay open as long as a worker lives. Workers leave by themselves once the queue has
    been idle a while, but the filesystem broker of DVC's queue has a race between workers (one of
    them can read a message another is still writing, fail to parse it and hang, after the
    experiments have run). So ``dvc queue stop --kill`` ends them, whatever the body did."""
    env = env or env_for(workspace)
    log = workspace.parent / f"{workspace.name}.queue-start.log"
    with log.open("w") as out:
        proc = subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)],
            cwd=workspace,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    try:
        assert proc.returncode == 0, f"dvc queue start exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        yield
    finally:
        subprocess.run(
            ["dvc", "queue", "stop", "--kill"], cwd=workspace, env=env, capture_output=True, timeout=300
        )


def make_workspace(dest: Path, profile: dict) -> Path:
    """A git repository (one commit) with this checkout's code and ``profile`` merged into params.yaml."""
    profile_file = dest.parent / f"{dest.name}.profile.yaml"
    profile_file.write_text(yaml.safe_dump(profile))
    make_copy(dest, profile_file)
    return dest


def set_params(workspace: Path, **dotted) -> None:
    """Change dotted keys of the workspace's params.yaml."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for key, value in dotted.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, by relative path (also the mtime-independent identity)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _clips(classes: int, per_class: int, split: int) -> list[tuple[int, object]]:
    specs = class_specs(2 * ((classes + 1) // 2))[:classes]
    return [
        (spec.label, render_clip(spec, (7, split, spec.label, k), 8, 32))
        for spec in specs
        for k in range(per_class)
    ]


def write_diving48(root: Path, classes: int = 3, train: int = 3, test: int = 1) -> Path:
    """A Diving48 V2 folder: ``rgb/<vid_name>.mp4`` and the two annotation lists, nothing else."""
    for split, per_class, split_id in (("train", train, 0), ("test", test, 1)):
        listing = []
        for i, (label, frames) in enumerate(_clips(classes, per_class, split_id)):
            name = f"{split}_{i:03d}"
            encode_mp4(frames, _mkdir(root / "rgb") / f"{name}.mp4")
            listing.append({"vid_name": name, "label": label, "start_frame": 0, "end_frame": len(frames)})
        (root / f"Diving48_V2_{split}.json").write_text(json.dumps(listing))
    return root


def write_finegym(root: Path, classes: int = 3, train: int = 3, test: int = 1) -> Path:
    """FineGym trimmed element clips ``<ytid>_E_<s>_<e>_A_<s>_<e>.mp4`` and the two element lists."""
    for list_name, per_class, split_id in (
        ("gym99_train_element_v1.1.txt", train, 0),
        ("gym99_val_element.txt", test, 1),
    ):
        lines = []
        for i, (label, frames) in enumerate(_clips(classes, per_class, split_id)):
            name = f"vid{split_id}{i:03d}_E_{i:06d}_{i + 9:06d}_A_{i:04d}_{i + 3:04d}"
            encode_mp4(frames, _mkdir(root) / f"{name}.mp4")
            lines.append(f"{name} {label}")
        (root / list_name).write_text("\n".join(lines) + "\n")
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
