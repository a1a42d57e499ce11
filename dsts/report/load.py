"""What the report reads: the study in the params file and the files of every (variant, seed) run.

Every run file is read with the readers of ``dsts/runs.py``; a missing or malformed one stops the
report with one line naming it. ``timing.json`` (train stage), ``environment.json`` (train stage)
and ``cost.json`` (evaluate stage) are optional: a run without them still reports, with "n/a" in
the cost table; so is ``val_correct.csv`` (train stage), without which a late gain has no sampling sd.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsts.config import ConfigError, load_config, read_yaml
from dsts.errors import DSTSError
from dsts.runs import read_history, read_metrics, read_val_correct, run_folder

__all__ = [
    "DEFAULT_COMPARISONS",
    "REQUIRED",
    "ReportError",
    "Run",
    "load_runs",
    "read_comparisons",
    "read_settings",
    "read_study",
]

REQUIRED = ("test/top1", "test/mean_class_accuracy")
# The study's questions (the variants are described in ablations/*.yaml): does DSTS beat the backbone
# alone, does its spatio-temporal specialization beat plain 3x3x3 neurons, does UDL beat joint
# training, and (the positive control) does shuffling the frames cost the baseline its
# order-dependent cue. A pair reads first - second.
DEFAULT_COMPARISONS = (
    ("dsts", "baseline"),
    ("dsts", "dsts_3d"),
    ("dsts_udl", "dsts"),
    ("shuffled", "baseline"),
)


class ReportError(DSTSError):
    """Input the report cannot use; the message is one line."""


@dataclass(frozen=True)
class Run:
    """The files of one (variant, seed) run, read."""

    variant: str
    seed: int
    folder: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    val_correct: dict[int, list[int]]  # per epoch, each validation clip right (1) or wrong (0); may be empty
    timing: dict[str, float]
    cost: dict[str, float]
    environment: dict[str, str]  # the fingerprint the train stage recorded (dsts.portable); may be empty


def read_study(params: str | Path) -> tuple[list[str], list[int]]:
    """``variants`` and ``seeds`` of the params file: non-empty lists without repeats."""
    tree = read_yaml(params)
    variants, seeds = tree.get("variants"), tree.get("seeds")
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
        raise ConfigError(
            f"variants: expected a non-empty list of variant names in {params}, got {variants!r}"
        )
    if len(set(variants)) != len(variants):
        raise ConfigError(f"variants: a name is listed twice in {params}")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(
            f"seeds: expected a non-empty list of non-negative integers in {params}, got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: a seed is listed twice in {params}")
    return variants, seeds


def read_comparisons(params: str | Path) -> list[tuple[str, str]] | None:
    """``report.comparisons`` of the params file, a list of ``[first, second]`` pairs of two
    different variant names without repeats; None when the params have none."""
    section = read_yaml(params).get("report")
    pairs = section.get("comparisons") if isinstance(section, dict) else None
    if pairs is None:
        return None
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, str) for v in p) and p[0] != p[1]
        for p in pairs
    ):
        raise ConfigError(
            f"report.comparisons: expected a list of [first, second] pairs of two different variant "
            f"names in {params}, got {pairs!r}"
        )
    out = [(str(a), str(b)) for a, b in pairs]
    if len(set(out)) != len(out):
        raise ConfigError(f"report.comparisons: a pair is listed twice in {params}")
    return out


def read_settings(params: str | Path, variants: Sequence[str], seed: int) -> dict[str, dict[str, Any]]:
    """The few settings that tell the variants apart, from each variant's resolved config."""
    out = {}
    for variant in variants:
        cfg = load_config(params, variant=variant, seed=seed)
        out[variant] = {
            "dsts": bool(cfg.model.dsts.enabled),
            "num_neurons": cfg.model.dsts.num_neurons,
            "specialization": cfg.model.dsts.specialization,
            "udl": cfg.udl.method if cfg.udl.enabled else "no",
            "updates_per_step": cfg.train.updates_per_step,
        }
    return out


def _optional(path: Path) -> dict[str, float]:
    return read_metrics(path) if path.is_file() else {}


def _environment(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object of names to strings")
    return {str(k): str(v) for k, v in data.items()}


def load_runs(runs_dir: str | Path, variants: Sequence[str], seeds: Sequence[int]) -> list[Run]:
    """Every (variant, seed)'s files, variant by variant; the first missing or malformed required
    file (``metrics.json``, ``history.csv``) is a :class:`dsts.runs.RunFileError`."""
    if not variants:
        raise ReportError("variants: the list of variants is empty")
    if not seeds:
        raise ReportError("seeds: the list of seeds is empty")
    runs = []
    for variant in variants:
        for seed in seeds:
            files = run_folder(variant, seed, runs_dir)
            runs.append(
                Run(
                    variant=variant,
                    seed=int(seed),
                    folder=files.path,
                    metrics=read_metrics(files.metrics, REQUIRED),
                    history=read_history(files.history),
                    val_correct=read_val_correct(files.val_correct) if files.val_correct.is_file() else {},
                    timing=_optional(files.timing),
                    cost=_optional(files.cost),
                    environment=_environment(files.environment),
                )
            )
    return runs
