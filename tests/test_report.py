"""The report's statistics against independent oracles (closed forms, numpy literal formulas, loops
over every sign pattern, scipy where installed), its tables, text, files and cost columns."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import dsts.report as R

# ---------------------------------------------------------------------------------------------
# fake run folders (also used by tests/pipeline/test_report_stage.py)

LAYERS = 2
NUM_CLASSES = 12
NEURONS = 4
BASE_TOP1 = {"baseline": 0.40, "static": 0.45, "dsts_3d": 0.47, "dsts": 0.50, "dsts_udl": 0.52}


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
        "num_parameters": {"baseline": 145180.0, "static": 260636.0}.get(variant, 607004.0),
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


def write_run(folder: Path, metrics: dict[str, float], epochs: int = 3, seconds: float = 12.5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    with open(folder / "history.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["epoch", "lr", "train/loss", "test/top1", "test/loss", "test/mean_class_accuracy"])
        for e in range(1, epochs + 1):
            frac = e / epochs
            w.writerow(
                [
                    e,
                    repr(0.002 * (1 - frac)),
                    repr(2.5 - frac),
                    repr(metrics["test/top1"] * frac),
                    repr(2.4 - frac),
                    repr(0.3 * frac),
                ]
            )
    (folder / "timing.json").write_text(json.dumps({"train_seconds": seconds, "data_seconds": 1.0}) + "\n")
    with open(folder / "per_class.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["label", "name", "cue", "support", "accuracy"])
        for k in range(NUM_CLASSES):
            w.writerow([k, f"class {k}", ("spatial", "temporal", "")[k % 3], 8, repr(0.5)])


def write_fake_runs(root: Path, variants, seeds) -> dict[tuple[str, int], dict[str, float]]:
    out = {}
    for v in variants:
        for s in seeds:
            out[(v, s)] = fake_metrics(v, s)
            write_run(root / v / f"seed{s}", out[(v, s)])
    return out


# ---------------------------------------------------------------------------------------------
# Student's t: table values, closed forms, round trips


def exact_t_df1(p: float) -> float:
    # -cot(pi p), written on the nearer tail so that it keeps its precision there
    return -1 / math.tan(math.pi * p) if p < 0.5 else 1 / math.tan(math.pi * (1 - p))


def exact_t_df2(p: float) -> float:
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def exact_t_df4(p: float) -> float:
    a = 4 * p * (1 - p)
    q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
    return math.copysign(2 * math.sqrt(q - 1), p - 0.5)


def test_t_quantile_table_values():
    # printed table values (to about 1e-10) and the exact closed forms (to rounding)
    assert R.t_ppf(0.975, 1) == pytest.approx(12.706204736174698, rel=1e-12)
    assert R.t_ppf(0.975, 2) == pytest.approx(4.302652729911275, rel=1e-10)
    assert R.t_ppf(0.975, 4) == pytest.approx(2.7764451051977987, rel=1e-12)
    assert R.t_ppf(0.975, 2) == pytest.approx(exact_t_df2(0.975), rel=1e-13)
    assert R.t_ppf(0.975, 4) == pytest.approx(exact_t_df4(0.975), rel=1e-13)
    assert R.t_ppf(0.8, 2) == pytest.approx(1.0606601717798212, rel=1e-13)
    assert R.t_ppf(0.995, 10) == pytest.approx(3.169272672616951, rel=1e-10)
    assert R.t_ppf(0.975, 30) == pytest.approx(2.042272456301238, rel=1e-10)
    assert R.t_ppf(0.5, 7) == 0.0
    assert R.t_ppf(0.0, 3) == -math.inf and R.t_ppf(1.0, 3) == math.inf


@given(p=st.floats(1e-9, 1 - 1e-9), which=st.sampled_from([1, 2, 4]))
def test_t_quantile_matches_closed_forms(p, which):
    exact = {1: exact_t_df1, 2: exact_t_df2, 4: exact_t_df4}[which](p)
    assert R.t_ppf(p, which) == pytest.approx(exact, rel=1e-9, abs=1e-12)


@given(t=st.floats(-1e6, 1e6))
def test_t_cdf_matches_closed_forms(t):
    assert R.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-15)
    assert R.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-15)
    # the upper tail keeps its relative precision far out: df 2 has sf(t) = 1 / (s (s + t)), s = sqrt(2 + t^2)
    if t > 0:
        s = math.sqrt(2 + t * t)
        assert R.t_sf(t, 2) == pytest.approx(1 / (s * (s + t)), rel=1e-12)
        assert R.t_sf(t, 1) == pytest.approx(math.atan2(1.0, t) / math.pi, rel=1e-12)


@given(p=st.floats(1e-12, 1 - 1e-12), df=st.one_of(st.integers(1, 300), st.floats(0.5, 1000)))
def test_t_cdf_of_quantile_round_trip(p, df):
    t = R.t_ppf(p, df)
    if p < 0.5:
        assert R.t_cdf(t, df) == pytest.approx(p, rel=1e-9)  # relative in the lower tail
    else:
        assert R.t_sf(t, df) == pytest.approx(1 - p, rel=1e-9, abs=1e-16)


@given(t=st.floats(-1e4, 1e4), df=st.one_of(st.integers(1, 200), st.floats(0.5, 500)))
def test_t_cdf_symmetry_and_range(t, df):
    c = R.t_cdf(t, df)
    assert 0.0 <= c <= 1.0
    assert R.t_cdf(-t, df) + c == pytest.approx(1.0, abs=2e-15)
    assert R.t_sf(t, df) == pytest.approx(1.0 - c, abs=2e-15)


@given(p=st.floats(1e-10, 0.5), df=st.integers(1, 100))
def test_t_quantile_antisymmetry(p, df):
    assert R.t_ppf(1 - p, df) == pytest.approx(-R.t_ppf(p, df), rel=1e-7, abs=1e-12)


@given(t1=st.floats(-50, 50), t2=st.floats(-50, 50), df=st.integers(1, 60))
def test_t_cdf_monotone(t1, t2, df):
    lo, hi = sorted((t1, t2))
    assert R.t_cdf(lo, df) <= R.t_cdf(hi, df)


@given(t=st.floats(-200, 200), df=st.floats(0.5, 300))
def test_t_against_scipy(t, df):
    stats = pytest.importorskip("scipy.stats")
    assert R.t_cdf(t, df) == pytest.approx(float(stats.t.cdf(t, df)), rel=1e-10, abs=1e-15)


@given(p=st.floats(1e-8, 1 - 1e-8), df=st.floats(0.5, 300))
def test_t_quantile_against_scipy(p, df):
    stats = pytest.importorskip("scipy.stats")
    assert R.t_ppf(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-9, abs=1e-12)


def test_t_large_df_approaches_normal():
    assert R.t_ppf(0.975, 1e6) == pytest.approx(1.959963984540054, rel=1e-5)


@given(x=st.floats(0, 1), a=st.floats(0.05, 50), b=st.floats(0.05, 50))
def test_betainc_closed_forms_and_reflection(x, a, b):
    assert R.betainc(a, 1.0, x) == pytest.approx(x**a, rel=1e-11, abs=1e-15)
    assert R.betainc(1.0, b, x) == pytest.approx(
        -math.expm1(b * math.log1p(-x)) if x < 1 else 1.0, rel=1e-11, abs=1e-15
    )
    assert R.betainc(a, b, x) + R.betainc(b, a, 1 - x, y=x) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= R.betainc(a, b, x) <= 1.0


def test_t_rejects_bad_arguments():
    with pytest.raises(ValueError, match="degrees of freedom"):
        R.t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="p must lie"):
        R.t_ppf(1.5, 3)
    with pytest.raises(ValueError, match="a and b"):
        R.betainc(0.0, 1.0, 0.5)
    assert math.isnan(R.t_cdf(math.nan, 3))


# ---------------------------------------------------------------------------------------------
# mean, sd, confidence interval

accuracies = st.floats(0, 1, allow_nan=False)


@given(xs=st.lists(accuracies, min_size=2, max_size=12))
def test_summarize_against_numpy(xs):
    s = R.summarize(xs)
    arr = np.array(xs)
    n = len(xs)
    assert s.n == n
    assert s.mean == pytest.approx(arr.mean(), abs=1e-15)
    assert s.sd == pytest.approx(arr.std(ddof=1), rel=1e-12, abs=1e-15)
    half = R.t_ppf(0.975, n - 1) * arr.std(ddof=1) / math.sqrt(n)
    assert s.ci_low == pytest.approx(arr.mean() - half, abs=1e-12)
    assert s.ci_high == pytest.approx(arr.mean() + half, abs=1e-12)
    assert s.ci_low <= s.mean <= s.ci_high


def test_summarize_three_seeds_uses_the_table_value():
    xs = [0.50, 0.55, 0.61]
    m, sd = np.mean(xs), np.std(xs, ddof=1)
    s = R.summarize(xs)
    assert s.ci_high - s.mean == pytest.approx(4.302652729749464 * sd / math.sqrt(3), rel=1e-12)
    assert s.mean == pytest.approx(m)


def test_summarize_small_samples():
    one = R.summarize([0.4])
    assert one.n == 1 and one.mean == 0.4
    assert math.isnan(one.sd) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = R.summarize([])
    assert none.n == 0 and math.isnan(none.mean)
    assert R.summarize([0.3, math.nan, 0.5]).n == 2  # non-finite values are left out


# ---------------------------------------------------------------------------------------------
# paired tests

dyadic = st.integers(-4096, 4096).map(lambda i: i / 1024)  # exact sums and differences in float64


@given(data=st.lists(st.tuples(accuracies, accuracies), min_size=2, max_size=10))
def test_paired_test_against_the_literal_formula(data):
    a = [x for x, _ in data]
    b = [y for _, y in data]
    res = R.paired_test(a, b)
    d = np.array(a) - np.array(b)
    n = len(d)
    assert 0.0 <= res.p_value <= 1.0
    assert res.diff_mean == pytest.approx(d.mean(), abs=1e-15)
    sd = d.std(ddof=1)
    if res.diff_sd > 1e-9:
        t = d.mean() / (sd / math.sqrt(n))
        assert res.t == pytest.approx(t, rel=1e-9)
        assert res.p_value == pytest.approx(min(1.0, 2 * R.t_sf(abs(t), n - 1)), rel=1e-9, abs=1e-15)
        assert res.mdd == pytest.approx(
            (R.t_ppf(0.975, n - 1) + R.t_ppf(0.8, n - 1)) * sd / math.sqrt(n), rel=1e-9
        )
        if n == 3:  # two degrees of freedom: two-sided p = 1 - |t| / sqrt(2 + t^2)
            assert res.p_value == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-9, abs=1e-15)


@given(data=st.lists(st.tuples(accuracies, accuracies), min_size=2, max_size=10))
def test_paired_test_against_scipy(data):
    stats = pytest.importorskip("scipy.stats")
    a = np.array([x for x, _ in data])
    b = np.array([y for _, y in data])
    d = a - b
    assume(d.std(ddof=1) > 1e-6)
    res = R.paired_test(a.tolist(), b.tolist())
    ref = stats.ttest_rel(a, b)
    assert res.t == pytest.approx(float(ref.statistic), rel=1e-8)
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-8, abs=1e-14)


@given(data=st.lists(st.tuples(accuracies, accuracies), min_size=0, max_size=10))
def test_paired_test_swap_symmetry(data):
    a = [x for x, _ in data]
    b = [y for _, y in data]
    ab, ba = R.paired_test(a, b), R.paired_test(b, a)
    assert ab.n == ba.n
    for x, y in (
        (ab.p_value, ba.p_value),
        (ab.p_sign_flip, ba.p_sign_flip),
        (ab.mdd, ba.mdd),
        (ab.diff_sd, ba.diff_sd),
    ):
        assert (math.isnan(x) and math.isnan(y)) or x == y
    assert (math.isnan(ab.diff_mean) and math.isnan(ba.diff_mean)) or ab.diff_mean == -ba.diff_mean
    if ab.n >= 2:
        assert ab.ci_low == pytest.approx(-ba.ci_high, abs=1e-15)


@given(
    data=st.lists(st.tuples(dyadic, dyadic, dyadic), min_size=1, max_size=8),
)
def test_paired_test_ignores_a_shared_per_seed_offset(data):
    a = [x for x, _, _ in data]
    b = [y for _, y, _ in data]
    a2 = [x + o for x, _, o in data]
    b2 = [y + o for _, y, o in data]
    one, two = R.paired_test(a, b), R.paired_test(a2, b2)
    assert one == two or all(
        (math.isnan(u) and math.isnan(v)) or u == v
        for u, v in zip(one.__dict__.values(), two.__dict__.values())
    )


@given(n=st.integers(2, 12), value=dyadic)
def test_paired_test_equal_differences(n, value):
    a = [0.5 + value] * n
    b = [0.5] * n
    res = R.paired_test(a, b)
    if value == 0.0:
        assert res.p_value == 1.0 and res.t == 0.0 and res.p_sign_flip == 1.0
    else:
        assert res.p_value == 0.0 and math.isinf(res.t)
        assert res.p_sign_flip == pytest.approx(2.0 ** (1 - n))
    assert res.ci_low == res.ci_high == res.diff_mean
    assert res.mdd == 0.0


def test_paired_test_pairs_by_seed_and_needs_two_pairs():
    a = {0: 0.5, 1: 0.6, 2: 0.7, 5: 0.9}
    b = {2: 0.6, 0: 0.45, 1: 0.58, 7: 0.1}
    res = R.paired_test(a, b)
    assert res.n == 3
    assert res.diff_mean == pytest.approx(np.mean([0.05, 0.02, 0.1]))
    one = R.paired_test({0: 0.5}, {0: 0.4})
    assert one.n == 1 and math.isnan(one.p_value) and math.isnan(one.mdd) and math.isnan(one.ci_low)
    assert one.diff_mean == pytest.approx(0.1)
    with pytest.raises(ValueError, match="equal lengths"):
        R.paired_test([0.1, 0.2], [0.3])


def sign_flip_by_loop(d: list[int]) -> float:
    observed = abs(sum(d))
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        total += 1
        hits += abs(sum(s * x for s, x in zip(signs, d))) >= observed
    return hits / total


@given(d=st.lists(st.integers(-50, 50), min_size=1, max_size=9))
def test_sign_flip_is_exact(d):
    p = R.sign_flip_p([x / 64 for x in d])  # dyadic: every sum is exact
    assert p == sign_flip_by_loop(d)
    assert 2.0 ** (1 - len(d)) <= p <= 1.0  # s and -s always tie: never below 2 / 2^n


def test_sign_flip_limits():
    assert math.isnan(R.sign_flip_p([]))
    assert math.isnan(R.sign_flip_p([0.1] * (R.SIGN_FLIP_MAX_N + 1)))
    assert R.sign_flip_p([0.0, 0.0, 0.0]) == 1.0


def holm_step_down_rejections(p: list[float], alpha: float) -> set[int]:
    """Holm's procedure as published: reject in increasing order while p_(k) <= alpha / (m - k + 1)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for k, i in enumerate(order):
        if p[i] <= alpha / (len(p) - k):
            rejected.add(i)
        else:
            break
    return rejected


