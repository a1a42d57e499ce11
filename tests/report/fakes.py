"""Fake run folders as the train and evaluate stages write them (shared by the report tests and
tests/pipeline/test_report_stage.py)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

LAYERS = 2
NUM_CLASSES = 12
NEURONS = 4
BASE_TOP1 = {"baseline": 0.40, "static": 0.45, "dsts_3d": 0.47, "dsts": 0.50, "dsts_udl": 0.52}
PARAMETERS = {"baseline": 145180.0, "static": 260636.0}  # others: 607004
FLOPS = {"baseline": 1.2e8, "static": 2.5e8}  # others: 4e8


def fake_metrics(variant: str, seed: int, num_neurons: int | None = None) -> dict[str, float]:
    """A realistic ``metrics.json`` of the evaluate stage: per-layer keys for DSTS variants, gate
    (temporal-fraction) keys except for the 3x3x3 variant, none of them for the baseline."""
    rng = np.random.default_rng([seed, sum(map(ord, variant)), len(variant)])
    top1 = BASE_TOP1.get(variant, 0.5) + 0.03 * rng.standard_normal()
    m = {
        "test/top1": float(np.clip(top1, 0, 1)),
        "test/top5": float(np.clip(top1 + 0.3, 0, 1)),
        "test/mean_class_accuracy": float(np.clip(top1 - 0.01 + 0.01 * rng.standard_normal(), 0, 1)),
        "test/loss": float(1.5 + rng.random()),
        "train/loss": float(1.0 + rng.random()),
        "num_parameters": PARAMETERS.get(variant, 607004.0),
        "flops_per_clip": FLOPS.get(variant, 4e8),
    }
    if variant == "baseline":
        return m
    n = num_neurons or (1 if variant == "static" else NEURONS)
    for j in range(LAYERS):
        p = rng.dirichlet(np.ones(n))
        for i in range(n):
            m[f"test/layer{j}/usage/neuron{i}"] = float(p[i])
        entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
        m[f"test/layer{j}/usage_entropy"] = entropy
        m[f"test/layer{j}/usage_entropy_norm"] = entropy / math.log(n) if n > 1 else 0.0
        m[f"test/layer{j}/max_usage"] = float(p.max())
        m[f"test/layer{j}/nmi"] = float(rng.random() * 0.5) if n > 1 else 0.0
        m[f"test/layer{j}/collapse"] = 1.0 if n > 1 and p.max() > 0.9 else 0.0
        if variant == "dsts_3d":
            continue
        temporal, spatial = float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.2, 0.6))
        m[f"test/layer{j}/temporal_fraction/all"] = 0.5 * (temporal + spatial)
        m[f"test/layer{j}/temporal_fraction/temporal_cue"] = temporal
        m[f"test/layer{j}/temporal_fraction/spatial_cue"] = spatial
        m[f"test/layer{j}/temporal_fraction/cue_gap"] = temporal - spatial
        for i in range(n):
            m[f"test/layer{j}/temporal_fraction/neuron{i}"] = float(rng.random())
    return m


def write_run(
    folder: Path,
    metrics: dict[str, float],
    epochs: int = 3,
    seconds: float = 12.5,
    latency: float | None = 4.0,
) -> None:
    """``metrics.json``, ``history.csv``, ``timing.json``, ``per_class.csv`` and (unless ``latency``
    is None) ``cost.json`` of one run."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    with open(folder / "history.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["epoch", "lr", "train/loss", "test/top1", "test/loss", "test/mean_class_accuracy"])
        for e in range(1, epochs + 1):
            frac = e / epochs
            top1 = metrics["test/top1"] * frac
            w.writerow(
                [
                    e,
                    repr(0.002 * (1 - frac)),
                    repr(2.5 - frac),
                    repr(top1),
                    repr(2.4 - frac),
                    repr(0.3 * frac),
                ]
            )
    (folder / "timing.json").write_text(json.dumps({"train_seconds": seconds, "data_seconds": 1.0}) + "\n")
    if latency is not None:
        (folder / "cost.json").write_text(json.dumps({"latency_ms": latency}) + "\n")
    with open(folder / "per_class.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["label", "name", "cue", "support", "accuracy"])
        for k in range(NUM_CLASSES):
            w.writerow([k, f"class {k}", ("spatial", "temporal", "")[k % 3], 8, repr(0.5)])


def write_fake_runs(root: Path, variants, seeds, **run_args) -> dict[tuple[str, int], dict[str, float]]:
    """Every (variant, seed) folder under ``root``; returns the metrics written, by (variant, seed)."""
    out = {}
    for v in variants:
        for s in seeds:
            out[(v, s)] = fake_metrics(v, s)
            write_run(root / v / f"seed{s}", out[(v, s)], **run_args)
    return out


def write_runs_with_top1(root: Path, top1: dict[str, list[float]]) -> list[int]:
    """Fake runs whose top-1 per seed is given; returns the seeds."""
    seeds = list(range(len(next(iter(top1.values())))))
    for v, values in top1.items():
        for s, x in zip(seeds, values):
            write_run(root / v / f"seed{s}", fake_metrics(v, s) | {"test/top1": x})
    return seeds
