"""dsts.report.tables: each table from the fake run files, against the values written and
hand-computed statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsts.report.load import ReportError, load_runs
from dsts.report.tables import build_report, wide_curve
from dsts.runs import write_history
from tests.report.fakes import LAYERS, fake_metrics, write_fake_runs, write_run, write_runs_with

VARIANTS = ("baseline", "shuffled", "static", "dsts_3d", "dsts")
T975_DF2 = 4.302652729749464
MDD_N3 = 3.2640435498


def make(tmp_path, variants=VARIANTS, seeds=(0, 1, 2), **kw):
    fake = write_fake_runs(tmp_path, variants, seeds)
    return build_report(load_runs(tmp_path, variants, seeds), variants, seeds, **kw), fake


def p_df2(t: float) -> float:
    """Two-sided p of a t statistic on 2 degrees of freedom, in closed form."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


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
        assert (row["top1_temporal_cue"], row["pair_rotation"], row["pair_spatial_cue"]) == (
            m["test/top1_temporal_cue"],
            m["test/pair/rotation"],
            m["test/pair/spatial_cue"],
        )
        assert (row["num_parameters"], row["flops_per_clip"]) == (m["num_parameters"], m["flops_per_clip"])
        assert (row["train_seconds"], row["latency_ms"]) == (12.5, 4.0)
        assert (row["epochs"], row["gain_from"], row["gain_to"], row["val_gain"], row["converged"]) == (
            3,
            2,
            3,
            0,
            1,
        )
        if row["variant"] in ("baseline", "shuffled"):
            assert row["num_layers"] == 0 and math.isnan(row["cue_gap"]) and math.isnan(row["agreement_last"])
            continue
        assert row["num_layers"] == LAYERS and row["num_neurons"] == (1 if row["variant"] == "static" else 4)
        gaps = [m.get(f"test/layer{j}/temporal_fraction/cue_gap", math.nan) for j in range(LAYERS)]
        assert row["cue_gap"] == pytest.approx(np.mean(gaps), nan_ok=True)  # dsts_3d: no gates, NaN
        assert row["collapse_layers"] == sum(m[f"test/layer{j}/collapse"] for j in range(LAYERS))
        assert row["agreement_first"] == (1.0 if row["variant"] == "static" else 0.5)
        if row["variant"] == "static":  # one neuron: no selection entropy
            assert math.isnan(row["selection_entropy_first"]) and math.isnan(row["entropy_drop"])
        else:  # layers 0.95 -> 0.45 and 0.90 -> 0.40 (fakes.fake_history)
            assert (row["selection_entropy_first"], row["selection_entropy_last"]) == pytest.approx(
                (0.925, 0.425)
            )
            assert row["entropy_drop"] == pytest.approx(0.5)
    assert len(report.layers) == 3 * 3 * LAYERS
    assert report.attributes == [
        "rotation",
        "somersaults",
        "facing",
        "position",
        "spatial_cue",
        "temporal_cue",
    ]


def test_comparisons_are_the_listed_pairs_with_holm_over_each_metric(tmp_path):
    top1 = {
        "dsts": [0.50, 0.55, 0.60],
        "baseline": [0.40, 0.44, 0.51],  # dsts - baseline: +10, +11, +9 points
        "dsts_3d": [0.49, 0.50, 0.64],  # dsts - dsts_3d: +1, +5, -4 points
    }
    seeds = write_runs_with(tmp_path, {v: {"test/top1": x} for v, x in top1.items()})
    variants = list(top1)
    report = build_report(load_runs(tmp_path, variants, seeds), variants, seeds)
    assert report.pairs == [("dsts", "baseline"), ("dsts", "dsts_3d")]
    assert report.skipped == [("dsts_udl", "dsts"), ("shuffled", "baseline")]
    c = report.comparisons.set_index(["metric", "first", "second"])
    assert set(c.index.get_level_values("metric")) == {
        "top1",
        "mca",
        *report.attributes,
        "top1_spatial_cue",
        "top1_temporal_cue",
    }
    row = c.loc[("top1", "dsts", "baseline")]
    assert (row["n_pairs"], row["diff"], row["diff_sd"]) == (3, pytest.approx(0.10), pytest.approx(0.01))
    assert row["p_value"] == pytest.approx(p_df2(0.10 / (0.01 / math.sqrt(3))))  # 0.0033168
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(
        (0.10 - T975_DF2 * 0.01 / math.sqrt(3), 0.10 + T975_DF2 * 0.01 / math.sqrt(3))
    )
    assert row["mdd"] == pytest.approx(MDD_N3 * 0.01)
    other = c.loc[("top1", "dsts", "dsts_3d")]
    assert other["diff"] == pytest.approx(0.02 / 3) and other["p_value"] > row["p_value"]
    # Holm over the two top-1 comparisons: the smaller p doubled, the larger kept (it is above it)
    assert row["p_holm"] == pytest.approx(2 * row["p_value"]) and other["p_holm"] == pytest.approx(
        other["p_value"]
    )


