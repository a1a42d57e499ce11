"""The ablation report: seed statistics, paired tests, specialization, cost, tables and figures.

Everything here is computed from the files the ``train`` and ``evaluate`` stages write under
``runs/<variant>/seed<S>/`` (``metrics.json``, ``history.csv``, ``timing.json``) plus, for the cost
columns, one model per variant. The statistics are plain and written out in full (no scipy):

- per variant, over seeds: mean, standard deviation (``ddof=1``) and the t-based 95% confidence
  interval ``mean +- t_{0.975, n-1} sd / sqrt(n)`` (undefined for one seed);
- paired by seed, variant minus reference: the mean difference, its t-based CI, the two-sided
  paired t-test ``t = mean(d) / (sd(d) / sqrt(n))`` on ``n - 1`` degrees of freedom, Holm's
  step-down adjustment over the comparisons against one reference, and the exact sign-flip
  permutation p-value (all ``2^n`` sign patterns of the differences; it cannot go below ``2^(1-n)``);
- the minimum detectable difference of a paired design with ``n`` seeds,
  ``MDD = (t_{1-alpha/2, n-1} + t_{power, n-1}) sd(d) / sqrt(n)`` (the usual shifted central-t
  approximation of the power of the paired t-test);
- the specialization statistics of ``dsts.metrics.specialization_stats``, averaged over layers per
  run and over seeds per variant, with a one-sample t-test of the layer-averaged temporal-fraction
  gap (temporal-cue minus spatial-cue classes) against 0.

Degenerate cases are defined, not left to chance: with all differences equal (``sd(d) = 0``) the
p-value is 1 when they are 0 and 0 otherwise; with fewer than 2 pairs no test is made (NaN).
Accuracies stay fractions in the CSV and JSON files, as in ``metrics.json``; the markdown shows
percentage points. ``summary.json`` holds no timing, so it is byte-identical run after run.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsts.errors import DSTSError

__all__ = [
    "REFERENCES",
    "PairedTest",
    "ReportError",
    "Summary",
    "betainc",
    "build_report",
    "count_flops",
    "holm",
    "load_runs",
    "make_report",
    "min_detectable_difference",
    "one_sample_test",
    "paired_test",
    "sign_flip_p",
    "summarize",
    "t_cdf",
    "t_ppf",
    "t_sf",
    "variant_cost",
    "write_report",
]

REFERENCES = ("dsts_udl", "static")
ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
SIGN_FLIP_MAX_N = 16  # 2^16 sign patterns; beyond that the exact permutation p-value is omitted


class ReportError(DSTSError):
    """Missing or malformed run files; the message is one line naming the file."""


# ---------------------------------------------------------------------------------------------
# Student's t distribution, from the regularized incomplete beta function


_FPMIN = 1e-300
_EPS = 1e-16


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) > _FPMIN else _FPMIN
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) > _FPMIN else _FPMIN
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` for ``a, b > 0``; ``y`` is ``1 - x`` when the caller
    knows it more accurately than ``1 - x`` in floating point."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc: a and b must be > 0, got a={a}, b={b}")
    if math.isnan(x):
        return math.nan
    if y is None:
        y = 1.0 - x
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, y) / b


def _check_df(df: float) -> float:
    df = float(df)
    if not df > 0 or math.isinf(df):
        raise ValueError(f"t distribution: degrees of freedom must be finite and > 0, got {df}")
    return df


def t_sf(t: float, df: float) -> float:
    """Upper tail ``P(T > t)`` of Student's t with ``df`` degrees of freedom (accurate far in the tail)."""
    df = _check_df(df)
    t = float(t)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if t < 0:
        return 1.0 - t_sf(-t, df)
    t2 = t * t
    # P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2); both arguments computed without cancellation
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` of Student's t with ``df`` degrees of freedom."""
    t = float(t)
    if t < 0:
        return t_sf(-t, df)
    return 1.0 - t_sf(t, df)


def _t_pdf(t: float, df: float) -> float:
    log_pdf = (
        math.lgamma((df + 1.0) / 2.0)
        - math.lgamma(df / 2.0)
        - 0.5 * math.log(df * math.pi)
        - (df + 1.0) / 2.0 * math.log1p(t * t / df)
    )
    return math.exp(log_pdf)


def _t_isf(q: float, df: float) -> float:
    """The ``t >= 0`` with ``t_sf(t, df) = q`` for ``q`` in (0, 0.5]: safeguarded Newton in a bracket."""
    if q >= 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > q:
        lo, hi = hi, hi * 2.0
        if math.isinf(hi):
            return math.inf
    t = 0.5 * (lo + hi)
    for _ in range(2000):
        f = t_sf(t, df) - q
        if f == 0.0:
            return t
        if f > 0:
            lo = t
        else:
            hi = t
        pdf = _t_pdf(t, df)
        step = f / pdf if pdf > 0 else math.inf
        candidate = t + step
        if not (lo < candidate < hi):
            candidate = 0.5 * (lo + hi)
        if candidate == t or hi - lo <= 4.0 * math.ulp(hi):
            return candidate
        if abs(candidate - t) <= 2.0 * math.ulp(t):
            return candidate
        t = candidate
    return t


def t_ppf(p: float, df: float) -> float:
    """The quantile ``t`` with ``t_cdf(t, df) = p`` (``-inf`` at 0, ``inf`` at 1)."""
    df = _check_df(df)
    p = float(p)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"t_ppf: p must lie in [0, 1], got {p}")
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    if p < 0.5:
        return -_t_isf(p, df)
    return _t_isf(1.0 - p, df)


# ---------------------------------------------------------------------------------------------
# seed statistics and tests


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and t-based confidence interval of one variant over seeds."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float


def _finite(values: Iterable[float]) -> list[float]:
    out = []
    for v in values:
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
    """Over the finite ``values``: ``n``, mean, sd (``ddof=1``) and the t-based CI (NaN for n < 2)."""
    xs = _finite(values)
    n = len(xs)
    mean, sd = _mean_sd(xs)
    if n < 2:
        return Summary(n, mean, sd, math.nan, math.nan)
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def min_detectable_difference(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true paired difference that a two-sided paired t-test at level ``alpha`` detects with
    probability ``power``: ``(t_{1-alpha/2, n-1} + t_{power, n-1}) sd_diff / sqrt(n)``; NaN for n < 2."""
    if n < 2 or not math.isfinite(sd_diff):
        return math.nan
    return (t_ppf(1.0 - alpha / 2.0, n - 1) + t_ppf(power, n - 1)) * sd_diff / math.sqrt(n)


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p-value of ``mean(d) = 0``: the share of the ``2^n``
    sign patterns whose ``|sum(s d)|`` reaches the observed ``|sum(d)|`` (NaN for n = 0 or n > 16)."""
    d = np.asarray(_finite(diffs), dtype=np.float64)
    n = d.size
    if n == 0 or n > SIGN_FLIP_MAX_N:
        return math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)), dtype=np.float64)
    observed = abs(math.fsum(d.tolist()))
    sums = np.abs(signs @ d)
    tol = 1e-12 * max(float(np.abs(d).sum()), 1e-300)  # equal sums up to rounding count as ties
    return float(np.count_nonzero(sums >= observed - tol)) / signs.shape[0]


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """A one-sample (paired) t-test of differences against 0, with its CI, sign-flip p and MDD."""

    n: int
    diff_mean: float
    diff_sd: float
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    p_sign_flip: float
    mdd: float


def one_sample_test(
    diffs: Iterable[float], alpha: float = ALPHA, power: float = POWER, confidence: float = CONFIDENCE
) -> PairedTest:
    """Two-sided t-test of ``mean(diffs) = 0`` over the finite ``diffs``. ``sd = 0``: p is 1 when
    every difference is 0, else 0 (t infinite); n < 2: no test (NaN)."""
    d = _finite(diffs)
    n = len(d)
    s = summarize(d, confidence)
    if n < 2:
        return PairedTest(n, s.mean, s.sd, math.nan, math.nan, math.nan, math.nan, sign_flip_p(d), math.nan)
    if s.sd == 0.0:
        t = 0.0 if s.mean == 0.0 else math.copysign(math.inf, s.mean)
        p = 1.0 if s.mean == 0.0 else 0.0
    else:
        t = s.mean / (s.sd / math.sqrt(n))
        p = min(1.0, 2.0 * t_sf(abs(t), n - 1))
    mdd = min_detectable_difference(s.sd, n, alpha, power)
    return PairedTest(n, s.mean, s.sd, s.ci_low, s.ci_high, t, p, sign_flip_p(d), mdd)


def paired_test(
    a: Mapping[Any, float] | Sequence[float],
    b: Mapping[Any, float] | Sequence[float],
    alpha: float = ALPHA,
    power: float = POWER,
    confidence: float = CONFIDENCE,
) -> PairedTest:
    """Paired test of ``a - b``. Mappings are paired by key (the seed), keeping the keys where both
    values are finite; sequences are paired by position and must have equal lengths."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = [k for k in a if k in b and math.isfinite(float(a[k])) and math.isfinite(float(b[k]))]
        diffs = [float(a[k]) - float(b[k]) for k in sorted(keys)]
    else:
        xs, ys = list(a), list(b)  # type: ignore[arg-type]
        if len(xs) != len(ys):
            raise ValueError(f"paired_test: {len(xs)} values against {len(ys)}: pairs need equal lengths")
        diffs = [
            float(x) - float(y) for x, y in zip(xs, ys) if math.isfinite(float(x)) and math.isfinite(float(y))
        ]
    return one_sample_test(diffs, alpha, power, confidence)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count as comparisons)."""
    idx = [i for i, p in enumerate(p_values) if math.isfinite(float(p))]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: (float(p_values[i]), i))):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


# ---------------------------------------------------------------------------------------------
# run files


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
_LAYER_KEY = re.compile(r"^test/layer(\d+)/(.+)$")
_TOPK_KEY = re.compile(r"^test/top(\d+)$")
REQUIRED = ("test/top1", "test/mean_class_accuracy")


@dataclasses.dataclass
class RunData:
    """The files of one (variant, seed) run."""

    variant: str
    seed: int
    folder: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    timing: dict[str, float]


def _read_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise ReportError(f"{path}: missing (run the evaluate stage for this variant and seed first)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object of metric names to numbers")
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReportError(f"{path}: {key!r} is not a number: {value!r}")
        out[str(key)] = float(value)
    for key in REQUIRED:
        if key not in out or not math.isfinite(out[key]):
            raise ReportError(f"{path}: no finite {key!r}")
    return out


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        raise ReportError(f"{path}: missing (run the train stage for this variant and seed first)")
    rows: list[dict[str, float]] = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "epoch" not in reader.fieldnames:
            raise ReportError(f"{path}: expected a CSV with an 'epoch' column")
        for line, row in enumerate(reader, start=2):
            parsed: dict[str, float] = {}
            for key, text in row.items():
                if key is None or text is None or text == "":
                    continue
                try:
                    parsed[key] = float(text)
                except ValueError:
                    raise ReportError(f"{path} line {line}: {key!r} is not a number: {text!r}") from None
            if "epoch" not in parsed:
                raise ReportError(f"{path} line {line}: no epoch")
            rows.append(parsed)
    return rows


def _read_timing(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}  # timings are informative only; their absence does not stop a report
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ReportError(f"{path}: not readable JSON") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def load_runs(runs_dir: str | Path, variants: Sequence[str], seeds: Sequence[int]) -> list[RunData]:
    """Every (variant, seed)'s files; the first missing or malformed one is a :class:`ReportError`."""
    if not variants:
        raise ReportError("variants: the list of variants is empty")
    if not seeds:
        raise ReportError("seeds: the list of seeds is empty")
    runs = []
    for variant in variants:
        for seed in seeds:
            folder = Path(runs_dir) / variant / f"seed{seed}"
            runs.append(
                RunData(
                    variant=variant,
                    seed=int(seed),
                    folder=folder,
                    metrics=_read_metrics(folder / "metrics.json"),
                    history=_read_history(folder / "history.csv"),
                    timing=_read_timing(folder / "timing.json"),
                )
            )
    return runs


def _layers(metrics: Mapping[str, float]) -> dict[int, dict[str, float]]:
    """``{layer: {stat: value}}`` from the ``test/layer{j}/...`` keys."""
    by_key = {suffix: name for name, suffix in LAYER_STATS.items()}
    out: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        m = _LAYER_KEY.match(key)
        if m and m[2] in by_key and math.isfinite(value):
            out.setdefault(int(m[1]), {})[by_key[m[2]]] = value
    return dict(sorted(out.items()))


def _layer_mean(layers: Mapping[int, Mapping[str, float]], stat: str) -> float:
    values = [v[stat] for v in layers.values() if stat in v]
    return math.fsum(values) / len(values) if values else math.nan


def run_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """The tidy table: one row per (variant, seed), specialization stats averaged over layers."""
    rows = []
    for r in runs:
        m = r.metrics
        layers = _layers(m)
        row: dict[str, Any] = {
            "variant": r.variant,
            "seed": r.seed,
            "top1": m["test/top1"],
            "mca": m["test/mean_class_accuracy"],
        }
        for key in sorted(m, key=lambda k: (len(k), k)):
            t = _TOPK_KEY.match(key)
            if t and t[1] != "1":
                row[f"top{t[1]}"] = m[key]
        row["test_loss"] = m.get("test/loss", math.nan)
        row["train_loss"] = m.get("train/loss", math.nan)
        row["num_parameters"] = m.get("num_parameters", math.nan)
        row["train_seconds"] = r.timing.get("train_seconds", math.nan)
        row["num_layers"] = len(layers)
        for stat in LAYER_STATS:
            if stat == "collapse":
                row["collapse_layers"] = (
                    math.fsum(v.get("collapse", 0.0) for v in layers.values()) if layers else math.nan
                )
            else:
                row[stat] = _layer_mean(layers, stat)
        rows.append(row)
    return rows


def layer_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """Long table: one row per (variant, seed, DSTS layer)."""
    rows = []
    for r in runs:
        for j, stats in _layers(r.metrics).items():
            rows.append(
                {
                    "variant": r.variant,
                    "seed": r.seed,
                    "layer": j,
                    **{s: stats.get(s, math.nan) for s in LAYER_STATS},
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# the report tables


METRICS = (("top1", "top-1"), ("mca", "mean class accuracy"))


@dataclasses.dataclass
class Report:
    """Every table of the report, ready to be written."""

    variants: list[str]
    seeds: list[int]
    references: list[str]
    alpha: float
    power: float
    runs: list[dict[str, Any]]  # tidy (variant, seed) rows
    layers: list[dict[str, Any]]  # (variant, seed, layer) rows
    variant_rows: list[dict[str, Any]]  # one row per variant (ablation.csv)
    comparisons: list[dict[str, Any]]  # one row per (metric, variant, reference)
    layer_summary: list[dict[str, Any]]  # one row per (variant, layer): means over seeds
    curves: dict[
        str, dict[str, list[tuple[float, float, float, int]]]
    ]  # variant -> metric -> (epoch, mean, sd, n)
    configs: dict[str, dict[str, Any]]  # variant -> a few resolved settings
    cost: dict[str, dict[str, float]]  # variant -> num_parameters, flops_per_clip, latency_ms


def _by_variant(rows: Sequence[Mapping[str, Any]], variant: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["variant"] == variant]


def _seed_map(rows: Sequence[Mapping[str, Any]], variant: str, key: str) -> dict[int, float]:
    return {int(r["seed"]): float(r[key]) for r in _by_variant(rows, variant) if key in r}


def _mean_of(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    values = _finite(r.get(key, math.nan) for r in rows)
    return math.fsum(values) / len(values) if values else math.nan


def _curves(
    runs: Sequence[RunData], variants: Sequence[str]
) -> dict[str, dict[str, list[tuple[float, float, float, int]]]]:
    out: dict[str, dict[str, list[tuple[float, float, float, int]]]] = {}
    for variant in variants:
        per_metric: dict[str, list[tuple[float, float, float, int]]] = {}
        for metric in ("test/top1", "train/loss"):
            by_epoch: dict[float, list[float]] = {}
            for r in runs:
                if r.variant != variant:
                    continue
                for row in r.history:
                    if metric in row and math.isfinite(row[metric]):
                        by_epoch.setdefault(row["epoch"], []).append(row[metric])
            points = []
            for epoch in sorted(by_epoch):
                mean, sd = _mean_sd(by_epoch[epoch])
                points.append((epoch, mean, sd, len(by_epoch[epoch])))
            if points:
                per_metric[metric] = points
        out[variant] = per_metric
    return out


def build_report(
    runs: Sequence[RunData],
    variants: Sequence[str],
    seeds: Sequence[int],
    references: Sequence[str] = REFERENCES,
    alpha: float = ALPHA,
    power: float = POWER,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    cost: Mapping[str, Mapping[str, float]] | None = None,
) -> Report:
    """All statistics of the report from the loaded runs (and, optionally, per-variant cost)."""
    if not 0.0 < alpha < 1.0:
        raise ReportError(f"alpha: {alpha} must lie in (0, 1)")
    if not 0.0 < power < 1.0:
        raise ReportError(f"power: {power} must lie in (0, 1)")
    variants = list(variants)
    refs = [r for r in references if r in variants]
    rows = run_rows(runs)
    lrows = layer_rows(runs)
    confidence = 1.0 - alpha
    cost = {k: dict(v) for k, v in (cost or {}).items()}

    comparisons: list[dict[str, Any]] = []
    for metric, _ in METRICS:
        for ref in refs:
            family = []
            for variant in variants:
                if variant == ref:
                    continue
                test = paired_test(
                    _seed_map(rows, variant, metric), _seed_map(rows, ref, metric), alpha, power, confidence
                )
                family.append(
                    {
                        "metric": metric,
                        "variant": variant,
                        "reference": ref,
                        "n_pairs": test.n,
                        "diff": test.diff_mean,
                        "diff_sd": test.diff_sd,
                        "diff_ci_low": test.ci_low,
                        "diff_ci_high": test.ci_high,
                        "t": test.t,
                        "p_value": test.p_value,
                        "p_sign_flip": test.p_sign_flip,
                        "mdd": test.mdd,
                    }
                )
            for row, adjusted in zip(family, holm([c["p_value"] for c in family])):
                row["p_holm"] = adjusted
            comparisons.extend(family)

    variant_rows: list[dict[str, Any]] = []
    for variant in variants:
        mine = _by_variant(rows, variant)
        row: dict[str, Any] = {"variant": variant, "n_seeds": len(mine)}
        for metric, _ in METRICS:
            s = summarize((r[metric] for r in mine), confidence)
            row.update(
                {
                    f"{metric}_mean": s.mean,
                    f"{metric}_sd": s.sd,
                    f"{metric}_ci_low": s.ci_low,
                    f"{metric}_ci_high": s.ci_high,
                }
            )
        extra_topk = sorted({k for r in mine for k in r if re.fullmatch(r"top\d+", k) and k != "top1"})
        for key in extra_topk:
            row[f"{key}_mean"] = _mean_of(mine, key)
        row["test_loss_mean"] = _mean_of(mine, "test_loss")
        for c in comparisons:
            if c["variant"] == variant:
                tag = f"{c['metric']}_{{}}_vs_{c['reference']}"
                for key in ("diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "p_sign_flip", "mdd"):
                    row[tag.format(key)] = c[key]
        row["num_layers"] = max((r["num_layers"] for r in mine), default=0)
        for stat in ("usage_entropy", "usage_entropy_norm", "nmi", "max_usage", "collapse_layers", "tf_all"):
            row[stat] = _mean_of(mine, stat)
        row["tf_temporal_cue"] = _mean_of(mine, "tf_temporal_cue")
        row["tf_spatial_cue"] = _mean_of(mine, "tf_spatial_cue")
        gap = one_sample_test((r["cue_gap"] for r in mine), alpha, power, confidence)
        row.update(
            {
                "cue_gap_n": gap.n,
                "cue_gap_mean": gap.diff_mean,
                "cue_gap_ci_low": gap.ci_low,
                "cue_gap_ci_high": gap.ci_high,
                "cue_gap_p_value": gap.p_value,
            }
        )
        params = _mean_of(mine, "num_parameters")
        if not math.isfinite(params):
            params = cost.get(variant, {}).get("num_parameters", math.nan)
        row["num_parameters"] = params
        row["flops_per_clip"] = cost.get(variant, {}).get("flops_per_clip", math.nan)
        row["latency_ms"] = cost.get(variant, {}).get("latency_ms", math.nan)
        row["train_seconds_mean"] = _mean_of(mine, "train_seconds")
        variant_rows.append(row)

    layer_summary: list[dict[str, Any]] = []
    for variant in variants:
        mine = _by_variant(lrows, variant)
        for j in sorted({r["layer"] for r in mine}):
            at = [r for r in mine if r["layer"] == j]
            entry: dict[str, Any] = {"variant": variant, "layer": j, "n_seeds": len(at)}
            for stat in LAYER_STATS:
                entry[stat] = _mean_of(at, stat)
            layer_summary.append(entry)

    return Report(
        variants=variants,
        seeds=[int(s) for s in seeds],
        references=refs,
        alpha=alpha,
        power=power,
        runs=rows,
        layers=lrows,
        variant_rows=variant_rows,
        comparisons=comparisons,
        layer_summary=layer_summary,
        curves=_curves(runs, variants),
        configs={k: dict(v) for k, v in (configs or {}).items()},
        cost=cost,
    )


# ---------------------------------------------------------------------------------------------
# summary.json


SUMMARY_VARIANT_KEYS = (
    "n_seeds",
    "top1_mean",
    "top1_sd",
    "top1_ci_low",
    "top1_ci_high",
    "mca_mean",
    "mca_sd",
    "mca_ci_low",
    "mca_ci_high",
    "usage_entropy_norm",
    "nmi",
    "collapse_layers",
    "tf_temporal_cue",
    "tf_spatial_cue",
    "cue_gap_mean",
    "cue_gap_p_value",
    "num_parameters",
    "flops_per_clip",
)
SUMMARY_COMPARISON_KEYS = ("diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "p_sign_flip", "mdd")


def summary(report: Report) -> dict[str, float]:
    """Flat numeric metrics for ``dvc metrics``: no timing, no undefined value (JSON has no NaN)."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        value = float(value)
        if math.isfinite(value):
            out[key] = int(value) if key.endswith(("n_seeds", "n_pairs")) else value

    for row in report.variant_rows:
        for key in SUMMARY_VARIANT_KEYS:
            put(f"{row['variant']}/{key}", row.get(key, math.nan))
    for c in report.comparisons:
        prefix = f"{c['variant']}_vs_{c['reference']}/{c['metric']}"
        put(f"{prefix}_n_pairs", c["n_pairs"])
        for key in SUMMARY_COMPARISON_KEYS:
            put(f"{prefix}_{key}", c[key])
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# cost: parameters, FLOPs, CPU latency


def count_flops(model: Any, shape: Sequence[int]) -> int:
    """FLOPs of one evaluation-mode forward on a ``shape`` input (``torch.utils.flop_counter``:
    2 per multiply-add of the matmuls and convolutions that actually run)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def cpu_latency_ms(model: Any, shape: Sequence[int], repeats: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``repeats`` evaluation-mode forwards at ``shape`` (threads left as they are)."""
    import torch

    if repeats < 1:
        raise ReportError(f"latency repeats: {repeats} must be >= 1")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def _num_classes_from(run_folder: Path) -> int | None:
    per_class = run_folder / "per_class.csv"
    if per_class.is_file():
        with open(per_class, newline="") as handle:
            count = sum(1 for _ in csv.DictReader(handle))
        return count or None
    return None


def variant_cost(
    cfg: Any, run_folder: str | Path, num_classes: int | None = None, repeats: int = 10, latency: bool = True
) -> dict[str, float]:
    """Parameters, FLOPs and CPU latency per clip ``(1, 3, data.num_frames, data.crop, data.crop)``
    of one variant: the trained ``model.pt`` of ``run_folder`` when there is one, else a fresh
    ``build_model(cfg, K)`` with ``K`` from ``num_classes``, ``per_class.csv`` or ``data.num_classes``."""
    import torch

    folder = Path(run_folder)
    saved = folder / "model.pt"
    if saved.is_file():
        from dsts.engine import load_model

        model, _ = load_model(saved, cfg, torch.device("cpu"))
    else:
        from dsts.model import build_model

        k = num_classes or _num_classes_from(folder) or (cfg.data.num_classes or None)
        if k is None:
            raise ReportError(
                f"{folder}: cannot tell the number of classes for the cost columns (no model.pt or per_class.csv, "
                "and data.num_classes is 0)"
            )
        model = build_model(cfg, num_classes=int(k))
    model.eval()
    shape = (1, 3, cfg.data.num_frames, cfg.data.crop, cfg.data.crop)
    out = {
        "num_parameters": float(sum(p.numel() for p in model.parameters())),
        "flops_per_clip": float(count_flops(model, shape)),
    }
    if latency:
        out["latency_ms"] = cpu_latency_ms(model, shape, repeats=repeats)
    return out


# ---------------------------------------------------------------------------------------------
# text


def _pts(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{100.0 * x:+.1f}" if signed else f"{100.0 * x:.1f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    if p == 0.0:
        return "0"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def _ci_pts(low: float, high: float, signed: bool = False) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{_pts(low, signed)}, {_pts(high, signed)}]"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _count(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x / 1e6:.2f} M" if x >= 1e5 else f"{int(round(x))}"


def _comparison_sentence(
    c: Mapping[str, Any], mca: Mapping[str, Any] | None, alpha: float, family: int
) -> str:
    name = f"{c['variant']} vs {c['reference']}"
    n = c["n_pairs"]
    if n == 0:
        return f"{name}: no seed in common, no comparison."
    if n < 2:
        return f"{name}: {_pts(c['diff'], True)} points top-1 from a single paired seed; no test is possible with n=1."
    sign_flip = f", exact sign-flip p={_p(c['p_sign_flip'])}" if math.isfinite(c["p_sign_flip"]) else ""
    text = (
        f"{name}: {_pts(c['diff'], True)} points top-1 (95% CI {_ci_pts(c['diff_ci_low'], c['diff_ci_high'], True)}, "
        f"paired t p={_p(c['p_value'])}{sign_flip}, n={n}): "
    )
    if c["p_value"] < alpha:
        text += f"significant at α={alpha:g} ({'higher' if c['diff'] > 0 else 'lower'})"
        if family > 1 and not c["p_holm"] < alpha:
            text += f", but not after Holm's correction over {family} comparisons (p={_p(c['p_holm'])})"
    else:
        text += f"no significant difference at α={alpha:g}"
    if math.isfinite(c["mdd"]):
        text += f"; the smallest difference this run could detect is {_pts(c['mdd'])} points"
    if mca is not None and mca["n_pairs"] >= 2:
        verdict = "significant" if mca["p_value"] < alpha else "not significant"
        text += f". Mean class accuracy: {_pts(mca['diff'], True)} points (p={_p(mca['p_value'])}, {verdict})"
    return text + "."


def _findings(report: Report) -> list[str]:
    lines: list[str] = []
    alpha = report.alpha
    n_seeds = len(report.seeds)
    if n_seeds < 2:
        lines.append(
            "One seed per variant: no confidence interval or test is possible; differences below are single runs."
        )
    sds = [r["top1_sd"] for r in report.variant_rows if math.isfinite(r["top1_sd"])]
    if sds:
        lines.append(
            f"Seed-to-seed standard deviation of top-1: {_pts(min(sds))} to {_pts(max(sds))} points across variants."
        )
    if 2 <= n_seeds <= SIGN_FLIP_MAX_N:
        lines.append(
            f"With n={n_seeds} paired seeds the exact sign-flip test cannot give p below {_p(2.0 ** (1 - n_seeds))}"
            + (f", so it can never reach α={alpha:g}." if 2.0 ** (1 - n_seeds) >= alpha else ".")
        )
    by_key = {(c["metric"], c["variant"], c["reference"]): c for c in report.comparisons}
    for ref in report.references:
        family = [c for c in report.comparisons if c["metric"] == "top1" and c["reference"] == ref]
        tested = sum(1 for c in family if math.isfinite(c["p_value"]))
        for c in family:
            lines.append(_comparison_sentence(c, by_key.get(("mca", c["variant"], ref)), alpha, tested))
    for ref in REFERENCES:
        if ref not in report.references:
            lines.append(f"No comparison against {ref}: it is not among the variants.")
    for row in report.variant_rows:
        v = row["variant"]
        if row["num_layers"] == 0:
            continue
        if math.isfinite(row["tf_temporal_cue"]) and math.isfinite(row["tf_spatial_cue"]):
            text = (
                f"{v}: the temporal operator takes {_pts(row['tf_temporal_cue'])}% of the gate bits on temporal-cue "
                f"classes and {_pts(row['tf_spatial_cue'])}% on spatial-cue classes (gap {_pts(row['cue_gap_mean'], True)} points"
            )
            if row["cue_gap_n"] >= 2:
                verdict = (
                    f"significant at α={alpha:g}"
                    if row["cue_gap_p_value"] < alpha
                    else f"no significant gap at α={alpha:g}"
                )
                text += (
                    f", 95% CI {_ci_pts(row['cue_gap_ci_low'], row['cue_gap_ci_high'], True)}, "
                    f"t-test against 0 p={_p(row['cue_gap_p_value'])}, n={row['cue_gap_n']}): {verdict}."
                )
            else:
                text += f", n={row['cue_gap_n']}): no test with fewer than 2 seeds."
            lines.append(text)
        if math.isfinite(row["collapse_layers"]) and row["collapse_layers"] > 0:
            lines.append(
                f"{v}: routing collapsed (one neuron above 90% of the samples) in {row['collapse_layers']:.2g} of "
                f"{row['num_layers']} layers on average over seeds."
            )
    return lines


def render_markdown(report: Report) -> str:
    """``ablation.md``: tables and findings generated from the numbers only."""
    alpha, conf = report.alpha, 1.0 - report.alpha
    level = f"{100 * conf:g}%"
    out = [
        "# DSTS-Bench ablation report",
        "",
        f"{len(report.variants)} variants × seeds {', '.join(map(str, report.seeds))}. Accuracies in percent; "
        f"{level} confidence intervals are t-based over seeds; comparisons pair runs by seed. "
        "Generated by `python -m pipeline.report` from the run files; every sentence below is computed from them.",
        "",
    ]
    if report.configs:
        out += ["## Variants", ""]
        out.append(
            _table(
                ["variant", "DSTS", "neurons", "specialization", "UDL", "updates/step"],
                (
                    [
                        v,
                        "yes" if c.get("dsts") else "no",
                        str(c.get("num_neurons", "")) if c.get("dsts") else "",
                        str(c.get("specialization", "")) if c.get("dsts") else "",
                        str(c.get("udl", "no")),
                        str(c.get("updates_per_step", "")),
                    ]
                    for v, c in report.configs.items()
                ),
            )
        )
        out.append("")

    out += ["## Accuracy", ""]
    header = ["variant", "n", "top-1 mean ± sd", f"top-1 {level} CI", "mean class acc ± sd", f"{level} CI"]
    topk = sorted(
        {k for r in report.variant_rows for k in r if re.fullmatch(r"top\d+_mean", k) and k != "top1_mean"}
    )
    header += [f"top-{k[3:-5]}" for k in topk]
    rows = []
    for r in report.variant_rows:
        line = [
            r["variant"],
            str(r["n_seeds"]),
            f"{_pts(r['top1_mean'])} ± {_pts(r['top1_sd'])}",
            _ci_pts(r["top1_ci_low"], r["top1_ci_high"]),
            f"{_pts(r['mca_mean'])} ± {_pts(r['mca_sd'])}",
            _ci_pts(r["mca_ci_low"], r["mca_ci_high"]),
        ]
        line += [_pts(r.get(k, math.nan)) for k in topk]
        rows.append(line)
    out += [_table(header, rows), "", "![top-1 with confidence intervals](top1_ci.png)", ""]
    out += ["![mean class accuracy with confidence intervals](mca_ci.png)", ""]

    out += ["## Paired comparisons", ""]
    if not report.references:
        out += ["No reference variant (" + ", ".join(REFERENCES) + ") among the variants.", ""]
    for ref in report.references:
        out += [f"### Against `{ref}` (variant minus {ref}, paired by seed)", ""]
        rows = []
        for c in report.comparisons:
            if c["reference"] != ref:
                continue
            rows.append(
                [
                    c["variant"],
                    "top-1" if c["metric"] == "top1" else "mean class acc",
                    str(c["n_pairs"]),
                    _pts(c["diff"], True),
                    _ci_pts(c["diff_ci_low"], c["diff_ci_high"], True),
                    _p(c["p_value"]),
                    _p(c["p_holm"]),
                    _p(c["p_sign_flip"]),
                    _pts(c["mdd"]),
                ]
            )
        out += [
            _table(
                [
                    "variant",
                    "metric",
                    "n",
                    "Δ points",
                    f"{level} CI",
                    "paired t p",
                    "Holm p",
                    "sign-flip p",
                    "MDD points",
                ],
                rows,
            ),
            "",
        ]

    out += ["## Specialization", ""]
    out.append(
        "Per run, each statistic is averaged over the DSTS layers; the table shows the mean over seeds. "
        "Temporal fraction: the share of gate bits that choose the temporal operator, on the test clips "
        "of temporal-cue and of spatial-cue classes; the gap is tested against 0 across seeds."
    )
    out.append("")
    rows = []
    for r in report.variant_rows:
        if r["num_layers"] == 0:
            continue
        rows.append(
            [
                r["variant"],
                str(r["num_layers"]),
                _num(r["usage_entropy_norm"]),
                _num(r["nmi"]),
                _num(r["collapse_layers"], 2),
                _pts(r["tf_temporal_cue"]),
                _pts(r["tf_spatial_cue"]),
                _pts(r["cue_gap_mean"], True),
                _ci_pts(r["cue_gap_ci_low"], r["cue_gap_ci_high"], True),
                _p(r["cue_gap_p_value"]),
            ]
        )
    if rows:
        out += [
            _table(
                [
                    "variant",
                    "layers",
                    "usage entropy (norm.)",
                    "NMI",
                    "collapsed layers",
                    "temporal % (temporal-cue)",
                    "temporal % (spatial-cue)",
                    "gap points",
                    f"gap {level} CI",
                    "gap p",
                ],
                rows,
            ),
            "",
        ]
        per_layer = [
            [
                e["variant"],
                str(e["layer"]),
                _num(e["usage_entropy_norm"]),
                _num(e["nmi"]),
                _num(e["collapse"], 2),
                _pts(e["tf_temporal_cue"]),
                _pts(e["tf_spatial_cue"]),
                _pts(e["cue_gap"], True),
            ]
            for e in report.layer_summary
        ]
        out += [
            "Per layer (means over seeds; collapse: share of seeds whose layer collapsed):",
            "",
            _table(
                [
                    "variant",
                    "layer",
                    "usage entropy (norm.)",
                    "NMI",
                    "collapse",
                    "temporal % (t-cue)",
                    "temporal % (s-cue)",
                    "gap",
                ],
                per_layer,
            ),
            "",
        ]
    else:
        out += ["No variant has DSTS layers.", ""]
    out += ["![specialization heatmaps](specialization.png)", ""]

    out += ["## Cost", ""]
    out.append(
        "Parameters of the trained model; FLOPs of one evaluation-mode forward at batch 1 "
        "(torch.utils.flop_counter: 2 per multiply-add); CPU latency: median wall time of a few such "
        "forwards on this machine (a timing: it varies with load, and is not in summary.json)."
    )
    out.append("")
    out.append(
        _table(
            ["variant", "parameters", "GFLOPs / clip", "CPU latency ms / clip", "train s (mean)"],
            (
                [
                    r["variant"],
                    _count(r["num_parameters"]),
                    _num(r["flops_per_clip"] / 1e9, 3) if math.isfinite(r["flops_per_clip"]) else "n/a",
                    _num(r["latency_ms"], 1),
                    _num(r["train_seconds_mean"], 1),
                ]
                for r in report.variant_rows
            ),
        )
    )
    out += ["", "## Findings", ""]
    out += [f"- {line}" for line in _findings(report)]
    out += [
        "",
        "![learning curves](learning_curves.png)",
        "",
        "## Method",
        "",
        f"- CI: mean ± t_(1-α/2, n-1) · sd / √n with sd over seeds (ddof 1), α={alpha:g}.",
        "- Paired t-test: differences d over the seeds both variants share; t = mean(d) / (sd(d)/√n), "
        "two-sided, n-1 degrees of freedom (t distribution from the regularized incomplete beta function). "
        "All-equal differences: p = 1 if they are 0, else 0.",
        "- Holm: step-down adjustment over the variants compared with one reference, per metric.",
        "- Sign-flip p: exact, over all 2^n sign patterns of the differences (smallest possible value 2^(1-n)).",
        f"- MDD (smallest detectable difference): (t_(1-α/2, n-1) + t_(power, n-1)) · sd(d) / √n, power {report.power:g}, "
        "the shifted central-t approximation of the paired t-test's power at the measured spread.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# files


CSV_NAME = "ablation.csv"
MD_NAME = "ablation.md"
SUMMARY_NAME = "summary.json"


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str] | None = None) -> None:
    keys: list[str] = list(columns or [])
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for row in rows:
            cells = []
            for k in keys:
                v = row.get(k, math.nan)
                if isinstance(v, float):
                    cells.append("NaN" if math.isnan(v) else repr(v))
                else:
                    cells.append(str(v))
            writer.writerow(cells)


def _plot_bars(report: Report, metric: str, label: str, path: Path) -> None:
    from dsts.plots import plot_bar_ci

    names, means, lows, highs = [], [], [], []
    for r in report.variant_rows:
        mean = r[f"{metric}_mean"]
        lo, hi = r[f"{metric}_ci_low"], r[f"{metric}_ci_high"]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            lo = hi = mean  # one seed: no interval to draw
        names.append(r["variant"])
        means.append(100.0 * mean)
        lows.append(100.0 * lo)
        highs.append(100.0 * hi)
    ci = f"{100 * (1 - report.alpha):g}% CI over seeds" if len(report.seeds) > 1 else "one seed: no CI"
    plot_bar_ci(names, means, lows, highs, path, f"{label} (%)", f"{label} per variant ({ci})")


def _figure_save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def _plot_curves(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("test/top1", "test top-1 (%)", 100.0), ("train/loss", "train loss", 1.0)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, layout="constrained")
    colours = plt.get_cmap("tab10")
    for ax, (metric, label, scale) in zip(axes, panels):
        drawn = False
        for i, variant in enumerate(report.variants):
            points = report.curves.get(variant, {}).get(metric)
            if not points:
                continue
            xs = np.array([p[0] for p in points])
            ys = scale * np.array([p[1] for p in points])
            sd = scale * np.array([p[2] for p in points])
            colour = colours(i % 10)
            ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=variant)
            band = np.isfinite(sd)
            if band.any():
                ax.fill_between(
                    xs[band], (ys - sd)[band], (ys + sd)[band], color=colour, alpha=0.12, linewidth=0
                )
            drawn = True
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{label}: mean over seeds (band: ± sd)")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, f"no {metric} in history.csv", ha="center", va="center", transform=ax.transAxes)
    _figure_save(fig, path)


def _plot_specialization(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in report.variants if any(e["variant"] == v for e in report.layer_summary)]
    panels = [
        ("tf_temporal_cue", "temporal fraction, temporal-cue classes", "viridis"),
        ("tf_spatial_cue", "temporal fraction, spatial-cue classes", "viridis"),
        ("cue_gap", "gap (temporal-cue minus spatial-cue)", "RdBu_r"),
        ("usage_entropy_norm", "normalized usage entropy", "viridis"),
    ]
    if not variants:
        fig, ax = plt.subplots(figsize=(6, 2.5), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, "no variant has DSTS layers", ha="center", va="center")
        _figure_save(fig, path)
        return
    num_layers = max(e["layer"] for e in report.layer_summary) + 1
    grid = {stat: np.full((len(variants), num_layers), np.nan) for stat, _, _ in panels}
    for e in report.layer_summary:
        if e["variant"] in variants:
            for stat in grid:
                grid[stat][variants.index(e["variant"]), e["layer"]] = e[stat]
    width = 2.6 + 0.7 * num_layers
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(width * len(panels), 1.6 + 0.45 * len(variants)),
        dpi=100,
        layout="constrained",
    )
    for ax, (stat, title, cmap_name) in zip(axes, panels):
        values = grid[stat]
        if stat == "cue_gap":
            finite = np.abs(values[np.isfinite(values)])
            bound = max(0.05, float(finite.max()) if finite.size else 0.05)
            vmin, vmax = -bound, bound
        else:
            vmin, vmax = 0.0, 1.0
        cmap = plt.get_cmap(cmap_name).with_extremes(bad="lightgrey")
        im = ax.imshow(
            np.ma.masked_invalid(values),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            aspect="auto",
            interpolation="nearest",
        )
        for r in range(values.shape[0]):
            for c in range(values.shape[1]):
                v = values[r, c]
                if not np.isfinite(v):
                    ax.text(c, r, "n/a", ha="center", va="center", fontsize=7)
                    continue
                shade = (v - vmin) / (vmax - vmin)
                dark = shade < 0.5 if cmap_name == "viridis" else abs(shade - 0.5) > 0.3
                ax.text(
                    c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black"
                )
        ax.set_xticks(range(num_layers), [f"layer {j}" for j in range(num_layers)], fontsize=8)
        ax.set_yticks(range(len(variants)), variants, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Specialization per variant and layer (means over seeds; grey: undefined)", fontsize=10)
    _figure_save(fig, path)


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write every output into a staging folder beside ``out_dir``, then move the files in: a failure
    leaves ``out_dir`` as it was."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        variant_columns = ["variant", "n_seeds"]
        _write_csv(report.variant_rows, staging / CSV_NAME, variant_columns)
        _write_csv(report.runs, staging / "runs.csv")
        _write_csv(report.comparisons, staging / "comparisons.csv")
        _write_csv(report.layer_summary, staging / "specialization.csv")
        (staging / MD_NAME).write_text(render_markdown(report))
        (staging / SUMMARY_NAME).write_text(json.dumps(summary(report), indent=2, sort_keys=True) + "\n")
        _plot_bars(report, "top1", "top-1", staging / "top1_ci.png")
        _plot_bars(report, "mca", "mean class accuracy", staging / "mca_ci.png")
        _plot_curves(report, staging / "learning_curves.png")
        _plot_specialization(report, staging / "specialization.png")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for file in sorted(staging.iterdir()):
            target = out / file.name
            os.replace(file, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _config_row(cfg: Any) -> dict[str, Any]:
    return {
        "dsts": bool(cfg.model.dsts.enabled),
        "num_neurons": cfg.model.dsts.num_neurons,
        "specialization": cfg.model.dsts.specialization,
        "udl": cfg.udl.method if cfg.udl.enabled else "no",
        "updates_per_step": cfg.train.updates_per_step,
    }


def make_report(
    runs_dir: str | Path,
    params: str | Path,
    out_dir: str | Path,
    cost: bool = True,
    references: Sequence[str] = REFERENCES,
    alpha: float = ALPHA,
    power: float = POWER,
    latency_repeats: int = 10,
) -> Report:
    """Read ``variants`` and ``seeds`` from ``params``, every run's files and (with ``cost``) one model
    per variant; compute the report and write it to ``out_dir``. Nothing is written on bad input."""
    from dsts.config import ConfigError, load_config, read_yaml

    tree = read_yaml(params)
    variants = tree.get("variants")
    seeds = tree.get("seeds")
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

    configs = {v: load_config(params, variant=v, seed=seeds[0]) for v in variants}
    runs = load_runs(runs_dir, variants, seeds)
    costs: dict[str, dict[str, float]] = {}
    if cost:
        for v in variants:
            costs[v] = variant_cost(
                configs[v], Path(runs_dir) / v / f"seed{seeds[0]}", repeats=latency_repeats
            )
    report = build_report(
        runs,
        variants,
        seeds,
        references=references,
        alpha=alpha,
        power=power,
        configs={v: _config_row(c) for v, c in configs.items()},
        cost=costs,
    )
    write_report(report, out_dir)
    return report