@given(ps=st.lists(st.integers(0, 997).map(lambda i: i / 997), min_size=1, max_size=12))
def test_holm_against_the_step_down_procedure(ps):
    adj = R.holm(ps)
    for alpha in (0.01, 0.05, 0.1):
        assert {i for i, q in enumerate(adj) if q <= alpha} == holm_step_down_rejections(ps, alpha)
    for p, q in zip(ps, adj):
        assert p <= q <= 1.0
    for i, j in itertools.product(range(len(ps)), repeat=2):
        if ps[i] < ps[j]:
            assert adj[i] <= adj[j]


def test_holm_worked_example_and_nan():
    assert R.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = R.holm([0.02, math.nan, 0.04])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_min_detectable_difference():
    sd = 0.02
    assert R.min_detectable_difference(sd, 3) == pytest.approx(
        (exact_t_df2(0.975) + exact_t_df2(0.8)) * sd / math.sqrt(3), rel=1e-12
    )
    values = [R.min_detectable_difference(sd, n) for n in range(2, 30)]
    assert all(x > y for x, y in zip(values, values[1:]))  # more seeds, smaller detectable difference
    assert math.isnan(R.min_detectable_difference(sd, 1))
    assert R.min_detectable_difference(sd, 5, alpha=0.01) > R.min_detectable_difference(sd, 5, alpha=0.05)
    assert R.min_detectable_difference(sd, 5, power=0.9) > R.min_detectable_difference(sd, 5, power=0.8)


