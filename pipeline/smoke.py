"""Run the whole DVC graph on the smoke profile (``smoke.yaml``) in a copy of the workspace.

The copy holds what git would commit (tracked files and untracked ones that are not ignored), so
the run sees the code as it is now without touching the workspace's outputs, ``mlflow.db`` or DVC
lock file. ``--keep DIR`` keeps the copy there for inspection.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dsts.config import deep_merge, read_yaml
from pipeline._cli import run
from pipeline.profile import write_ablations

ROOT = Path(__file__).resolve().parents[1]


# The pipeline's outputs: a copy starts without them, as a fresh clone does.
OUTPUTS = ("runs/", "reports/", "data/")


def workspace_files(root: Path) -> list[str]:
    """What git would commit (tracked files and untracked ones it does not ignore), outputs left out."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return [f for f in out.stdout.split("\0") if f and (root / f).is_file() and not f.startswith(OUTPUTS)]


def make_copy(dest: Path, profile: Path) -> None:
    """Copy the workspace into ``dest`` (a fresh git repository with one commit, as ``dvc exp``
    needs), with ``profile`` merged into its params.yaml and, where a variant sets the same key,
    into that variant's ablation file."""
    for name in workspace_files(ROOT):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    overrides = read_yaml(profile)
    params = deep_merge(read_yaml(dest / "params.yaml"), overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_ablations(dest / "ablations", overrides)  # the profile wins over a variant's own values
    env = dict(os.environ, GIT_AUTHOR_NAME="smoke", GIT_AUTHOR_EMAIL="smoke@dsts-bench.invalid")
    env.update(GIT_COMMITTER_NAME="smoke", GIT_COMMITTER_EMAIL="smoke@dsts-bench.invalid")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "smoke copy"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)


def reproduce(dest: Path, profile: Path = ROOT / "smoke.yaml", quiet: bool = False) -> int:
    """Copy the workspace into ``dest`` with ``profile`` merged and run ``dvc repro`` there, with
    its own MLflow store; returns DVC's exit code."""
    make_copy(dest, profile)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{dest / 'mlflow.db'}")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    output = subprocess.DEVNULL if quiet else None
    return subprocess.run(["dvc", "repro"], cwd=dest, env=env, stdout=output).returncode


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.smoke", description=__doc__)
    parser.add_argument(
        "--profile", default=str(ROOT / "smoke.yaml"), help="profile to merge (default: smoke.yaml)"
    )
    parser.add_argument("--keep", default=None, help="make the copy here and keep it (must not exist)")
    args = parser.parse_args()
    if args.keep and Path(args.keep).exists():
        print(f"error: --keep {args.keep}: already exists", file=sys.stderr)
        return 2
    dest = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dsts-smoke-"))
    dest.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        code = reproduce(dest, Path(args.profile))
        took = time.perf_counter() - started
        print(f"smoke: dvc repro exited {code} after {took:.0f} s in {dest}")
        return code
    finally:
        if not args.keep:
            shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    run(main)
