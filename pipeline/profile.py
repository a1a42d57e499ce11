"""Run a study profile as a DVC experiment: ``python -m pipeline.profile full.yaml``.

A profile is a params file of overrides (``full.yaml``: every variant at the power target). Each
leaf becomes a ``--set-param key=value`` of ``dvc exp run``, so the experiment's params, metrics and
report sit beside the default run's in ``dvc exp show`` and ``dvc exp diff``, and ``dvc exp apply``
brings them into the workspace. ``--queue`` queues it (``dvc queue start`` runs it); ``--dry``
prints the command.

A profile's value wins over an ablation file's: where a variant sets a key the profile sets too
(``train.updates_per_step`` of ``dsts_cm``, say), the item names that file as well,
``--set-param ablations/<variant>.yaml:<key>=<value>``. The smoke copy and the sweep's workspaces
follow the same rule (:func:`write_ablations`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from dsts.config import deep_merge, read_yaml
from pipeline._cli import run

ROOT = Path(__file__).resolve().parents[1]


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


def shadowed(profile: dict[str, Any], ablation: dict[str, Any]) -> dict[str, Any]:
    """The leaves of ``profile`` that ``ablation`` sets too, nested as in the files: merged into
    the ablation file, they make the profile's value win there (a smoke run's one epoch over a
    variant's longer schedule)."""
    out: dict[str, Any] = {}
    for key, value in profile.items():
        if key not in ablation or isinstance(value, dict) != isinstance(ablation[key], dict):
            continue
        inner = shadowed(value, ablation[key]) if isinstance(value, dict) else value
        if inner != {}:
            out[key] = inner
    return out


def ablation_overrides(
    profile: dict[str, Any], source: Path = ROOT / "ablations"
) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """``(file, ablation, override)`` for each ablation file of ``source``: its contents and the
    profile's values that must win in it (empty when the profile touches none of its keys)."""
    for file in sorted(source.glob("*.yaml")):
        ablation = read_yaml(file)
        yield file, ablation, shadowed(profile, ablation)


def write_ablations(dest: Path, profile: dict[str, Any], source: Path = ROOT / "ablations") -> None:
    """Write the ablation files of ``source`` into ``dest``, each with the profile's value where
    both set a key; a file the profile does not touch is copied as it is."""
    dest.mkdir(parents=True, exist_ok=True)
    for file, ablation, override in ablation_overrides(profile, source):
        text = (
            yaml.safe_dump(deep_merge(ablation, override), sort_keys=False) if override else file.read_text()
        )
        (dest / file.name).write_text(text)


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
    for file, _, override in ablation_overrides(overrides):
        cmd += [
            arg for item in set_params(override) for arg in ("--set-param", f"ablations/{file.name}:{item}")
        ]
    print(shlex.join(cmd), flush=True)
    return 0 if args.dry else subprocess.run(cmd).returncode


if __name__ == "__main__":
    run(main)
