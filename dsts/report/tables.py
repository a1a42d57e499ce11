"""The report's tables, on pandas, from the loaded runs; statistics from ``dsts/stats.py``.

- ``runs``: one row per (variant, seed); the specialization statistics averaged over layers.
- ``layers``: one row per (variant, seed, DSTS layer).
- ``comparisons``: one row per (metric, variant, reference): the paired test of variant minus
  reference over the seeds both have, Holm's adjustment over the variants compared with one
  reference, the sign-flip p-value and the smallest detectable difference.
- ``ablation``: one row per variant: mean, sd and t interval over seeds, the comparisons, the
  specialization means with a one-sample t-test of the cue gap against 0, and the cost means.
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

from dsts.report.load import ReportError, Run
from dsts.stats import ALPHA, POWER, holm, one_sample_test, paired_test, summarize

__all__ = ["REFERENCES", "Report", "build_report", "summary"]

REFERENCES = ("dsts_udl", "static")
METRICS = {"top1": "test/top1", "mca": "test/mean_class_accuracy"}
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
RUN_LAYER_COLUMNS = [("collapse_layers" if s == "collapse" else s) for s in LAYER_STATS]
TEST_KEYS = ("diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "p_sign_flip", "mdd")
COST_COLUMNS = ("num_parameters", "flops_per_clip", "latency_ms")
_LAYER_KEY = re.compile(r"^test/layer(\d+)/(.+)$")
_TOPK_KEY = re.compile(r"^test/top(\d+)$")


@dataclass
class Report:
    """Every table of the report, ready to be written."""

    variants: list[str]
    seeds: list[int]
    references: list[str]
    alpha: float
    power: float
    runs: pd.DataFrame
    layers: pd.DataFrame
    comparisons: pd.DataFrame
    ablation: pd.DataFrame
    specialization: pd.DataFrame
    curves: pd.DataFrame
    configs: dict[str, dict[str, Any]]
    environments: list[tuple[dict[str, str], list[str]]]  # each distinct fingerprint and its runs


def layer_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (variant, seed, layer) from the ``test/layer{j}/...`` keys of ``metrics.json``."""
    by_suffix = {suffix: name for name, suffix in LAYER_STATS.items()}
    cells: dict[tuple[str, int, int], dict[str, float]] = {}
    for r in runs:
        for key, value in r.metrics.items():
            m = _LAYER_KEY.match(key)
            if m and m[2] in by_suffix and math.isfinite(value):
                cells.setdefault((r.variant, r.seed, int(m[1])), {})[by_suffix[m[2]]] = value
    position = {(r.variant, r.seed): i for i, r in enumerate(runs)}
    ordered = sorted(cells.items(), key=lambda item: (position[item[0][:2]], item[0][2]))
    rows = [{"variant": v, "seed": s, "layer": j, **stats} for (v, s, j), stats in ordered]
    table = pd.DataFrame(rows, columns=["variant", "seed", "layer", *LAYER_STATS])
    return table.astype({"seed": int, "layer": int, **dict.fromkeys(LAYER_STATS, float)})