def test_explicit_and_empty_comparisons(tmp_path):
    report, _ = make(tmp_path, comparisons=[("static", "dsts"), ("dsts", "missing")])
    assert report.pairs == [("static", "dsts")] and report.skipped == [("dsts", "missing")]
    assert set(zip(report.comparisons["first"], report.comparisons["second"])) == {("static", "dsts")}
    report, _ = make(tmp_path / "none", comparisons=[])
    assert report.pairs == [] and report.comparisons.empty


def test_within_pair_accuracy_against_chance(tmp_path):
    rotation = {"dsts": [0.60, 0.62, 0.64], "baseline": [0.50, 0.50, 0.50]}
    seeds = write_runs_with(tmp_path, {v: {"test/pair/rotation": x} for v, x in rotation.items()})
    report = build_report(load_runs(tmp_path, list(rotation), seeds), list(rotation), seeds)
    rows = report.ablation.set_index("variant")
    half = T975_DF2 * 0.02 / math.sqrt(3)
    assert rows.loc["dsts", "pair_rotation_mean"] == pytest.approx(0.62)
    assert (
        rows.loc["dsts", "pair_rotation_ci_low"],
        rows.loc["dsts", "pair_rotation_ci_high"],
    ) == pytest.approx((0.62 - half, 0.62 + half))
    assert rows.loc["dsts", "pair_rotation_p_value"] == pytest.approx(
        p_df2(0.12 / (0.02 / math.sqrt(3)))
    )  # 0.0091
    assert rows.loc["baseline", "pair_rotation_p_value"] == 1.0  # exactly at chance, every seed


def test_ablation_seed_statistics(tmp_path):
    top1 = {"dsts": [0.50, 0.55, 0.60]}
    seeds = write_runs_with(
        tmp_path, {"dsts": {"test/top1": top1["dsts"], "test/top1_temporal_cue": [0.3, 0.4, 0.5]}}
    )
    report = build_report(load_runs(tmp_path, ["dsts"], seeds), ["dsts"], seeds)
    row = report.ablation.iloc[0]
    assert (row["n_seeds"], row["top1_mean"], row["top1_sd"]) == (3, pytest.approx(0.55), pytest.approx(0.05))
    assert row["top1_ci_high"] == pytest.approx(0.55 + T975_DF2 * 0.05 / math.sqrt(3))
    assert (row["top1_temporal_cue_mean"], row["top1_temporal_cue_sd"]) == (
        pytest.approx(0.4),
        pytest.approx(0.1),
    )
    # specialization tests against 0: the selection entropy fell by 0.5 in every seed
    assert (row["entropy_drop_mean"], row["entropy_drop_p_value"]) == (pytest.approx(0.5), 0.0)
    assert (row["selection_entropy_first"], row["agreement_last"]) == (
        pytest.approx(0.925),
        pytest.approx(0.9),
    )


def test_convergence_flags_and_shares(tmp_path):
    seeds = (0, 1, 2)
    write_fake_runs(tmp_path, ["dsts", "baseline"], seeds)
    folder = tmp_path / "dsts" / "seed1"
    write_history(
        folder / "history.csv", [{"epoch": e, "val/top1": x} for e, x in ((1, 0.3), (2, 0.4), (3, 0.42))]
    )
    folder = tmp_path / "baseline" / "seed2"
    write_history(folder / "history.csv", [{"epoch": e, "train/loss": 1.0} for e in (1, 2, 3, 4)])
    report = build_report(load_runs(tmp_path, ["dsts", "baseline"], seeds), ["dsts", "baseline"], seeds)
    runs = report.runs.set_index(["variant", "seed"])
    assert (
        runs.loc[("dsts", 1), "val_gain"] == pytest.approx(0.02) and runs.loc[("dsts", 1), "converged"] == 0
    )
    assert math.isnan(runs.loc[("baseline", 2), "converged"]) and runs.loc[("baseline", 2), "epochs"] == 4
    rows = report.ablation.set_index("variant")
    assert rows.loc["dsts", "converged_share"] == pytest.approx(2 / 3)
    assert math.isnan(rows.loc["baseline", "converged_share"])  # one seed unknown: undefined
    assert (rows.loc["baseline", "epochs_min"], rows.loc["baseline", "epochs_max"]) == (3, 4)


