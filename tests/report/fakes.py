"""Fake run folders as the train and evaluate stages write them, and a params file that lists them
(shared by the report tests and tests/pipeline/test_report_stage.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from dsts.runs import write_history

ROOT = Path(__file__).resolve().parents[2]
LAYERS = 2
NUM_CLASSES = 12
NEURONS = 4
BASE_TOP1 = {
    "baseline": 0.40,
    "shuffled": 0.36,
    "static": 0.45,
    "dsts_3d": 0.47,
    "dsts": 0.50,
    "dsts_udl": 0.52,
}
PARAMETERS = {"baseline": 145180.0, "shuffled": 145180.0, "static": 260636.0}  # others: 607004
FLOPS = {"baseline": 1.2e8, "shuffled": 1.2e8, "static": 2.5e8}  # others: 4e8
SPATIAL, TEMPORAL = ("facing", "position"), ("rotation", "somersaults")
PAIR_EFFECT = {"dsts": 0.04, "dsts_udl": 0.05, "dsts_3d": 0.02, "static": 0.01}  # on the temporal cues
NO_DSTS = ("baseline", "shuffled")
COMPARISONS = [["dsts", "baseline"], ["dsts", "dsts_3d"], ["dsts_udl", "dsts"], ["shuffled", "baseline"]]


def _pair_accuracies(variant: str, seed: int, rng: np.random.Generator) -> dict[str, float]:
    """Within-pair accuracies with common random numbers: the baseline's values of a seed are shared
    by every variant, plus the variant's effect and noise. ``shuffled`` is at chance on rotation and
    differs from the baseline on the spatial cues by -1, 0 or +1 point (by seed)."""
    common = 0.75 + 0.03 * np.random.default_rng([seed, 7]).standard_normal(4)
    values = dict(zip((*SPATIAL, *TEMPORAL), common.tolist()))
    if variant == "shuffled":
        values |= {a: values[a] + 0.01 * (seed % 3 - 1) for a in SPATIAL}
        values["rotation"] = 0.5 + 0.01 * float(rng.standard_normal())
    elif variant != "baseline":
        effect = PAIR_EFFECT.get(variant, 0.0)
        values |= {
            a: values[a] + effect * (a in TEMPORAL) + 0.005 * float(rng.standard_normal()) for a in values
        }
    out = {f"test/pair/{a}": float(np.clip(v, 0, 1)) for a, v in values.items()}
    out["test/pair/spatial_cue"] = float(np.mean([out[f"test/pair/{a}"] for a in SPATIAL]))
    out["test/pair/temporal_cue"] = float(np.mean([out[f"test/pair/{a}"] for a in TEMPORAL]))
    return out


def fake_metrics(variant: str, seed: int, num_neurons: int | None = None) -> dict[str, float]:
    """A realistic ``metrics.json`` of the evaluate stage: the cue accuracies, per-layer keys for
    DSTS variants, gate (temporal-fraction) keys except for the 3x3x3 variant, none of them for
    the baseline and the shuffled control."""
    rng = np.random.default_rng([seed, sum(map(ord, variant)), len(variant)])
    top1 = BASE_TOP1.get(variant, 0.5) + 0.03 * rng.standard_normal()
    m = {
        "test/top1": float(np.clip(top1, 0, 1)),
        "test/top5": float(np.clip(top1 + 0.3, 0, 1)),
        "test/mean_class_accuracy": float(np.clip(top1 - 0.01 + 0.01 * rng.standard_normal(), 0, 1)),
        "test/top1_spatial_cue": float(np.clip(top1 + 0.05, 0, 1)),
        "test/top1_temporal_cue": float(np.clip(top1 - (0.15 if variant == "shuffled" else 0.05), 0, 1)),
        "test/loss": float(1.5 + rng.random()),
        "train/loss": float(1.0 + rng.random()),
        "num_parameters": PARAMETERS.get(variant, 607004.0),
        "flops_per_clip": FLOPS.get(variant, 4e8),
        **_pair_accuracies(variant, seed, rng),
    }
    if variant in NO_DSTS:
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


def fake_history(variant: str, top1: float, epochs: int) -> list[dict[str, float]]:
    """A ``history.csv`` whose validation top-1 reaches ``top1`` halfway and stays there (so every
    run converges), with the training-time routing of DSTS variants: the selection entropy falls
    and the argmax agreement rises (NaN where undefined: one neuron, or no gates)."""
    rows = []
    for e in range(1, epochs + 1):
        frac = (e - 1) / max(epochs - 1, 1)
        row = {"epoch": e, "lr": 0.002 * (1 - e / epochs), "train/loss": 2.5 - e / epochs}
        row |= {"val/top1": top1 * min(1.0, 2 * e / epochs), "val/loss": 2.4 - e / epochs}
        row["val/mean_class_accuracy"] = 0.3 * e / epochs
        if variant not in NO_DSTS:
            one, gated = variant == "static", variant != "dsts_3d"
            for j in range(LAYERS):
                key = f"train/layer{j}/"
                row[key + "selection_entropy_norm"] = math.nan if one else 0.95 - 0.5 * frac - 0.05 * j
                row[key + "argmax_agreement"] = 1.0 if one else 0.5 + 0.4 * frac
                row[key + "usage_entropy_norm"] = math.nan if one else 0.9 - 0.2 * frac
                row[key + "max_usage"] = 1.0 if one else 0.3 + 0.2 * frac
                row[key + "temporal_fraction"] = 0.5 + 0.1 * frac if gated else math.nan
        rows.append(row)
    return rows


def write_run(
    folder: Path,
    metrics: dict[str, float],
    epochs: int = 3,
    seconds: float = 12.5,
    latency: float | None = 4.0,
    history: Sequence[Mapping[str, float]] | None = None,
) -> None:
    """``metrics.json``, ``history.csv`` (by default :func:`fake_history` of the folder's variant,
    ``<variant>/seed<S>``), ``timing.json``, ``per_class.csv`` and (unless ``latency`` is None)
    ``cost.json`` of one run."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if history is None:
        history = fake_history(folder.parent.name, metrics["test/top1"], epochs)
    write_history(folder / "history.csv", history)
    (folder / "timing.json").write_text(json.dumps({"train_seconds": seconds, "data_seconds": 1.0}) + "\n")
    if latency is not None:
        (folder / "cost.json").write_text(json.dumps({"latency_ms": latency}) + "\n")
    lines = ["label,name,cue,support,accuracy"]
    lines += [f"{k},class {k},{('spatial', 'temporal', '')[k % 3]},8,0.5" for k in range(NUM_CLASSES)]
    (folder / "per_class.csv").write_text("\n".join(lines) + "\n")


