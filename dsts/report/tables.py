"""The report's tables, on pandas, from the loaded runs; statistics from ``dsts/stats.py``.

- ``runs``: one row per (variant, seed): accuracies, the cue accuracies, the late validation gain
  and its validation-sampling sd, cost, and the specialization and training-time routing statistics averaged over layers.
- ``layers``: one row per (variant, seed, DSTS layer).
- ``comparisons``: one row per (metric, compared pair): the paired test of first minus second over
  the seeds both have, Holm's adjustment over the pairs compared on one metric, the sign-flip
  p-value and the smallest detectable difference.
- ``ablation``: one row per variant: mean, sd and t interval over seeds, the within-pair accuracy
  of each cue attribute with its one-sample t-test against chance, the epochs and the share of
  converged seeds, the specialization means with one-sample t-tests (cue gap and NMI against 0, the
  fall of the selection entropy against 0), and the cost means.
- ``specialization``: one row per (variant, layer), means over seeds.
- ``curves``: mean and sd over seeds per (variant, metric, epoch) of ``history.csv``.

Accuracies stay fractions, as in ``metrics.json``. A value a run lacks is NaN, never an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dsts.report.load import DEFAULT_COMPARISONS, ReportError, Run
from dsts.report.verdicts import (
    CHANCE,
    ROUTING,
    Control,
    control_check,
    flagged,
    late_gain,
    late_gain_sd,
    pair_tests,
    routing_ends,
)
from dsts.stats import ALPHA, POWER, holm, one_sample_test, summarize

__all__ = ["Report", "build_report", "compared_metrics", "wide_curve"]

METRICS = {"top1": "test/top1", "mca": "test/mean_class_accuracy"}
CUE_TOP1 = {"top1_spatial_cue": "test/top1_spatial_cue", "top1_temporal_cue": "test/top1_temporal_cue"}
SEED_METRICS = (*METRICS, *CUE_TOP1)  # summarized over seeds per variant
ATTRIBUTES = ("rotation", "somersaults", "facing", "position", "spatial_cue", "temporal_cue")  # known order
CURVES = ("val/top1", "train/loss")
LAYER_STATS = {
    "usage_entropy": "usage_entropy",
    "usage_entropy_norm": "usage_entropy_norm",
    "nmi": "nmi",
    "max_usage": "max_usage",
    "collapse": "collapse",
    "tf_all": "temporal_fraction/all",
    "tf_temporal_cue": "temporal_fraction/temporal_cue",
    "tf_spatial_cue": "temporal_fraction/spatial_cue",
    "cue_gap": "temporal_fraction/cue_gap",
}
ROUTING_STATS = tuple(f"{name}_{end}" for name in ROUTING for end in ("first", "last"))
LAYER_COLUMNS = (*LAYER_STATS, *ROUTING_STATS)
TESTED = ("nmi", "cue_gap", "entropy_drop")  # reported with a one-sample t-test against 0
COST_COLUMNS = ("num_parameters", "flops_per_clip", "latency_ms")
_LAYER_KEY = re.compile(r"^test/layer(\d+)/(.+)$")
_NEURON_KEY = re.compile(r"^test/layer\d+/usage/neuron(\d+)$")
_PAIR_KEY = re.compile(r"^test/pair/(.+)$")
_TOPK_KEY = re.compile(r"^test/top(\d+)$")
_ROUTING_CURVE = re.compile(r"^train/layer\d+/(" + "|".join(ROUTING.values()) + r")$")


@dataclass
class Report:
    """Every table of the report, ready to be written."""

    variants: list[str]
    seeds: list[int]
    pairs: list[tuple[str, str]]  # the comparisons made, first - second
    skipped: list[tuple[str, str]]  # the comparisons asked for with a variant not in ``variants``
    attributes: list[str]  # the cue attributes with a within-pair accuracy
    alpha: float
    power: float
    runs: pd.DataFrame
    layers: pd.DataFrame
    comparisons: pd.DataFrame
    ablation: pd.DataFrame
    specialization: pd.DataFrame
    curves: pd.DataFrame
    control: Control
    configs: dict[str, dict[str, Any]]
    environments: list[tuple[dict[str, str], list[str]]]  # each distinct fingerprint and its runs


def layer_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (variant, seed, layer) from the ``test/layer{j}/...`` keys of ``metrics.json``
    and the ends of the ``train/layer{j}/...`` routing trajectories of ``history.csv``."""
    by_suffix = {suffix: name for name, suffix in LAYER_STATS.items()}
    cells: dict[tuple[str, int, int], dict[str, float]] = {}
    for r in runs:
        for key, value in r.metrics.items():
            m = _LAYER_KEY.match(key)
            if m and m[2] in by_suffix and math.isfinite(value):
                cells.setdefault((r.variant, r.seed, int(m[1])), {})[by_suffix[m[2]]] = value
        for layer, ends in routing_ends(r.history).items():
            cells.setdefault((r.variant, r.seed, layer), {}).update(ends)
    position = {(r.variant, r.seed): i for i, r in enumerate(runs)}
    ordered = sorted(cells.items(), key=lambda item: (position[item[0][:2]], item[0][2]))
    rows = [{"variant": v, "seed": s, "layer": j, **stats} for (v, s, j), stats in ordered]
    table = pd.DataFrame(rows, columns=["variant", "seed", "layer", *LAYER_COLUMNS])
    return table.astype({"seed": int, "layer": int, **dict.fromkeys(LAYER_COLUMNS, float)})