# ---------------------------------------------------------------------------------------------
# run files and tables


def test_load_runs_and_tidy_rows(tmp_path):
    variants, seeds = ["baseline", "static", "dsts_udl"], [0, 1, 2]
    fake = write_fake_runs(tmp_path, variants, seeds)
    runs = R.load_runs(tmp_path, variants, seeds)
    rows = R.run_rows(runs)
    assert [(r["variant"], r["seed"]) for r in rows] == [(v, s) for v in variants for s in seeds]
    for row in rows:
        m = fake[(row["variant"], row["seed"])]
        assert row["top1"] == m["test/top1"] and row["mca"] == m["test/mean_class_accuracy"]
        assert row["top5"] == m["test/top5"]
        assert row["train_seconds"] == 12.5
        if row["variant"] == "baseline":
            assert (
                row["num_layers"] == 0 and math.isnan(row["cue_gap"]) and math.isnan(row["collapse_layers"])
            )
            continue
        assert row["num_layers"] == LAYERS
        gaps = [m[f"test/layer{j}/temporal_fraction/cue_gap"] for j in range(LAYERS)]
        assert row["cue_gap"] == pytest.approx(np.mean(gaps))
        assert row["nmi"] == pytest.approx(np.mean([m[f"test/layer{j}/nmi"] for j in range(LAYERS)]))
        assert row["collapse_layers"] == sum(m[f"test/layer{j}/collapse"] for j in range(LAYERS))
    assert len(R.layer_rows(runs)) == 2 * 3 * LAYERS
    assert len(runs[0].history) == 3


