"""dsts.report.tables: each table against numpy recomputations from the fake run files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dsts.report.load import ReportError, load_runs
from dsts.report.tables import build_report, summary, wide_curve
from dsts.stats import one_sample_test, paired_test, summarize
from tests.report.fakes import LAYERS, fake_metrics, write_fake_runs, write_run

VARIANTS = ("baseline", "static", "dsts_udl")


def make(tmp_path, variants=VARIANTS, seeds=(0, 1, 2), **kw):
    fake = write_fake_runs(tmp_path, variants, seeds)
    return build_report(load_runs(tmp_path, variants, seeds), variants, seeds, **kw), fake


def test_run_table(tmp_path):
    report, fake = make(tmp_path)
    table = report.runs
    assert list(zip(table["variant"], table["seed"])) == [(v, s) for v in VARIANTS for s in (0, 1, 2)]
    for row in table.to_dict("records"):
        m = fake[(row["variant"], row["seed"])]
        assert (row["top1"], row["mca"], row["top5"]) == (
            m["test/top1"],
            m["test/mean_class_accuracy"],
            m["test/top5"],
        )
        assert (row["num_parameters"], row["flops_per_clip"]) == (m["num_parameters"], m["flops_per_clip"])
        assert (row["train_seconds"], row["latency_ms"]) == (12.5, 4.0)
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
    assert len(report.layers) == 2 * 3 * LAYERS


def test_ablation_and_comparison_tables(tmp_path):
    report, _ = make(tmp_path)
    assert report.references == ["dsts_udl", "static"]
    rows = report.ablation.set_index("variant")
    runs = report.runs
    for v in VARIANTS:
        s = summarize(runs.loc[runs["variant"] == v, "top1"])
        assert (rows.loc[v, "top1_mean"], rows.loc[v, "top1_ci_low"], rows.loc[v, "n_seeds"]) == (
            s.mean,
            s.ci_low,
            3,
        )
    for c in report.comparisons.to_dict("records"):
        col = c["metric"]
        a = runs[runs["variant"] == c["variant"]].set_index("seed")[col].to_dict()
        b = runs[runs["variant"] == c["reference"]].set_index("seed")[col].to_dict()
        test = paired_test(a, b)
        assert (c["p_value"], c["mdd"], c["n_pairs"]) == (test.p_value, test.mdd, 3)
    assert set(
        zip(report.comparisons["metric"], report.comparisons["variant"], report.comparisons["reference"])
    ) == {(m, v, r) for m in ("top1", "mca") for r in ("dsts_udl", "static") for v in VARIANTS if v != r}
    assert rows.loc["static", "top1_diff_vs_dsts_udl"] == pytest.approx(
        rows.loc["static", "top1_mean"] - rows.loc["dsts_udl", "top1_mean"]
    )
    assert math.isnan(rows.loc["static", "top1_diff_vs_static"])  # no comparison with itself
    assert math.isnan(rows.loc["baseline", "cue_gap_mean"]) and rows.loc["dsts_udl", "cue_gap_n"] == 3
    gaps = runs.loc[runs["variant"] == "dsts_udl", "cue_gap"]
    assert rows.loc["dsts_udl", "cue_gap_p_value"] == one_sample_test(gaps).p_value


def test_holm_within_each_reference(tmp_path):
    report, _ = make(tmp_path, variants=("baseline", "static", "dsts", "dsts_udl"))
    for (metric, ref), family in report.comparisons.groupby(["metric", "reference"]):
        p = family["p_value"].to_numpy()
        order = np.argsort(p)
        expected = np.minimum(1, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
        assert family["p_holm"].to_numpy()[order] == pytest.approx(expected), (metric, ref)


def test_specialization_and_curve_tables(tmp_path):
    report, fake = make(tmp_path)
    spec = report.specialization
    assert list(zip(spec["variant"], spec["layer"])) == [
        (v, j) for v in ("static", "dsts_udl") for j in range(LAYERS)
    ]
    at = spec[(spec["variant"] == "dsts_udl") & (spec["layer"] == 1)].iloc[0]
    assert at["n_seeds"] == 3
    assert at["nmi"] == pytest.approx(np.mean([fake[("dsts_udl", s)]["test/layer1/nmi"] for s in (0, 1, 2)]))
    curves = report.curves.set_index(["variant", "metric", "epoch"])
    top1 = [fake[("dsts_udl", s)]["test/top1"] for s in (0, 1, 2)]  # the last epoch reaches it
    assert curves.loc[("dsts_udl", "test/top1", 3.0), "mean"] == pytest.approx(np.mean(top1))
    assert curves.loc[("dsts_udl", "test/top1", 3.0), "sd"] == pytest.approx(np.std(top1, ddof=1))
    assert curves.loc[("dsts_udl", "test/top1", 3.0), "n"] == 3


def test_cost_columns_are_means_of_the_run_files(tmp_path):
    seeds = (0, 1)
    for s, (flops, latency) in enumerate([(3e8, 2.0), (5e8, 6.0)]):
        write_run(
            tmp_path / "dsts" / f"seed{s}",
            fake_metrics("dsts", s) | {"flops_per_clip": flops},
            latency=latency,
        )
    old = fake_metrics("static", 0)
    del old["flops_per_clip"], old["num_parameters"]  # a run from before the cost keys
    for s in seeds:
        write_run(tmp_path / "static" / f"seed{s}", old, latency=None)
    report = build_report(load_runs(tmp_path, ["dsts", "static"], seeds), ["dsts", "static"], seeds)
    rows = report.ablation.set_index("variant")
    assert (rows.loc["dsts", "flops_per_clip"], rows.loc["dsts", "latency_ms"]) == (4e8, 4.0)
    assert rows.loc["static", ["num_parameters", "flops_per_clip", "latency_ms"]].isna().all()
    s = summary(report)
    assert s["dsts/flops_per_clip"] == 4e8 and "static/flops_per_clip" not in s


def test_summary_is_finite_flat_and_holds_no_timing(tmp_path):
    report, _ = make(tmp_path)
    s = summary(report)
    json.dumps(s, allow_nan=False)
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in s.values())
    assert not any("latency" in k or "seconds" in k for k in s)
    assert s["static/flops_per_clip"] == 2.5e8 and s["baseline/num_parameters"] == 145180.0
    assert s["dsts_udl_vs_static/top1_n_pairs"] == 3 and isinstance(s["baseline/n_seeds"], int)
    assert "baseline/cue_gap_mean" not in s  # undefined for the baseline: omitted, not NaN
    assert list(s) == sorted(s)


def test_single_seed(tmp_path):
    report, _ = make(tmp_path, seeds=(0,))
    row = report.ablation.iloc[0]
    assert math.isnan(row["top1_ci_low"]) and math.isnan(row["top1_sd"])
    assert (report.comparisons["n_pairs"] == 1).all() and report.comparisons["p_value"].isna().all()
    assert not any(k.endswith(("_ci_low", "_sd", "p_value", "mdd")) for k in summary(report))


def test_references_missing_from_the_variants(tmp_path):
    report, _ = make(tmp_path, variants=("baseline", "dsts"))
    assert report.references == [] and report.comparisons.empty
    assert list(report.ablation["variant"]) == ["baseline", "dsts"]
    assert not any("_vs_" in c for c in report.ablation)


def test_bad_levels(tmp_path):
    write_fake_runs(tmp_path, ["dsts"], [0])
    runs = load_runs(tmp_path, ["dsts"], [0])
    with pytest.raises(ReportError, match=r"alpha: 1.5 must lie in \(0, 1\)"):
        build_report(runs, ["dsts"], [0], alpha=1.5)
    with pytest.raises(ReportError, match="power: 0.0 must lie"):
        build_report(runs, ["dsts"], [0], power=0.0)


def test_wide_curve_is_one_column_per_variant_of_the_seed_means(tmp_path):
    variants, seeds = ("baseline", "dsts"), (0, 1)
    write_fake_runs(tmp_path, variants, seeds)
    runs = load_runs(tmp_path, variants, seeds)
    wide = wide_curve(build_report(runs, variants, seeds))
    assert list(wide.columns) == ["epoch", "baseline", "dsts"]
    for variant in variants:
        mine = [r for r in runs if r.variant == variant]
        for _, row in wide.iterrows():
            values = [h["test/top1"] for r in mine for h in r.history if h["epoch"] == row["epoch"]]
            assert row[variant] == pytest.approx(sum(values) / len(values))