def cue_attributes(runs: Sequence[Run]) -> list[str]:
    """The attributes with a within-pair accuracy (``test/pair/<attribute>``) in some run: the known
    ones in their order, then any other alphabetically."""
    found = {m[1] for r in runs for key in r.metrics if (m := _PAIR_KEY.match(key))}
    return [a for a in ATTRIBUTES if a in found] + sorted(found - set(ATTRIBUTES))


def _run_row(r: Run, attributes: Sequence[str]) -> dict[str, Any]:
    m = r.metrics
    row = {"variant": r.variant, "seed": r.seed, **{name: m[key] for name, key in METRICS.items()}}
    for key in sorted(m, key=lambda k: (len(k), k)):
        topk = _TOPK_KEY.match(key)
        if topk and topk[1] != "1":
            row[f"top{topk[1]}"] = m[key]
    row |= {name: m.get(key, math.nan) for name, key in CUE_TOP1.items()}
    row |= {f"pair_{a}": m.get(f"test/pair/{a}", math.nan) for a in attributes}
    row["test_loss"] = m.get("test/loss", math.nan)
    row["train_loss"] = m.get("train/loss", math.nan)
    row["num_parameters"] = m.get("num_parameters", math.nan)
    row["flops_per_clip"] = m.get("flops_per_clip", math.nan)
    row["latency_ms"] = r.cost.get("latency_ms", math.nan)
    row["train_seconds"] = r.timing.get("train_seconds", math.nan)
    neurons = [int(n[1]) + 1 for key in m if (n := _NEURON_KEY.match(key))]
    row["num_neurons"] = max(neurons, default=0)
    gain, last, start = late_gain(r.history)
    row |= {"epochs": len(r.history), "val_gain": gain, "gain_from": start, "gain_to": last}
    row["val_gain_sd"] = late_gain_sd(r.history, r.val_correct)
    row["converged"] = math.nan if math.isnan(gain) else float(not flagged(gain))
    return row


def run_table(runs: Sequence[Run], layers: pd.DataFrame, attributes: Sequence[str]) -> pd.DataFrame:
    """One row per (variant, seed): accuracies, losses, convergence, cost and the layer means."""
    table = pd.DataFrame([_run_row(r, attributes) for r in runs])
    per_run = layers.groupby(["variant", "seed"])
    stats = per_run[list(LAYER_COLUMNS)].mean()
    stats["collapse"] = per_run["collapse"].sum()  # layers without the key count as not collapsed
    stats = stats.rename(columns={"collapse": "collapse_layers"})
    stats.insert(0, "num_layers", per_run.size())
    table = table.join(stats, on=["variant", "seed"])
    table["num_layers"] = table["num_layers"].fillna(0).astype(int)
    table["entropy_drop"] = table["selection_entropy_first"] - table["selection_entropy_last"]
    return table


def compared_metrics(runs: pd.DataFrame, attributes: Sequence[str]) -> dict[str, str]:
    """Metric name -> run-table column, for every metric the comparisons test: top-1, mean class
    accuracy, each attribute's within-pair accuracy and the top-1 per kind of cue, where recorded."""
    metrics = {"top1": "top1", "mca": "mca", **{a: f"pair_{a}" for a in attributes}}
    metrics |= {name: name for name in CUE_TOP1 if runs[name].notna().any()}
    return metrics