def test_missing_and_malformed_run_files(tmp_path):
    write_fake_runs(tmp_path, ["dsts"], [0])
    with pytest.raises(R.ReportError, match=r"dsts/seed1/metrics.json: missing"):
        R.load_runs(tmp_path, ["dsts"], [0, 1])
    path = tmp_path / "dsts" / "seed0" / "metrics.json"
    path.write_text("{not json")
    with pytest.raises(R.ReportError, match="not readable JSON"):
        R.load_runs(tmp_path, ["dsts"], [0])
    path.write_text(json.dumps({"test/top1": "high", "test/mean_class_accuracy": 0.3}))
    with pytest.raises(R.ReportError, match="'test/top1' is not a number"):
        R.load_runs(tmp_path, ["dsts"], [0])
    path.write_text(json.dumps({"test/mean_class_accuracy": 0.3}))
    with pytest.raises(R.ReportError, match="no finite 'test/top1'"):
        R.load_runs(tmp_path, ["dsts"], [0])
    path.write_text(json.dumps(fake_metrics("dsts", 0)))
    (tmp_path / "dsts" / "seed0" / "history.csv").unlink()
    with pytest.raises(R.ReportError, match="history.csv: missing"):
        R.load_runs(tmp_path, ["dsts"], [0])
    with pytest.raises(R.ReportError, match="empty"):
        R.load_runs(tmp_path, [], [0])