def write_fake_runs(root: Path, variants, seeds, **run_args) -> dict[tuple[str, int], dict[str, float]]:
    """Every (variant, seed) folder under ``root``; returns the metrics written, by (variant, seed)."""
    out = {}
    for v in variants:
        for s in seeds:
            out[(v, s)] = fake_metrics(v, s)
            write_run(root / v / f"seed{s}", out[(v, s)], **run_args)
    return out


def write_runs_with(root: Path, values: Mapping[str, Mapping[str, Sequence[float]]], **run_args) -> list[int]:
    """Fake runs whose listed ``metrics.json`` keys are given per seed, ``{variant: {key: values}}``;
    returns the seeds (0, 1, ...)."""
    seeds = list(range(len(next(iter(next(iter(values.values())).values())))))
    for v, keys in values.items():
        for s in seeds:
            write_run(
                root / v / f"seed{s}", fake_metrics(v, s) | {k: x[s] for k, x in keys.items()}, **run_args
            )
    return seeds


def write_runs_with_top1(root: Path, top1: dict[str, list[float]]) -> list[int]:
    """Fake runs whose top-1 per seed is given; returns the seeds."""
    return write_runs_with(root, {v: {"test/top1": x} for v, x in top1.items()})


def write_params(folder: Path, variants, seeds, comparisons=COMPARISONS) -> Path:
    """``params.yaml`` of the repository with these variants, seeds and ``report.comparisons`` (None:
    left out), and the ablation files beside it; returns its path."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["variants"], params["seeds"] = list(variants), list(seeds)
    params["report"] = {k: v for k, v in params.get("report", {}).items() if k != "comparisons"}
    if comparisons is not None:
        params["report"]["comparisons"] = [list(p) for p in comparisons]
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "ablations").symlink_to(ROOT / "ablations", target_is_directory=True)
    return path
