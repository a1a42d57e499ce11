"""Run a study profile as a DVC experiment: ``python -m pipeline.profile full.yaml``.

A profile is a params file of overrides (``full.yaml``: every variant at the power target). Each
leaf becomes a ``--set-param key=value`` of ``dvc exp run``, so the experiment's params, metrics and
report sit beside the default run's in ``dvc exp show`` and ``dvc exp diff``, and ``dvc exp apply``
brings them into the workspace. ``--queue`` queues it (``dvc queue start`` runs it); ``--dry``
prints the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from dsts.config import read_yaml
from pipeline._cli import run


def set_params(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"a": {"b": [1, 2]}, "c": 3}`` -> ``["a.b=[1, 2]", "c=3"]``: a dotted key per leaf, each
    value in JSON, which DVC reads as YAML."""
    out: list[str] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += set_params(value, f"{name}.")
        else:
            out.append(f"{name}={json.dumps(value)}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.profile", description=__doc__)
    parser.add_argument("profile", type=Path, help="a params file of overrides, e.g. full.yaml")
    parser.add_argument("--name", default=None, help="the experiment's name (default: the file's stem)")
    parser.add_argument("--queue", action="store_true", help="queue it instead of running it now")
    parser.add_argument("--dry", action="store_true", help="print the dvc command and stop")
    args = parser.parse_args()
    overrides = read_yaml(args.profile)
    cmd = ["dvc", "exp", "run", "--name", args.name or args.profile.stem]
    cmd += ["--queue"] if args.queue else []
    for item in set_params(overrides):
        cmd += ["--set-param", item]
    print(shlex.join(cmd), flush=True)
    return 0 if args.dry else subprocess.run(cmd).returncode


if __name__ == "__main__":
    run(main)