def test_specialization_and_curve_tables(tmp_path):
    report, fake = make(tmp_path, variants=("baseline", "static", "dsts"))
    spec = report.specialization
    assert list(zip(spec["variant"], spec["layer"])) == [
        (v, j) for v in ("static", "dsts") for j in range(LAYERS)
    ]
    at = spec[(spec["variant"] == "dsts") & (spec["layer"] == 1)].iloc[0]
    assert at["n_seeds"] == 3
    assert at["nmi"] == pytest.approx(np.mean([fake[("dsts", s)]["test/layer1/nmi"] for s in (0, 1, 2)]))
    assert (at["selection_entropy_first"], at["selection_entropy_last"]) == pytest.approx((0.90, 0.40))
    curves = report.curves.set_index(["variant", "metric", "epoch"])
    top1 = [fake[("dsts", s)]["test/top1"] for s in (0, 1, 2)]  # validation reaches it from epoch 2 on
    assert curves.loc[("dsts", "val/top1", 3.0), "mean"] == pytest.approx(np.mean(top1))
    assert curves.loc[("dsts", "val/top1", 1.0), "mean"] == pytest.approx(np.mean(top1) * 2 / 3)
    assert curves.loc[("dsts", "val/top1", 3.0), "n"] == 3
    assert curves.loc[("dsts", "train/layer1/argmax_agreement", 2.0), "mean"] == pytest.approx(0.7)
    assert curves.loc[("dsts", "train/layer1/argmax_agreement", 2.0), "sd"] == 0.0
    assert ("static", "train/layer0/selection_entropy_norm", 1.0) not in curves.index  # NaN: left out
    assert not any(m.startswith("test/") for m in report.curves["metric"])


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


def test_runs_without_cue_metrics(tmp_path):
    seeds = (0, 1)
    for v in ("baseline", "dsts"):
        for s in seeds:
            m = {k: x for k, x in fake_metrics(v, s).items() if "pair/" not in k and "_cue" not in k}
            write_run(tmp_path / v / f"seed{s}", m)
    report = build_report(load_runs(tmp_path, ["baseline", "dsts"], seeds), ["baseline", "dsts"], seeds)
    assert report.attributes == [] and set(report.comparisons["metric"]) == {"top1", "mca"}
    assert report.ablation["top1_temporal_cue_mean"].isna().all()


def test_single_seed(tmp_path):
    report, _ = make(tmp_path, seeds=(0,))
    row = report.ablation.iloc[0]
    assert math.isnan(row["top1_ci_low"]) and math.isnan(row["top1_sd"])
    assert (report.comparisons["n_pairs"] == 1).all() and report.comparisons["p_value"].isna().all()


def test_bad_levels(tmp_path):
    write_fake_runs(tmp_path, ["dsts"], [0])
    runs = load_runs(tmp_path, ["dsts"], [0])
    with pytest.raises(ReportError, match=r"alpha: 1.5 must lie in \(0, 1\)"):
        build_report(runs, ["dsts"], [0], alpha=1.5)
    with pytest.raises(ReportError, match="power: 0.0 must lie"):
        build_report(runs, ["dsts"], [0], power=0.0)


def test_wide_curve_is_one_column_per_variant_of_the_validation_means(tmp_path):
    variants, seeds = ("baseline", "dsts"), (0, 1)
    for v, values in {"baseline": (0.2, 0.4), "dsts": (0.3, 0.5)}.items():
        for s, x in zip(seeds, values):
            history = [{"epoch": e, "val/top1": x * e, "train/loss": 1.0} for e in (1, 2)]
            write_run(tmp_path / v / f"seed{s}", fake_metrics(v, s), history=history)
    wide = wide_curve(build_report(load_runs(tmp_path, variants, seeds), variants, seeds))
    assert list(wide.columns) == ["epoch", "baseline", "dsts"]
    assert wide["epoch"].tolist() == [1, 2]
    assert wide["baseline"].tolist() == pytest.approx([0.3, 0.6]) and wide["dsts"].tolist() == pytest.approx(
        [0.4, 0.8]
    )