def _report(tmp_path, variants=("baseline", "static", "dsts_udl"), seeds=(0, 1, 2), **kw):
    write_fake_runs(tmp_path, variants, seeds)
    return R.build_report(R.load_runs(tmp_path, variants, seeds), variants, seeds, **kw)


def test_build_report_tables(tmp_path):
    rep = _report(tmp_path)
    assert rep.references == ["dsts_udl", "static"]
    rows = {r["variant"]: r for r in rep.variant_rows}
    top1 = {v: {r["seed"]: r["top1"] for r in rep.runs if r["variant"] == v} for v in rep.variants}
    for v in rep.variants:
        s = R.summarize(top1[v].values())
        assert (rows[v]["top1_mean"], rows[v]["top1_ci_low"]) == (s.mean, s.ci_low)
    for c in rep.comparisons:
        col = "top1" if c["metric"] == "top1" else "mca"
        a = {r["seed"]: r[col] for r in rep.runs if r["variant"] == c["variant"]}
        b = {r["seed"]: r[col] for r in rep.runs if r["variant"] == c["reference"]}
        assert c["variant"] != c["reference"]
        assert c["p_value"] == R.paired_test(a, b).p_value
    assert {(c["metric"], c["variant"], c["reference"]) for c in rep.comparisons} == {
        (m, v, r) for m in ("top1", "mca") for r in ("dsts_udl", "static") for v in rep.variants if v != r
    }
    assert rows["static"]["top1_diff_vs_dsts_udl"] == pytest.approx(
        rows["static"]["top1_mean"] - rows["dsts_udl"]["top1_mean"]
    )
    assert "top1_diff_vs_static" not in rows["static"]
    assert math.isnan(rows["baseline"]["cue_gap_mean"]) and rows["dsts_udl"]["cue_gap_n"] == 3
    gaps = [r["cue_gap"] for r in rep.runs if r["variant"] == "dsts_udl"]
    assert rows["dsts_udl"]["cue_gap_p_value"] == R.one_sample_test(gaps).p_value
    assert len(rep.layer_summary) == 2 * LAYERS
    assert rep.curves["dsts_udl"]["test/top1"][-1][1] == pytest.approx(
        np.mean(list(top1["dsts_udl"].values()))
    )