def comparison_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The paired tests of :func:`dsts.report.verdicts.pair_tests` with Holm's adjustment over the
    pairs compared on one metric (for top-1: the family of the study's top-1 comparisons)."""
    for metric in dict.fromkeys(row["metric"] for row in rows):
        family = [row for row in rows if row["metric"] == metric]
        for row, adjusted in zip(family, holm([row["p_value"] for row in family])):
            row["p_holm"] = adjusted
    columns = ["metric", "first", "second", "n_pairs", "diff", "diff_sd", "diff_ci_low", "diff_ci_high"]
    columns += ["t", "p_value", "p_sign_flip", "mdd", "p_holm"]
    return pd.DataFrame(rows, columns=columns).astype({"n_pairs": int})


def _per_variant(
    runs: pd.DataFrame, variants: Sequence[str], fn: Callable[[pd.DataFrame], dict[str, float]]
) -> pd.DataFrame:
    """``fn(rows of one variant) -> dict of columns``, one row per variant."""
    groups = dict(tuple(runs.groupby("variant", sort=False)))
    rows = [fn(groups.get(v, runs.iloc[:0])) for v in variants]
    return pd.DataFrame(rows, index=pd.Index(variants, name="variant"))


def _seed_summary(rows: pd.DataFrame, confidence: float) -> dict[str, float]:
    out: dict[str, float] = {"n_seeds": len(rows)}
    for metric in SEED_METRICS:
        s = summarize(rows[metric], confidence)
        out |= {f"{metric}_mean": s.mean, f"{metric}_sd": s.sd}
        out |= {f"{metric}_ci_low": s.ci_low, f"{metric}_ci_high": s.ci_high}
    return out


def one_sample(
    values: pd.Series, name: str, alpha: float, power: float, null: float = 0.0
) -> dict[str, float]:
    """``<name>_n``, ``_mean``, ``_ci_low``, ``_ci_high`` of the values and the p-value of the
    two-sided one-sample t-test of their mean against ``null``."""
    t = one_sample_test(values - null, alpha, power, 1 - alpha)
    return {
        f"{name}_n": t.n,
        f"{name}_mean": t.diff_mean + null,
        f"{name}_ci_low": t.ci_low + null,
        f"{name}_ci_high": t.ci_high + null,
        f"{name}_p_value": t.p_value,
    }


def _tests(rows: pd.DataFrame, attributes: Sequence[str], alpha: float, power: float) -> dict[str, float]:
    """Each within-pair accuracy against chance, and the specialization statistics against 0: is
    the NMI above 0, do temporal-cue classes choose the temporal operator more than spatial-cue
    classes, did the training-time selection sharpen."""
    out: dict[str, float] = {}
    for a in attributes:
        out |= one_sample(rows[f"pair_{a}"], f"pair_{a}", alpha, power, CHANCE)
    for name in TESTED:
        out |= one_sample(rows[name], name, alpha, power)
    return out


def _convergence(rows: pd.DataFrame) -> dict[str, float]:
    """The epochs of the variant's runs, its largest late gain with that run's sampling sd, and the
    share of its seeds not flagged; undefined when the late gain of some seed is unknown."""
    known = rows["converged"].notna().all() and len(rows) > 0
    gains = rows["val_gain"].dropna()
    return {
        "epochs_min": rows["epochs"].min(),
        "epochs_max": rows["epochs"].max(),
        "gain_max": rows["val_gain"].max(),
        "gain_max_sd": rows.loc[gains.idxmax(), "val_gain_sd"] if len(gains) else math.nan,
        "converged_share": rows["converged"].mean() if known else math.nan,
    }


def ablation_table(
    runs: pd.DataFrame, variants: Sequence[str], attributes: Sequence[str], alpha: float, power: float
) -> pd.DataFrame:
    """One row per variant (``ablation.csv``)."""
    means = runs.groupby("variant").mean(numeric_only=True).reindex(variants)
    topk = [c for c in runs if re.fullmatch(r"top\d+", c) and c != "top1"]
    untested = [c for c in (*LAYER_STATS, *ROUTING_STATS) if c not in TESTED and c != "collapse"]
    parts = [
        _per_variant(runs, variants, lambda rows: _seed_summary(rows, 1 - alpha)),
        means[[*topk, "test_loss"]].add_suffix("_mean"),
        _per_variant(runs, variants, _convergence),
        runs.groupby("variant")[["num_layers", "num_neurons"]].max().reindex(variants, fill_value=0),
        means[[*untested, "collapse_layers"]],
        _per_variant(runs, variants, lambda rows: _tests(rows, attributes, alpha, power)),
        means[list(COST_COLUMNS)],
        means[["train_seconds"]].add_suffix("_mean"),
    ]
    return pd.concat(parts, axis=1).reindex(variants).rename_axis("variant").reset_index()


def specialization_table(layers: pd.DataFrame, variants: Sequence[str]) -> pd.DataFrame:
    """One row per (variant, layer): the number of seeds with that layer and the means over them."""
    groups = layers.groupby(["variant", "layer"])
    table = groups[list(LAYER_COLUMNS)].mean()
    table.insert(0, "n_seeds", groups.size())
    rank = {v: i for i, v in enumerate(variants)}

    def in_order(column: pd.Series) -> pd.Series:
        return column.map(rank) if column.name == "variant" else column

    return table.reset_index().sort_values(["variant", "layer"], key=in_order, ignore_index=True)


def curve_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Mean, sd (NaN for one seed) and seed count per (variant, metric, epoch) of ``history.csv``:
    the learning curves and the training-time routing trajectories."""
    points = [
        (r.variant, metric, row["epoch"], value)
        for r in runs
        for row in r.history
        for metric, value in row.items()
        if (metric in CURVES or _ROUTING_CURVE.match(metric)) and math.isfinite(value)
    ]
    long = pd.DataFrame(points, columns=["variant", "metric", "epoch", "value"])
    stats = long.groupby(["variant", "metric", "epoch"])["value"].agg(["mean", "std", "count"])
    return stats.rename(columns={"std": "sd", "count": "n"}).reset_index()


def wide_curve(report: Report, metric: str = CURVES[0]) -> pd.DataFrame:
    """``epoch`` and one column per variant: the mean over seeds of ``metric`` at that epoch (what
    ``dvc plots`` draws as one line per variant)."""
    curves = report.curves[report.curves["metric"] == metric]
    wide = curves.pivot(index="epoch", columns="variant", values="mean")
    wide = wide.reindex(columns=[v for v in report.variants if v in wide.columns])
    wide.index = wide.index.astype(int)
    return wide.reset_index().rename_axis(columns=None)


def build_report(
    runs: Sequence[Run],
    variants: Sequence[str],
    seeds: Sequence[int],
    comparisons: Sequence[tuple[str, str]] | None = None,
    alpha: float = ALPHA,
    power: float = POWER,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Report:
    """Every table of the report from the loaded runs. ``comparisons`` (None: the default pairs)
    with a variant not in ``variants`` are skipped. The intervals are at ``1 - alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ReportError(f"alpha: {alpha} must lie in (0, 1)")
    if not 0.0 < power < 1.0:
        raise ReportError(f"power: {power} must lie in (0, 1)")
    variants = list(variants)
    asked = [tuple(p) for p in (DEFAULT_COMPARISONS if comparisons is None else comparisons)]
    pairs = [p for p in asked if p[0] in variants and p[1] in variants]
    attributes = cue_attributes(runs)
    layers = layer_table(runs)
    table = run_table(runs, layers, attributes)
    metrics = compared_metrics(table, attributes)
    return Report(
        variants=variants,
        seeds=[int(s) for s in seeds],
        pairs=pairs,
        skipped=[p for p in asked if p not in pairs],
        attributes=attributes,
        alpha=alpha,
        power=power,
        runs=table,
        layers=layers,
        comparisons=comparison_table(pair_tests(table, pairs, metrics, alpha, power)),
        ablation=ablation_table(table, variants, attributes, alpha, power),
        specialization=specialization_table(layers, variants),
        curves=curve_table(runs),
        control=control_check(table, variants, alpha, power),
        configs={k: dict(v) for k, v in (configs or {}).items()},
        environments=environments(runs),
    )


def environments(runs: Sequence[Run]) -> list[tuple[dict[str, str], list[str]]]:
    """The distinct fingerprints the runs were trained under, each with its runs, most runs first;
    runs without ``environment.json`` are left out."""
    groups: dict[str, tuple[dict[str, str], list[str]]] = {}
    for r in runs:
        if r.environment:
            key = json.dumps(r.environment, sort_keys=True)
            groups.setdefault(key, (r.environment, []))[1].append(f"{r.variant}/seed{r.seed}")
    return sorted(groups.values(), key=lambda g: -len(g[1]))
