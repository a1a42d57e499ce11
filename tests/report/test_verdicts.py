"""dsts.report.verdicts: the positive control, the late validation gain and its sampling sd, and the
ends of the routing trajectories, on hand-computed cases and exact rational oracles."""

from __future__ import annotations

import math
from fractions import Fraction

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsts.report.verdicts import control_check, flagged, late_gain, late_gain_sd, pair_tests, routing_ends

MDD_N3 = 3.2640435498  # MDD / sd(d) at n = 3: exact noncentral-t power 0.8 (R power.t.test: 3.26)
HALF_N3 = 4.302652729749464 / math.sqrt(3)  # t_(0.975, 2) / sqrt(3): CI half-width / sd(d)


def table(columns: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """A run table: ``{variant: {column: values per seed}}``."""
    rows = []
    for variant, values in columns.items():
        for seed in range(len(next(iter(values.values())))):
            rows.append({"variant": variant, "seed": seed, **{k: v[seed] for k, v in values.items()}})
    return pd.DataFrame(rows)


CLEAR = {  # shuffled: 29 points worse on rotation (diffs -30, -27, -30), spatial diffs +1, -1, 0
    "baseline": {"pair_rotation": [0.80, 0.82, 0.78], "pair_spatial_cue": [0.70, 0.75, 0.72]},
    "shuffled": {"pair_rotation": [0.50, 0.55, 0.48], "pair_spatial_cue": [0.71, 0.74, 0.72]},
}


def test_pair_tests_are_first_minus_second_by_seed():
    runs = table(CLEAR)
    (row,) = pair_tests(runs, [("shuffled", "baseline")], {"rotation": "pair_rotation"}, 0.05, 0.8)
    assert (row["metric"], row["first"], row["second"], row["n_pairs"]) == (
        "rotation",
        "shuffled",
        "baseline",
        3,
    )
    assert row["diff"] == pytest.approx(-0.29)
    assert row["diff_sd"] == pytest.approx(0.0173205080757)
    assert row["t"] == pytest.approx(-29.0)
    assert row["p_value"] == pytest.approx(0.0011869440385)  # 1 - |t| / sqrt(2 + t^2), two-sided, df 2
    assert row["mdd"] == pytest.approx(MDD_N3 * 0.0173205080757)
    assert row["p_sign_flip"] == 0.25


def test_a_clear_control_is_detected_and_within_the_detectable_difference():
    c = control_check(table(CLEAR), ["baseline", "shuffled", "dsts"], 0.05, 0.8)
    assert c.missing == "" and c.detected and c.spatial_within_mdd
    assert c.rotation["diff"] == pytest.approx(-0.29)
    assert c.spatial["diff"] == pytest.approx(0.0, abs=1e-15)
    assert (c.spatial["diff_ci_low"], c.spatial["diff_ci_high"]) == pytest.approx(
        (-0.01 * HALF_N3, 0.01 * HALF_N3)
    )
    assert c.spatial["mdd"] == pytest.approx(0.01 * MDD_N3)


def test_a_control_that_is_not_worse_is_not_detected():
    same = dict(CLEAR, shuffled=dict(CLEAR["shuffled"], pair_rotation=[0.81, 0.80, 0.79]))  # diffs +1, -2, +1
    c = control_check(table(same), ["baseline", "shuffled"], 0.05, 0.8)
    assert not c.detected and c.spatial_within_mdd
    better = dict(CLEAR, shuffled=dict(CLEAR["shuffled"], pair_rotation=[0.90, 0.91, 0.89]))
    c = control_check(table(better), ["baseline", "shuffled"], 0.05, 0.8)
    assert c.rotation["p_value"] < 0.05 and not c.detected  # significantly better is no detection


def test_a_spatial_difference_beyond_the_detectable_difference_fails():
    # diffs +3, +4, +5 points: CI [1.5, 6.5] points, MDD 3.3 points
    off = dict(CLEAR, shuffled=dict(CLEAR["shuffled"], pair_spatial_cue=[0.73, 0.79, 0.77]))
    c = control_check(table(off), ["baseline", "shuffled"], 0.05, 0.8)
    assert c.detected and not c.spatial_within_mdd
    assert c.spatial["diff_ci_high"] == pytest.approx(0.04 + 0.01 * HALF_N3) and c.spatial[
        "mdd"
    ] == pytest.approx(0.01 * MDD_N3)


def test_a_control_that_cannot_be_checked():
    c = control_check(table({"baseline": CLEAR["baseline"]}), ["baseline", "dsts"], 0.05, 0.8)
    assert c.missing == "shuffled not among the variants" and not c.detected and not c.spatial_within_mdd
    no_cues = table({v: {"top1": [0.5, 0.6, 0.7]} for v in ("baseline", "shuffled")})
    c = control_check(no_cues, ["baseline", "shuffled"], 0.05, 0.8)
    assert c.missing == "" and c.rotation is None and c.spatial is None and not c.detected
    one_seed = table({v: {k: x[:1] for k, x in cols.items()} for v, cols in CLEAR.items()})
    c = control_check(one_seed, ["baseline", "shuffled"], 0.05, 0.8)
    assert c.rotation["n_pairs"] == 1 and not c.detected and not c.spatial_within_mdd


def history(values: dict[int, float]) -> list[dict[str, float]]:
    return [{"epoch": float(e), "val/top1": v} for e, v in values.items()]


@pytest.mark.parametrize(
    ("epochs", "start"),
    [(1, 0), (2, 1), (3, 2), (4, 3), (6, 4), (10, 7), (12, 9), (30, 22)],  # q = max(1, floor(E/4 + 1/2))
)
def test_late_gain_spans_a_quarter_of_the_epochs(epochs, start):
    rows = history({e: 0.01 * e for e in range(1, epochs + 1)})
    gain, last, first = late_gain(rows)
    assert (last, first) == (epochs, start)
    if start == 0:
        assert math.isnan(gain)  # one epoch: nothing to compare with
    else:
        assert gain == pytest.approx(0.01 * (epochs - start))


def exact_rise(epochs: list[int], values: list[float]) -> Fraction:
    """The oracle: the least-squares line's rise from the first to the last epoch, from the normal
    equations in exact rational arithmetic (sums of x, x^2, y and xy, uncentred)."""
    n = len(epochs)
    x = [Fraction(e) for e in epochs]
    y = [Fraction(v) for v in values]
    sx, sy = sum(x), sum(y)
    sxx, sxy = sum(a * a for a in x), sum(a * b for a, b in zip(x, y, strict=True))
    slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return slope * (x[-1] - x[0])


@given(
    st.lists(
        st.integers(min_value=0, max_value=384).map(lambda k: k / 384), min_size=2, max_size=40
    )  # accuracies on 384 clips
)
def test_late_gain_is_the_rise_of_the_least_squares_line_over_the_last_quarter(curve):
    rows = history({e: v for e, v in enumerate(curve, start=1)})
    gain, last, start = late_gain(rows)
    assert (last, start) == (len(curve), len(curve) - max(1, math.floor(len(curve) / 4 + 0.5)))
    window = list(range(start, last + 1))
    assert gain == pytest.approx(float(exact_rise(window, curve[start - 1 :])), abs=1e-12)


def test_late_gain_reads_every_epoch_of_the_quarter():
    # 16 epochs: epochs 12 to 16. The two end epochs tie, so their difference says 0; the epochs between
    # dip and come back: centred epochs -2..2 against 0.80, 0.78, 0.79, 0.80, 0.80 (mean 0.794) give the
    # slope 0.02 / 10 and a rise of 4 * 0.002 = 0.008.
    rows = history({**{e: 0.5 for e in range(1, 12)}, 12: 0.80, 13: 0.78, 14: 0.79, 15: 0.80, 16: 0.80})
    assert late_gain(rows)[0] == pytest.approx(0.008)
    flat_after_a_climb = history({**{e: 0.05 * e for e in range(1, 12)}, **{e: 0.8 for e in range(12, 17)}})
    assert late_gain(flat_after_a_climb)[0] == pytest.approx(0.0, abs=1e-15)
    assert late_gain(history({1: 0.2, 2: 0.5}))[0] == pytest.approx(0.3)  # q = 1: the two epochs


def test_late_gain_is_unknown_without_validation_top1():
    assert late_gain(history({1: 0.2, 2: 0.3, 3: 0.4}))[0] == pytest.approx(0.1)
    assert math.isnan(late_gain(history({1: 0.2, 2: 0.3, 3: math.nan}))[0])
    # 8 epochs: q = 2, epochs 6 to 8; a gap inside the quarter leaves the line undefined
    assert math.isnan(late_gain(history({**{e: 0.5 for e in range(1, 8)}, 7: math.nan, 8: 0.6}))[0])
    assert math.isnan(late_gain([{"epoch": 1.0, "train/loss": 1.0}, {"epoch": 2.0, "train/loss": 0.9}])[0])
    gain, last, first = late_gain([])
    assert math.isnan(gain) and (last, first) == (0, 0)


@st.composite
def clip_records(draw):
    """A run's per-clip validation record: epochs 1 to E, each with a 0/1 per clip."""
    epochs = draw(st.integers(min_value=2, max_value=24))
    clips = draw(st.integers(min_value=2, max_value=12))
    bits = st.lists(st.integers(0, 1), min_size=clips, max_size=clips)
    return {e: draw(bits) for e in range(1, epochs + 1)}


def top1_history(correct: dict[int, list[int]]) -> list[dict[str, float]]:
    return history({e: sum(bits) / len(bits) for e, bits in correct.items()})


@given(clip_records())
def test_late_gain_sd_is_the_standard_error_of_the_clips_own_gains(correct):
    rows = top1_history(correct)
    _, last, start = late_gain(rows)
    window = list(range(start, last + 1))
    # the oracle, in exact rational arithmetic: each clip's own least-squares rise over the quarter,
    # then the sample variance of those rises over the clips, divided by their number
    own = [exact_rise(window, [correct[e][i] for e in window]) for i in range(len(correct[1]))]
    n = len(own)
    mean = sum(own) / n
    variance = sum((g - mean) ** 2 for g in own) / (n - 1) / n
    assert late_gain_sd(rows, correct) == pytest.approx(math.sqrt(variance), abs=1e-12)
    # the clips' own gains average to the run's gain: the sd belongs to the gain the report reads
    assert float(mean) == pytest.approx(late_gain(rows)[0], abs=1e-12)


def test_late_gain_sd_on_a_hand_computed_case():
    # 4 epochs: q = 1, epochs 3 and 4, so a clip's own gain is its change from epoch 3 to 4. Two of
    # four clips turn right (+1), two stay (0): g = (1, 1, 0, 0), sd(g) = sqrt(1/3), over sqrt(4)
    correct = {1: [0, 0, 0, 0], 2: [0, 0, 1, 1], 3: [0, 0, 1, 1], 4: [1, 1, 1, 1]}
    assert late_gain(top1_history(correct))[0] == pytest.approx(0.5)
    assert late_gain_sd(top1_history(correct), correct) == pytest.approx(math.sqrt(1 / 3) / 2)
    # clips that all change alike leave no doubt about the gain
    same = {1: [0, 0], 2: [0, 0], 3: [0, 0], 4: [1, 1]}
    assert late_gain_sd(top1_history(same), same) == 0.0


def test_late_gain_sd_is_unknown_without_every_epoch_of_the_quarter():
    correct = {e: [0, 1, 1] for e in range(1, 9)}  # 8 epochs: q = 2, epochs 6 to 8
    rows = top1_history(correct)
    assert late_gain_sd(rows, correct) == 0.0
    assert math.isnan(late_gain_sd(rows, {e: v for e, v in correct.items() if e != 7}))
    assert math.isnan(late_gain_sd(rows, {}))  # a run without val_correct.csv
    assert math.isnan(late_gain_sd(rows, {e: [1] for e in range(1, 9)}))  # one clip: no spread
    assert math.isnan(late_gain_sd(rows, {**correct, 8: [0, 1]}))  # the clips must be the same
    assert math.isnan(late_gain_sd(history({1: 0.5}), {1: [0, 1]}))  # one epoch: no gain at all


def test_more_than_one_point_is_flagged():
    assert not flagged(0.51 - 0.50)  # 0.010000000000000009: exactly 1 point of accuracy
    assert flagged(0.0101) and not flagged(0.0) and not flagged(-0.02) and not flagged(math.nan)


def test_routing_ends_skip_undefined_values():
    rows = [
        {"epoch": 1.0, "train/layer0/selection_entropy_norm": math.nan, "train/layer0/argmax_agreement": 0.5},
        {"epoch": 2.0, "train/layer0/selection_entropy_norm": 0.9, "train/layer1/argmax_agreement": 0.7},
        {"epoch": 3.0, "train/layer0/selection_entropy_norm": 0.6, "train/layer0/argmax_agreement": 0.8},
        {"epoch": 4.0, "train/layer0/selection_entropy_norm": math.nan, "train/layer0/max_usage": 0.4},
    ]
    assert routing_ends(rows) == {
        0: {
            "selection_entropy_first": 0.9,
            "selection_entropy_last": 0.6,
            "agreement_first": 0.5,
            "agreement_last": 0.8,
        },
        1: {"agreement_first": 0.7, "agreement_last": 0.7},
    }
    assert routing_ends([{"epoch": 1.0, "val/top1": 0.3}]) == {}
