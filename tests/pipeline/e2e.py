"""What the end-to-end tests share: the tiny profile and a way to run a stage in a workspace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "data": {
        "resize": 32,
        "crop": 32,
        "num_frames": 4,
        "generate": {
            "clips_per_class_train": 2,
            "clips_per_class_val": 2,
            "clips_per_class_test": 1,
            "frames": 8,
            "size": 32,
        },
    },
    "train": {"epochs": 2, "batch_size": 4, "device": "cpu"},
    "eval": {"batch_size": 16},
}


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def stage(workdir: Path, module: str, *args: str, env: dict | None = None, check: bool = True):
    full_env = dict(os.environ)
    full_env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
            "PYTHONPATH": str(ROOT),
            "CI": "true",
        }
    )
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", module, "--params", str(workdir / "params.yaml"), *args],
        cwd=workdir,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