def test_references_missing_from_the_variants(tmp_path):
    rep = _report(tmp_path, variants=("baseline", "dsts"))
    assert rep.references == [] and rep.comparisons == []
    text = R.render_markdown(rep)
    assert "No comparison against dsts_udl" in text and "No comparison against static" in text


def test_summary_is_finite_flat_and_holds_no_timing(tmp_path):
    rep = _report(
        tmp_path,
        cost={v: {"num_parameters": 1.0, "flops_per_clip": 2e6, "latency_ms": 3.0} for v in ("static",)},
    )
    s = R.summary(rep)
    json.dumps(s, allow_nan=False)
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in s.values())
    assert not any("latency" in k or "seconds" in k for k in s)
    assert s["static/flops_per_clip"] == 2e6 and "baseline/flops_per_clip" not in s
    assert s["dsts_udl_vs_static/top1_n_pairs"] == 3
    assert "baseline/cue_gap_mean" not in s  # undefined for the baseline: omitted, not NaN
    assert list(s) == sorted(s)


def test_single_seed_report(tmp_path):
    rep = _report(tmp_path, seeds=(0,))
    row = rep.variant_rows[0]
    assert math.isnan(row["top1_ci_low"]) and math.isnan(row["top1_sd"])
    text = R.render_markdown(rep)
    assert "n/a" in text and "One seed per variant" in text and "no test is possible with n=1" in text
    assert "top1_ci_low" not in "".join(R.summary(rep))


