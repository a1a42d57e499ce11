"""dsts.report.keys: summary.json's flat key names, exactly, its numbers, and nothing undefined or
timed."""

from __future__ import annotations

import json
import math

import pytest

from dsts.report.keys import summary
from dsts.report.load import load_runs
from dsts.report.tables import build_report
from dsts.runs import write_history
from tests.report.fakes import write_fake_runs, write_runs_with

ATTRIBUTES = ("rotation", "somersaults", "facing", "position", "spatial_cue", "temporal_cue")
TESTS = ("n_pairs", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "p_sign_flip", "mdd")


def report_of(tmp_path, variants, seeds=(0, 1, 2), **kw):
    write_fake_runs(tmp_path, variants, seeds)
    return build_report(load_runs(tmp_path, variants, seeds), variants, seeds, **kw)


def test_the_key_names_of_a_control_study(tmp_path):
    s = summary(report_of(tmp_path, ("baseline", "shuffled")))
    per_variant = ["n_seeds", "converged_share", "num_parameters", "flops_per_clip"]
    for metric in ("top1", "mca", "top1_spatial_cue", "top1_temporal_cue"):
        per_variant += [f"{metric}_mean", f"{metric}_sd", f"{metric}_ci_low", f"{metric}_ci_high"]
    for a in ATTRIBUTES:
        per_variant += [f"pair_{a}_mean", f"pair_{a}_ci_low", f"pair_{a}_ci_high", f"pair_{a}_p_value"]
    expected = {f"{v}/{k}" for v in ("baseline", "shuffled") for k in per_variant}
    for metric in ("top1", "mca", *ATTRIBUTES, "top1_spatial_cue", "top1_temporal_cue"):
        expected |= {f"shuffled_vs_baseline/{metric}_{t}" for t in TESTS}
    expected |= {"study/control_detected", "study/control_spatial_within_mdd"}
    assert set(s) == expected
    assert list(s) == sorted(s)
    # the fakes' shuffled is at chance on rotation and within a point of the baseline on space
    assert (s["study/control_detected"], s["study/control_spatial_within_mdd"]) == (1, 1)
    assert isinstance(s["study/control_detected"], int) and isinstance(s["baseline/n_seeds"], int)
    assert (
        s["shuffled_vs_baseline/rotation_diff"] < -0.2 and s["shuffled_vs_baseline/rotation_p_value"] < 0.05
    )
    assert s["shuffled_vs_baseline/spatial_cue_diff"] == pytest.approx(
        0.0, abs=1e-12
    )  # diffs -1, 0, +1 points
    assert s["shuffled/converged_share"] == 1.0 and s["baseline/num_parameters"] == 145180.0


def test_the_paper_comparisons_and_the_specialization_keys(tmp_path):
    s = summary(report_of(tmp_path, ("baseline", "static", "dsts_3d", "dsts", "dsts_udl")))
    for pair in ("dsts_vs_baseline", "dsts_vs_dsts_3d", "dsts_udl_vs_dsts"):
        assert {f"{pair}/top1_diff", f"{pair}/top1_p_value", f"{pair}/top1_mdd"} <= set(s)
    assert not any(k.startswith("shuffled") for k in s)
    assert (s["study/control_detected"], s["study/control_spatial_within_mdd"]) == (
        0,
        0,
    )  # no control: not shown
    assert s["dsts/selection_entropy_first"] == pytest.approx(
        0.925
    )  # fakes.fake_history, layers 0.95 and 0.90
    assert s["dsts/selection_entropy_last"] == pytest.approx(0.425)
    assert s["dsts/agreement_last"] == pytest.approx(0.9) and s["dsts/entropy_drop_p_value"] == 0.0
    assert {"dsts/nmi_mean", "dsts/nmi_p_value", "dsts/cue_gap_mean", "dsts/cue_gap_p_value"} <= set(s)
    assert (
        "baseline/cue_gap_mean" not in s and "static/selection_entropy_first" not in s
    )  # undefined: left out
    assert "dsts_3d/tf_temporal_cue" not in s  # no gates


def test_numbers_of_a_hand_computed_control(tmp_path):
    values = {
        "baseline": {"test/pair/rotation": [0.80, 0.82, 0.78], "test/pair/spatial_cue": [0.70, 0.75, 0.72]},
        "shuffled": {"test/pair/rotation": [0.50, 0.55, 0.48], "test/pair/spatial_cue": [0.71, 0.74, 0.72]},
    }
    seeds = write_runs_with(tmp_path, values)
    s = summary(build_report(load_runs(tmp_path, list(values), seeds), list(values), seeds))
    assert s["shuffled_vs_baseline/rotation_diff"] == pytest.approx(-0.29)
    assert s["shuffled_vs_baseline/rotation_p_value"] == pytest.approx(0.0011869440385)  # t = -29, df 2
    assert s["shuffled_vs_baseline/spatial_cue_diff_ci_low"] == pytest.approx(-0.0248413771175)
    assert s["shuffled_vs_baseline/spatial_cue_diff_ci_high"] == pytest.approx(0.0248413771175)
    assert s["shuffled_vs_baseline/spatial_cue_mdd"] == pytest.approx(0.032640435498)
    assert s["baseline/pair_rotation_mean"] == pytest.approx(0.80)
    t = 0.30 / (0.02 / math.sqrt(3))  # baseline's rotation against 50%: mean 0.80, sd 0.02
    assert s["baseline/pair_rotation_p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert (s["study/control_detected"], s["study/control_spatial_within_mdd"]) == (1, 1)


def test_undefined_and_timed_numbers_are_left_out(tmp_path):
    seeds = (0, 1)
    write_fake_runs(tmp_path, ["baseline", "dsts"], seeds)
    write_history(tmp_path / "dsts" / "seed0" / "history.csv", [{"epoch": 1, "train/loss": 1.0}])
    s = summary(build_report(load_runs(tmp_path, ["baseline", "dsts"], seeds), ["baseline", "dsts"], seeds))
    json.dumps(s, allow_nan=False)
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in s.values())
    assert not any("latency" in k or "seconds" in k for k in s)
    assert "dsts/converged_share" not in s and s["baseline/converged_share"] == 1.0
    one = summary(report_of(tmp_path / "one", ("baseline", "shuffled"), seeds=(0,)))
    assert not any(
        k.endswith(("_ci_low", "_sd", "p_value", "mdd")) for k in one if not k.startswith("study/")
    )
    assert one["shuffled_vs_baseline/top1_n_pairs"] == 1 and one["study/control_detected"] == 0
