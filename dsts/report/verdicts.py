"""The numbers behind the report's verdicts: paired tests of explicit comparisons, the positive
control that decides whether the study can detect an effect at all, each run's late validation gain
(convergence) and the ends of its training-time routing trajectories.

- A comparison ``(first, second)`` is the paired t-test of ``first - second`` over the seeds both
  ran, per metric (``dsts/stats.py``).
- The control (``ablations/shuffled.yaml``): ``shuffled`` sees each clip's frames in a random
  order, so it cannot read motion direction. It is *detected* when it is significantly worse than
  ``baseline`` on ``rotation`` (paired t, unadjusted, p < alpha), and it is *within the detectable
  difference* on the spatial cues when the interval of its ``spatial_cue`` difference from
  ``baseline`` lies inside ``[-mdd, +mdd]``. A study that fails either cannot be trusted to find,
  or to rule out, the effects it is after.
- The late gain of a run: the rise over ``q`` epochs of the least-squares line through its
  ``val/top1`` at epochs ``E - q`` to ``E``, with ``E`` its last epoch and
  ``q = max(1, floor(E / 4 + 1/2))`` (a quarter of the epochs, rounded half up); for ``q = 1`` it is
  the difference of the two epochs. The line rather than the two end epochs: the validation top-1 of
  one epoch jitters by about a point on a plateau, which a 1-point limit cannot tell from learning;
  the line uses every epoch of the quarter (docs/study.md, "The late-gain estimator"). A gain above
  ``GAIN_LIMIT`` says the run was still learning when it stopped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from dsts.stats import paired_test

__all__ = [
    "CHANCE",
    "CONTROL",
    "CONTROL_CUE",
    "CONTROL_SPATIAL",
    "GAIN_LIMIT",
    "PAPER_COMPARISONS",
    "ROUTING",
    "TARGET_MDD",
    "Control",
    "control_check",
    "flagged",
    "late_gain",
    "late_gain_sd",
    "late_quarter_start",
    "pair_tests",
    "routing_ends",
]

CONTROL = ("shuffled", "baseline")
CONTROL_CUE = "rotation"  # order-dependent: which way the diver turns
CONTROL_SPATIAL = "spatial_cue"  # the spatial cues pooled: facing and position
PAPER_COMPARISONS = (("dsts", "baseline"), ("dsts", "dsts_3d"), ("dsts_udl", "dsts"))
TARGET_MDD = 0.05  # the difference the paper comparisons should be able to detect: 5 points
GAIN_LIMIT = 0.01  # a late validation gain above 1 point: not converged
CHANCE = 0.5  # of a within-pair accuracy (dsts.metrics.cue_accuracy)
ROUTING = {"selection_entropy": "selection_entropy_norm", "agreement": "argmax_agreement"}
_ROUTING_KEY = re.compile(r"^train/layer(\d+)/(" + "|".join(ROUTING.values()) + r")$")
_TOLERANCE = 1e-9  # accuracies are ratios of counts: a gain of exactly 1 point is not "more than 1"


def pair_tests(
    runs: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    metrics: Mapping[str, str],
    alpha: float,
    power: float,
) -> list[dict[str, float | str]]:
    """One row per (metric, pair): the paired test of ``first - second`` on the run table's column
    ``metrics[metric]``, paired by seed, with its interval at ``1 - alpha`` and its MDD."""
    rows: list[dict[str, float | str]] = []
    for metric, column in metrics.items():
        by_seed = runs.pivot(index="seed", columns="variant", values=column)
        for first, second in pairs:
            t = paired_test(by_seed[first].to_dict(), by_seed[second].to_dict(), alpha, power, 1 - alpha)
            rows.append(
                {
                    "metric": metric,
                    "first": first,
                    "second": second,
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
    return rows


@dataclass(frozen=True)
class Control:
    """The positive control's two tests and what they decide; ``missing`` says why it could not be
    checked at all ("" when it could)."""

    missing: str
    rotation: dict[str, float | str] | None  # shuffled - baseline on rotation; None: not recorded
    spatial: dict[str, float | str] | None  # the same on the pooled spatial cues
    detected: bool
    spatial_within_mdd: bool


def control_check(runs: pd.DataFrame, variants: Sequence[str], alpha: float, power: float) -> Control:
    """The control's verdict from the run table (columns ``pair_<attribute>``), whatever pairs the
    params compare."""
    absent = [v for v in CONTROL if v not in variants]
    if absent:
        return Control(f"{' and '.join(absent)} not among the variants", None, None, False, False)
    metrics = {m: f"pair_{m}" for m in (CONTROL_CUE, CONTROL_SPATIAL) if f"pair_{m}" in runs}
    tests = {row["metric"]: row for row in pair_tests(runs, [CONTROL], metrics, alpha, power)}
    rotation, spatial = tests.get(CONTROL_CUE), tests.get(CONTROL_SPATIAL)
    detected = rotation is not None and rotation["diff"] < 0 and rotation["p_value"] < alpha
    within = spatial is not None and bool(
        -spatial["mdd"] <= spatial["diff_ci_low"] and spatial["diff_ci_high"] <= spatial["mdd"]
    )
    return Control("", rotation, spatial, bool(detected), within)


def late_quarter_start(epochs: int) -> int:
    """``E - q``, with ``q = max(1, round(E / 4))`` (halves up): the convergence check reads the
    validation top-1 at epochs ``E - q`` to ``E`` of a run of ``E`` epochs (:func:`late_gain`), so
    training validates at least those (``dsts.engine.validated``). Below 1 when the run is too short
    to have such a quarter."""
    return epochs - max(1, math.floor(epochs / 4 + 0.5))


def _gain_window(history: Sequence[Mapping[str, float]]) -> tuple[int, int, dict[int, float]]:
    """``(E, E - q, weights)``: the late gain's epochs and the weight of each epoch's top-1 in it,
    ``q (e - centre) / sum (e - centre)^2``: the least-squares slope times ``q`` is the weighted sum
    of the top-1s, as the weights sum to 0. No weights when ``E - q < 1``."""
    if not history:
        return 0, 0, {}
    last = int(history[-1]["epoch"])
    start = late_quarter_start(last)
    if start < 1:
        return last, start, {}
    centre = (start + last) / 2
    norm = math.fsum((e - centre) ** 2 for e in range(start, last + 1))
    return last, start, {e: (e - centre) * (last - start) / norm for e in range(start, last + 1)}


def late_gain(history: Sequence[Mapping[str, float]]) -> tuple[float, int, int]:
    """``(gain, E, E - q)``: the run's validation top-1 gain over the last quarter of its epochs, the
    least-squares slope through epochs ``E - q`` to ``E`` times ``q``; NaN when one of those epochs
    has no finite ``val/top1``."""
    last, start, weights = _gain_window(history)
    at = {int(row["epoch"]): row.get("val/top1", math.nan) for row in history}
    top1 = [at.get(e, math.nan) for e in weights]
    if not weights or not all(math.isfinite(y) for y in top1):
        return math.nan, last, start
    # The slope in closed form over exactly summed floats (math.fsum), not a LAPACK fit, whose last
    # bits may depend on the CPU's BLAS kernels: the report's files are byte-identical everywhere the
    # runs are.
    centre = (start + last) / 2
    dx = [e - centre for e in weights]
    mean = math.fsum(top1) / len(top1)
    slope = math.fsum(x * (y - mean) for x, y in zip(dx, top1, strict=True)) / math.fsum(x * x for x in dx)
    return slope * (last - start), last, start


def late_gain_sd(history: Sequence[Mapping[str, float]], correct: Mapping[int, Sequence[int]]) -> float:
    """The validation-sampling sd of :func:`late_gain`: how far the gain would move on another draw of
    as many validation clips. With ``x_ie`` clip i right (1) or wrong (0) after epoch e, the gain is
    the mean over the n clips of ``g_i = sum_e w_e x_ie`` (the weights of the line), so its sd is
    ``sd(g_i) / sqrt(n)``. NaN when ``correct`` (epoch -> one 0/1 per clip) lacks an epoch of the
    quarter, or has fewer than two clips."""
    _, _, weights = _gain_window(history)
    rows = [correct.get(e) for e in weights]
    if not weights or any(r is None for r in rows) or len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
        return math.nan
    g = [
        math.fsum(w * r[i] for w, r in zip(weights.values(), rows, strict=True)) for i in range(len(rows[0]))
    ]
    n = len(g)
    mean = math.fsum(g) / n
    return math.sqrt(math.fsum((x - mean) ** 2 for x in g) / (n - 1) / n)


def flagged(gain: float) -> bool:
    """Whether a late gain says the run had not converged."""
    return gain > GAIN_LIMIT + _TOLERANCE


def routing_ends(history: Sequence[Mapping[str, float]]) -> dict[int, dict[str, float]]:
    """Per DSTS layer: ``<name>_first`` and ``<name>_last``, the first and last finite value of each
    training-time routing statistic of ``ROUTING`` (``dsts.specialization.TrainingRouting``)."""
    series: dict[tuple[int, str], list[float]] = {}
    for row in history:
        for key, value in row.items():
            m = _ROUTING_KEY.match(key)
            if m and math.isfinite(value):
                series.setdefault((int(m[1]), m[2]), []).append(value)
    name = {suffix: short for short, suffix in ROUTING.items()}
    out: dict[int, dict[str, float]] = {}
    for (layer, suffix), values in sorted(series.items()):
        out.setdefault(layer, {}).update(
            {f"{name[suffix]}_first": values[0], f"{name[suffix]}_last": values[-1]}
        )
    return out