def _report_from_top1(tmp_path, top1: dict[str, list[float]]):
    seeds = list(range(len(next(iter(top1.values())))))
    for v, values in top1.items():
        for s, x in zip(seeds, values):
            m = fake_metrics(v, s)
            m["test/top1"] = x
            write_run(tmp_path / v / f"seed{s}", m)
    return R.build_report(R.load_runs(tmp_path, list(top1), seeds), list(top1), seeds)


def test_findings_follow_the_numbers(tmp_path):
    same = _report_from_top1(tmp_path / "a", {"static": [0.50, 0.60, 0.40], "dsts_udl": [0.52, 0.57, 0.44]})
    text = R.render_markdown(same)
    assert "dsts_udl vs static: +1.0 points top-1" in text
    assert "no significant difference at α=0.05" in text
    assert "exact sign-flip test cannot give p below 0.250, so it can never reach α=0.05" in text
    apart = _report_from_top1(
        tmp_path / "b", {"static": [0.40, 0.50, 0.45, 0.55, 0.42], "dsts_udl": [0.50, 0.61, 0.54, 0.66, 0.51]}
    )
    c = next(c for c in apart.comparisons if c["metric"] == "top1" and c["variant"] == "dsts_udl")
    assert c["p_value"] < 0.05
    text = R.render_markdown(apart)
    assert f"dsts_udl vs static: +{100 * c['diff']:.1f} points top-1" in text
    assert "significant at α=0.05 (higher)" in text
    assert f"the smallest difference this run could detect is {100 * c['mdd']:.1f} points" in text
    assert "static vs dsts_udl" in text and "(lower)" in text


def test_markdown_mentions_every_variant_and_section(tmp_path):
    rep = _report(
        tmp_path,
        configs={
            "static": {
                "dsts": True,
                "num_neurons": 1,
                "specialization": "st",
                "udl": "no",
                "updates_per_step": 1,
            }
        },
    )
    text = R.render_markdown(rep)
    for v in rep.variants:
        assert f"| {v} |" in text
    for heading in (
        "## Accuracy",
        "## Paired comparisons",
        "## Specialization",
        "## Cost",
        "## Findings",
        "## Method",
    ):
        assert heading in text
    assert "temporal operator takes" in text
    assert re.search(r"\bnan\b", text, re.IGNORECASE) is None  # undefined values read "n/a"