def run_table(runs: Sequence[Run], layers: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, seed): accuracies, losses, cost and the layer means of each run."""
    rows = []
    for r in runs:
        m = r.metrics
        row = {"variant": r.variant, "seed": r.seed, **{name: m[key] for name, key in METRICS.items()}}
        for key in sorted(m, key=lambda k: (len(k), k)):
            topk = _TOPK_KEY.match(key)
            if topk and topk[1] != "1":
                row[f"top{topk[1]}"] = m[key]
        row["test_loss"] = m.get("test/loss", math.nan)
        row["train_loss"] = m.get("train/loss", math.nan)
        row["num_parameters"] = m.get("num_parameters", math.nan)
        row["flops_per_clip"] = m.get("flops_per_clip", math.nan)
        row["latency_ms"] = r.cost.get("latency_ms", math.nan)
        row["train_seconds"] = r.timing.get("train_seconds", math.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    per_run = layers.groupby(["variant", "seed"])
    stats = per_run[list(LAYER_STATS)].mean()
    stats["collapse"] = per_run["collapse"].sum()  # layers without the key count as not collapsed
    stats = stats.rename(columns={"collapse": "collapse_layers"})
    stats.insert(0, "num_layers", per_run.size())
    table = table.join(stats, on=["variant", "seed"])
    table["num_layers"] = table["num_layers"].fillna(0).astype(int)
    return table


def comparison_table(
    runs: pd.DataFrame, variants: Sequence[str], references: Sequence[str], alpha: float, power: float
) -> pd.DataFrame:
    """Every variant against every reference, paired by seed, per metric; Holm within a reference."""
    by_seed = runs.pivot(index="seed", columns="variant", values=list(METRICS))
    rows = []
    for metric in METRICS:
        for ref in references:
            family = []
            for variant in variants:
                if variant == ref:
                    continue
                t = paired_test(
                    by_seed[metric, variant].to_dict(),
                    by_seed[metric, ref].to_dict(),
                    alpha,
                    power,
                    1 - alpha,
                )
                family.append(
                    {
                        "metric": metric,
                        "variant": variant,
                        "reference": ref,
                        "n_pairs": t.n,
                        "diff": t.diff_mean,
                        "diff_sd": t.diff_sd,
                        "diff_ci_low": t.ci_low,
                        "diff_ci_high": t.ci_high,
                        "t": t.t,
                        "p_value": t.p_value,
                        "p_sign_flip": t.p_sign_flip,
                        "mdd": t.mdd,
                    }
                )
            for row, adjusted in zip(family, holm([c["p_value"] for c in family])):
                row["p_holm"] = adjusted
            rows += family
    columns = ["metric", "variant", "reference", "n_pairs", "diff", "diff_sd", "diff_ci_low", "diff_ci_high"]
    columns += ["t", "p_value", "p_sign_flip", "mdd", "p_holm"]
    return pd.DataFrame(rows, columns=columns).astype({"n_pairs": int})


def _wide_comparisons(comparisons: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, a column ``{metric}_{key}_vs_{reference}`` per comparison and key."""
    if comparisons.empty:
        return pd.DataFrame()
    wide = comparisons.pivot(index="variant", columns=["metric", "reference"], values=list(TEST_KEYS))
    order = dict.fromkeys(zip(comparisons["metric"], comparisons["reference"]))
    wide = wide[[(key, m, r) for m, r in order for key in TEST_KEYS]]
    wide.columns = [f"{m}_{key}_vs_{r}" for key, m, r in wide.columns]
    return wide


def _per_variant(
    runs: pd.DataFrame, variants: Sequence[str], fn: Callable[[pd.DataFrame], dict[str, float]]
) -> pd.DataFrame:
    """``fn(rows of one variant) -> dict of columns``, one row per variant."""
    groups = dict(tuple(runs.groupby("variant", sort=False)))
    rows = [fn(groups.get(v, runs.iloc[:0])) for v in variants]
    return pd.DataFrame(rows, index=pd.Index(variants, name="variant"))


def _seed_summary(rows: pd.DataFrame, confidence: float) -> dict[str, float]:
    out: dict[str, float] = {"n_seeds": len(rows)}
    for metric in METRICS:
        s = summarize(rows[metric], confidence)
        out |= {f"{metric}_mean": s.mean, f"{metric}_sd": s.sd}
        out |= {f"{metric}_ci_low": s.ci_low, f"{metric}_ci_high": s.ci_high}
    return out


def _cue_gap_test(rows: pd.DataFrame, alpha: float, power: float) -> dict[str, float]:
    """Is the temporal operator chosen more on temporal-cue than on spatial-cue classes?"""
    gap = one_sample_test(rows["cue_gap"], alpha, power, 1 - alpha)
    return {
        "cue_gap_n": gap.n,
        "cue_gap_mean": gap.diff_mean,
        "cue_gap_ci_low": gap.ci_low,
        "cue_gap_ci_high": gap.ci_high,
        "cue_gap_p_value": gap.p_value,
    }


