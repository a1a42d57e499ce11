"""``summary.json``: the report's numbers as flat ``<prefix>/<name>`` keys, for ``dvc metrics`` and
the MLflow study run (dsts/tracking/study.py logs them as they are).

- per variant, ``<variant>/<name>``: the seed statistics, each cue attribute's within-pair accuracy
  (``pair_<attribute>_mean`` and its one-sample p-value against chance), ``converged_share``, the
  specialization and routing means with their tests, parameters and FLOPs;
- per comparison and metric, ``<first>_vs_<second>/<metric>_<statistic>``;
- ``study/control_detected`` and ``study/control_spatial_within_mdd``: the positive control's verdict
  (dsts/report/verdicts.py), 1 or 0.

No timing or latency (a rerun writes the same bytes) and no undefined value (JSON has no NaN): a
number a variant lacks is left out.
"""

from __future__ import annotations

import math
from typing import Any

from dsts.report.tables import SEED_METRICS, Report

__all__ = ["TEST_KEYS", "summary", "variant_keys"]

TEST_KEYS = ("diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "p_sign_flip", "mdd")
SPECIALIZATION_KEYS = (
    *("usage_entropy_norm", "nmi_mean", "nmi_p_value", "collapse_layers", "tf_temporal_cue"),
    *("tf_spatial_cue", "cue_gap_mean", "cue_gap_p_value", "selection_entropy_first"),
    *("selection_entropy_last", "entropy_drop_p_value", "agreement_last"),
)


def variant_keys(report: Report) -> list[str]:
    """The names each variant's numbers take, after ``<variant>/``."""
    keys = ["n_seeds"]
    keys += [f"{m}_{s}" for m in SEED_METRICS for s in ("mean", "sd", "ci_low", "ci_high")]
    keys += [f"pair_{a}_{s}" for a in report.attributes for s in ("mean", "ci_low", "ci_high", "p_value")]
    return [*keys, "converged_share", *SPECIALIZATION_KEYS, "num_parameters", "flops_per_clip"]


def summary(report: Report) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``, sorted by key."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        value = float(value)
        if math.isfinite(value):
            whole = key.endswith(("n_seeds", "n_pairs")) or key.startswith("study/")
            out[key] = int(value) if whole else value

    names = variant_keys(report)
    for row in report.ablation.to_dict("records"):
        for key in names:
            put(f"{row['variant']}/{key}", row.get(key, math.nan))
    for c in report.comparisons.to_dict("records"):
        prefix = f"{c['first']}_vs_{c['second']}/{c['metric']}"
        put(f"{prefix}_n_pairs", c["n_pairs"])
        for key in TEST_KEYS:
            put(f"{prefix}_{key}", c[key])
    put("study/control_detected", report.control.detected)
    put("study/control_spatial_within_mdd", report.control.spatial_within_mdd)
    return dict(sorted(out.items()))