def test_write_report_outputs_and_failure_leaves_nothing(tmp_path, monkeypatch):
    rep = _report(tmp_path / "runs")
    out = tmp_path / "reports"
    written = R.write_report(rep, out)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "ablation.csv",
            "ablation.md",
            "comparisons.csv",
            "learning_curves.png",
            "mca_ci.png",
            "runs.csv",
            "specialization.csv",
            "specialization.png",
            "summary.json",
            "top1_ci.png",
        ]
    )
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with open(out / "ablation.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["variant"] for r in table] == rep.variants
    assert table[0]["cue_gap_mean"] == "NaN"
    assert float(table[2]["top1_mean"]) == rep.variant_rows[2]["top1_mean"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(R, "_plot_specialization", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        R.write_report(rep, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["reports", "runs"]  # no staging folder left behind


# ---------------------------------------------------------------------------------------------
# cost: FLOPs, parameters, latency


def test_count_flops_against_the_literal_formula():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 5, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
    t, h, w = 4, 6, 6
    assert R.count_flops(conv, (1, 3, t, h, w)) == 2 * 5 * t * h * w * 3 * 3
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2 * 2, 7))
    assert R.count_flops(lin, (1, 3, 2, 2, 2)) == 2 * 24 * 7
    lin.train()
    R.count_flops(lin, (1, 3, 2, 2, 2))
    assert lin.training  # the mode is restored
    assert R.cpu_latency_ms(conv, (1, 3, t, h, w), repeats=3) > 0


TINY = {
    "data": {"num_frames": 4, "resize": 16, "crop": 16, "num_classes": 0},
    "model": {
        "backbone": "small3d",
        "dsts": {"enabled": True, "channels": 64, "num_layers": 1, "num_neurons": 2},
    },
}


def tiny_config(**dsts):
    from dsts.config import load_config

    tree = json.loads(json.dumps(TINY))
    tree["model"]["dsts"].update(dsts)
    return load_config(tree)


def test_variant_cost_of_a_fresh_model(tmp_path):
    from dsts.model import build_model

    cfg = tiny_config()
    folder = tmp_path / "run"
    folder.mkdir()
    with open(folder / "per_class.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["label", "name", "cue", "support", "accuracy"])
        for k in range(3):
            w.writerow([k, f"c{k}", "", 4, "0.5"])
    cost = R.variant_cost(cfg, folder, repeats=2)
    model = build_model(cfg, num_classes=3)
    assert cost["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert cost["flops_per_clip"] == R.count_flops(model, (1, 3, 4, 16, 16)) > 0
    assert cost["latency_ms"] > 0 and math.isfinite(cost["latency_ms"])
    plain = R.variant_cost(tiny_config(enabled=False), folder, latency=False)
    assert "latency_ms" not in plain
    assert (
        plain["flops_per_clip"] < cost["flops_per_clip"] and plain["num_parameters"] < cost["num_parameters"]
    )
    with pytest.raises(R.ReportError, match="cannot tell the number of classes"):
        R.variant_cost(cfg, tmp_path / "empty", repeats=1)


def test_variant_cost_of_a_saved_model(tmp_path):
    from dsts.engine import TrainResult, save_model
    from dsts.model import build_model

    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5)
    result = TrainResult(
        model=model,
        history=[],
        run_id=None,
        num_classes=5,
        class_names=[f"c{k}" for k in range(5)],
        class_cues=[None] * 5,
        seconds=0.0,
        data_seconds=0.0,
        resumed_from=0,
    )
    save_model(tmp_path / "model.pt", result, cfg)
    cost = R.variant_cost(cfg, tmp_path, repeats=1, latency=False)
    assert cost["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert cost["flops_per_clip"] == R.count_flops(model, (1, 3, 4, 16, 16))


def test_make_report_with_cost(tmp_path):
    root = Path(__file__).resolve().parents[1]
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"], params["seeds"] = ["baseline", "static"], [0, 1]
    params["data"].update({"num_frames": 4, "resize": 16, "crop": 16})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "ablations").symlink_to(root / "ablations", target_is_directory=True)
    write_fake_runs(tmp_path / "runs", ["baseline", "static"], [0, 1])
    args = (tmp_path / "runs", tmp_path / "params.yaml", tmp_path / "reports")
    rep = R.make_report(*args, latency_repeats=1)
    first = (tmp_path / "reports" / "summary.json").read_bytes()
    rows = {r["variant"]: r for r in rep.variant_rows}
    assert rows["static"]["flops_per_clip"] > rows["baseline"]["flops_per_clip"] > 0
    assert rows["static"]["latency_ms"] > 0
    assert rows["static"]["num_parameters"] == 260636.0  # from metrics.json
    summary = json.loads(first)
    assert summary["static/flops_per_clip"] == rows["static"]["flops_per_clip"]
    assert not any("latency" in k for k in summary)
    with open(tmp_path / "reports" / "ablation.csv", newline="") as handle:
        table = {r["variant"]: r for r in csv.DictReader(handle)}
    assert float(table["static"]["latency_ms"]) == rows["static"]["latency_ms"]
    assert rep.configs["static"]["num_neurons"] == 1 and rep.configs["baseline"]["dsts"] is False
    R.make_report(*args, latency_repeats=1)
    assert (
        tmp_path / "reports" / "summary.json"
    ).read_bytes() == first  # latency changed, the summary did not