def ablation_table(
    runs: pd.DataFrame, comparisons: pd.DataFrame, variants: Sequence[str], alpha: float, power: float
) -> pd.DataFrame:
    """One row per variant (``ablation.csv``); a comparison column is NaN for its own reference."""
    means = runs.groupby("variant").mean(numeric_only=True).reindex(variants)
    topk = [c for c in runs if re.fullmatch(r"top\d+", c) and c != "top1"]
    parts = [
        _per_variant(runs, variants, lambda rows: _seed_summary(rows, 1 - alpha)),
        means[[*topk, "test_loss"]].add_suffix("_mean"),
        _wide_comparisons(comparisons),
        runs.groupby("variant")["num_layers"].max().reindex(variants, fill_value=0),
        means[RUN_LAYER_COLUMNS[:-1]],  # the cue gap comes with its test
        _per_variant(runs, variants, lambda rows: _cue_gap_test(rows, alpha, power)),
        means[list(COST_COLUMNS)],
        means[["train_seconds"]].add_suffix("_mean"),
    ]
    return pd.concat(parts, axis=1).reindex(variants).rename_axis("variant").reset_index()


def specialization_table(layers: pd.DataFrame, variants: Sequence[str]) -> pd.DataFrame:
    """One row per (variant, layer): the number of seeds with that layer and the means over them."""
    groups = layers.groupby(["variant", "layer"])
    table = groups[list(LAYER_STATS)].mean()
    table.insert(0, "n_seeds", groups.size())
    rank = {v: i for i, v in enumerate(variants)}

    def in_order(column: pd.Series) -> pd.Series:
        return column.map(rank) if column.name == "variant" else column

    return table.reset_index().sort_values(["variant", "layer"], key=in_order, ignore_index=True)


def curve_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Mean, sd (NaN for one seed) and seed count per (variant, metric, epoch) of ``history.csv``."""
    points = [
        (r.variant, metric, row["epoch"], row[metric])
        for r in runs
        for row in r.history
        for metric in CURVES
        if metric in row and math.isfinite(row[metric])
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
    references: Sequence[str] = REFERENCES,
    alpha: float = ALPHA,
    power: float = POWER,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Report:
    """Every table of the report from the loaded runs; the references absent from the variants are
    left out. The intervals are at ``1 - alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ReportError(f"alpha: {alpha} must lie in (0, 1)")
    if not 0.0 < power < 1.0:
        raise ReportError(f"power: {power} must lie in (0, 1)")
    variants = list(variants)
    refs = [r for r in references if r in variants]
    layers = layer_table(runs)
    table = run_table(runs, layers)
    comparisons = comparison_table(table, variants, refs, alpha, power)
    return Report(
        variants=variants,
        seeds=[int(s) for s in seeds],
        references=refs,
        alpha=alpha,
        power=power,
        runs=table,
        layers=layers,
        comparisons=comparisons,
        ablation=ablation_table(table, comparisons, variants, alpha, power),
        specialization=specialization_table(layers, variants),
        curves=curve_table(runs),
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


SUMMARY_VARIANT_KEYS = (
    *("n_seeds", "top1_mean", "top1_sd", "top1_ci_low", "top1_ci_high"),
    *("mca_mean", "mca_sd", "mca_ci_low", "mca_ci_high"),
    *("usage_entropy_norm", "nmi", "collapse_layers", "tf_temporal_cue", "tf_spatial_cue"),
    *("cue_gap_mean", "cue_gap_p_value", "num_parameters", "flops_per_clip"),
)


def summary(report: Report) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``: no timing or latency (so a rerun writes the same bytes) and
    no undefined value (JSON has no NaN)."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        value = float(value)
        if math.isfinite(value):
            out[key] = int(value) if key.endswith(("n_seeds", "n_pairs")) else value

    for row in report.ablation.to_dict("records"):
        for key in SUMMARY_VARIANT_KEYS:
            put(f"{row['variant']}/{key}", row.get(key, math.nan))
    for c in report.comparisons.to_dict("records"):
        prefix = f"{c['variant']}_vs_{c['reference']}/{c['metric']}"
        put(f"{prefix}_n_pairs", c["n_pairs"])
        for key in TEST_KEYS:
            put(f"{prefix}_{key}", c[key])
    return dict(sorted(out.items()))
