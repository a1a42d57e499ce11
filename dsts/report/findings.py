"""The sentences of ``ablation.md``, each computed from the numbers of a
:class:`dsts.report.tables.Report`: the verdict of the positive control (the report's first line),
the comparisons, their power against the study's target, the cues learned, convergence, the epochs
trained and what the routing did in each DSTS variant."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dsts.report.fmt import ci_pts, level, num, pts, pval
from dsts.report.tables import Report
from dsts.report.verdicts import CHANCE, CONTROL, CONTROL_CUE, GAIN_LIMIT, PAPER_COMPARISONS, TARGET_MDD
from dsts.stats import SIGN_FLIP_MAX_N

__all__ = [
    "convergence_sentences",
    "cue_sentences",
    "epochs_sentence",
    "findings",
    "power_sentences",
    "specialization_sentence",
    "tie_sentences",
    "verdict",
]

# Accuracies are multiples of one over a few hundred clips, so a spread that is not 0 is far above
# this; below it, the spread is 0 up to floating-point rounding.
TIED = 1e-9


def _test(row: Mapping[str, Any], alpha: float, diff: bool = True) -> str:
    """``Δ points, paired t p=..., n=...`` of a paired-test row (without Δ: ``diff=False``)."""
    shown = f"{pts(row['diff'], True)} points, " if diff else ""
    if row["n_pairs"] < 2:
        return f"{shown}n={row['n_pairs']} paired seed: no test is possible"
    return f"{shown}paired t p={pval(row['p_value'])} at α={alpha:g}, n={row['n_pairs']}"


def _interval(row: Mapping[str, Any], alpha: float) -> str:
    return f"{pts(row['diff'], True)} points, {level(alpha)} CI {ci_pts(row['diff_ci_low'], row['diff_ci_high'], True)}"


def verdict(report: Report) -> str:
    """The report's first line: whether the positive control shows that the study can detect a real
    effect (dsts/report/verdicts.py), with the numbers, or what failed."""
    c, alpha = report.control, report.alpha
    first, second = CONTROL
    if c.missing:
        return (
            f"The study is broken: its positive control ({first} vs {second}) cannot be checked, "
            f"{c.missing}, so nothing shows that it can detect a real effect."
        )
    failures = []
    rotation, spatial = c.rotation, c.spatial
    if rotation is None:
        failures.append(
            f"no run recorded the within-pair accuracy on {CONTROL_CUE} (test/pair/{CONTROL_CUE})"
        )
    elif not c.detected:
        failures.append(
            f"{first} is not significantly worse than {second} on {CONTROL_CUE} ({_test(rotation, alpha)})"
        )
    if spatial is None:
        failures.append(
            "no run recorded the within-pair accuracy on the spatial cues (test/pair/spatial_cue)"
        )
    elif not c.spatial_within_mdd:
        failures.append(
            f"on the spatial cues its difference from {second} ({_interval(spatial, alpha)}) is not within "
            f"± the detectable difference ({pts(spatial['mdd'])} points)"
        )
    if failures:
        return "The study is broken: " + "; ".join(failures) + "."
    return (
        f"The study can detect a real effect: its positive control {first} is {pts(-rotation['diff'])} points "
        f"below {second} on {CONTROL_CUE} ({_test(rotation, alpha, diff=False)}), and on the spatial cues its difference, "
        f"{_interval(spatial, alpha)}, lies within ± the detectable difference of {pts(spatial['mdd'])} points."
    )


def _comparison_sentence(
    c: Mapping[str, Any], mca: Mapping[str, Any] | None, alpha: float, family: int
) -> str:
    name = f"{c['first']} vs {c['second']}"
    n = c["n_pairs"]
    if n == 0:
        return f"{name}: no seed in common, no comparison."
    if n < 2:
        return f"{name}: {pts(c['diff'], True)} points top-1 from a single paired seed; no test is possible with n=1."
    sign_flip = f", exact sign-flip p={pval(c['p_sign_flip'])}" if math.isfinite(c["p_sign_flip"]) else ""
    text = (
        f"{name}: {pts(c['diff'], True)} points top-1 ({level(alpha)} CI {ci_pts(c['diff_ci_low'], c['diff_ci_high'], True)}, "
        f"paired t p={pval(c['p_value'])}{sign_flip}, n={n}): "
    )
    if c["p_value"] < alpha:
        text += f"significant at α={alpha:g} ({'higher' if c['diff'] > 0 else 'lower'})"
        if family > 1 and not c["p_holm"] < alpha:
            text += f", but not after Holm's correction over {family} comparisons (p={pval(c['p_holm'])})"
    else:
        text += f"no significant difference at α={alpha:g}"
    if math.isfinite(c["mdd"]):
        text += f"; the smallest difference this run could detect is {pts(c['mdd'])} points"
    if mca is not None and mca["n_pairs"] >= 2:
        verdict = "significant" if mca["p_value"] < alpha else "not significant"
        text += (
            f". Mean class accuracy: {pts(mca['diff'], True)} points (p={pval(mca['p_value'])}, {verdict})"
        )
    return text + "."


def _rows_of(report: Report, metric: str = "top1") -> dict[tuple[str, str], dict[str, Any]]:
    rows = report.comparisons[report.comparisons["metric"] == metric].to_dict("records")
    return {(c["first"], c["second"]): c for c in rows}


def power_sentences(report: Report) -> list[str]:
    """One sentence per paper comparison: its smallest detectable top-1 difference against the
    study's target."""
    rows, target = _rows_of(report), f"{100 * TARGET_MDD:g}-point target"
    out = []
    for pair in PAPER_COMPARISONS:
        name, c = f"{pair[0]} vs {pair[1]}", rows.get(pair)
        if c is None:
            why = (
                "a variant is not among the variants"
                if pair in report.skipped
                else "not in report.comparisons"
            )
            out.append(f"Power, {name}: not compared ({why}), so the {target} cannot be checked.")
        elif not math.isfinite(c["mdd"]):
            out.append(
                f"Power, {name}: no detectable difference with n={c['n_pairs']} paired seeds, so the {target} "
                "cannot be checked."
            )
        else:
            met = (
                "the target is met"
                if c["mdd"] <= TARGET_MDD
                else "the target is not met: it needs more seeds"
            )
            out.append(
                f"Power, {name}: the smallest top-1 difference detectable with power {report.power:g} at "
                f"α={report.alpha:g} (n={c['n_pairs']}) is {pts(c['mdd'])} points, against a {target}: {met}."
            )
    return out


def cue_sentences(report: Report) -> list[str]:
    """Per cue attribute: which variants learned it above chance (one-sample t against 50%)."""
    alpha, out = report.alpha, []
    rows = report.ablation.to_dict("records")
    for a in report.attributes:
        mean, p = f"pair_{a}_mean", f"pair_{a}_p_value"
        learned = [r for r in rows if r[mean] > CHANCE and r[p] < alpha]
        tested = [r for r in rows if math.isfinite(r[p])]
        if learned:
            who = ", ".join(f"{r['variant']} ({pts(r[mean])}%, p={pval(r[p])})" for r in learned)
            out.append(f"{a}: learned above 50% (one-sample t against 50%, p < {alpha:g}) by {who}.")
        elif tested:
            best = max(tested, key=lambda r: r[mean])
            out.append(
                f"{a}: no variant learned it above 50% at p < {alpha:g} (highest: {best['variant']}, "
                f"{pts(best[mean])}%, p={pval(best[p])})."
            )
        else:
            out.append(f"{a}: no variant has 2 seeds to test against 50%.")
    return out


def tie_sentences(report: Report) -> list[str]:
    """The tests whose seeds agreed to the last digit: with a spread of 0 a t-based interval has no
    width, the t-test's p-value is 0 and the detectable difference is 0, which says that the seeds
    agreed, not that the difference is certain (accuracies are discrete, so few seeds can tie)."""
    paired = [
        f"{c['first']} − {c['second']} on {c['metric']}"
        for c in report.comparisons.to_dict("records")
        if c["n_pairs"] >= 2 and c["diff_sd"] <= TIED
    ]
    cues = [
        f"{r['variant']} on {a}"
        for r in report.ablation.to_dict("records")
        for a in report.attributes
        if r.get(f"pair_{a}_n", 0) >= 2 and r[f"pair_{a}_ci_high"] - r[f"pair_{a}_ci_low"] <= TIED
    ]
    out = []
    if paired:
        out.append(
            f"The paired differences are equal on every seed for {', '.join(paired)}: their spread is 0, so their "
            "interval has no width and their p-value and detectable difference are 0. The seeds agreed; "
            "that does not make the difference certain."
        )
    if cues:
        out.append(
            f"The within-pair accuracy is equal on every seed for {', '.join(cues)}: its interval has no width "
            "and its p-value against 50% is 0, for the same reason."
        )
    return out


def convergence_sentences(report: Report) -> list[str]:
    """Each run flagged as not converged by name, the runs whose convergence is unknown, or that
    every run converged."""
    runs = report.runs.to_dict("records")
    limit = pts(GAIN_LIMIT)
    # two decimals: one validation clip moves top-1 by a fraction of a point, and a gain of 1.04
    # points (flagged) must not read as the limit itself
    out = [
        f"Not converged: {r['variant']}/seed{r['seed']} gained {pts(r['val_gain'], digits=2)} points of validation "
        f"top-1 from epoch {r['gain_from']} to epoch {r['gain_to']} (the least-squares line through those epochs), "
        f"more than {limit} point over the last quarter of its epochs"
        + (
            f"; its sampling sd is {pts(r['val_gain_sd'], digits=2)} points."
            if math.isfinite(r["val_gain_sd"])
            else "."
        )
        for r in runs
        if r["converged"] == 0
    ]
    unknown = [f"{r['variant']}/seed{r['seed']}" for r in runs if math.isnan(r["converged"])]
    if unknown:
        out.append(
            f"Convergence unknown (no val/top1 at every epoch of the last quarter in history.csv): {', '.join(unknown)}."
        )
    if not out and runs:
        largest = max(r["val_gain"] for r in runs)
        out.append(
            f"Every run converged: none gained more than {limit} points of validation top-1 over the last "
            f"quarter of its epochs (the largest gain: {pts(largest, True)} points)."
        )
    return out


def epochs_sentence(report: Report) -> str:
    """Whether the variants trained for the same number of epochs."""
    table = report.ablation
    spans = {
        r["variant"]: (
            f"{r['epochs_min']:g}"
            if r["epochs_min"] == r["epochs_max"]
            else f"{r['epochs_min']:g}–{r['epochs_max']:g}"
        )
        for r in table.to_dict("records")
    }
    if len(set(spans.values())) == 1 and "–" not in next(iter(spans.values())):
        return f"Every run trained for {next(iter(spans.values()))} epochs."
    listed = ", ".join(f"{v} {span}" for v, span in spans.items())
    return f"The variants trained for different numbers of epochs: {listed}."


def _significance(mean: float, p: float, n: float, alpha: float, up: str, down: str, none: str) -> str:
    if n < 2:
        return f"{none} (n={n:g}: no test)"
    if p < alpha:
        return f"{up if mean > 0 else down} (p={pval(p)})"
    return f"{none} (p={pval(p)}, not significant at α={alpha:g})"


def _routing_parts(row: Mapping[str, Any], alpha: float) -> list[str]:
    first, last = row["selection_entropy_first"], row["selection_entropy_last"]
    parts = []
    if math.isfinite(first) and math.isfinite(last):
        change = _significance(
            row["entropy_drop_mean"],
            row["entropy_drop_p_value"],
            row["entropy_drop_n"],
            alpha,
            "sharpened",
            "broadened",
            "did not change significantly",
        )
        parts.append(
            f"the training-time selection {change}: normalized selection entropy {num(first, 2)} at the first "
            f"epoch, {num(last, 2)} at the last"
        )
    else:
        parts.append("no training-time routing recorded")
    if math.isfinite(row["agreement_last"]):
        parts.append(
            f"at the last epoch training sampled the neuron evaluation would choose for {pts(row['agreement_last'])}% "
            "of its samples"
        )
    nmi = _significance(
        row["nmi_mean"], row["nmi_p_value"], row["nmi_n"], alpha, "above 0", "below 0", "not shown above 0"
    )
    parts.append(f"class–neuron NMI at evaluation {num(row['nmi_mean'])}, {nmi}")
    return parts


def specialization_sentence(row: Mapping[str, Any], alpha: float) -> str:
    """What happened in one DSTS variant, from its means over layers and seeds: whether the selection
    sharpened, how often training and evaluation routing agree, whether routing depends on the class,
    and whether temporal-cue classes use the temporal operator more than spatial-cue classes."""
    one = row["num_neurons"] == 1  # 0: the run recorded no usage per neuron
    parts = ["one neuron per layer: nothing is routed"] if one else _routing_parts(row, alpha)
    if math.isfinite(row["tf_temporal_cue"]) and math.isfinite(row["tf_spatial_cue"]):
        gap = _significance(
            row["cue_gap_mean"],
            row["cue_gap_p_value"],
            row["cue_gap_n"],
            alpha,
            "more",
            "less",
            "no differently",
        )
        parts.append(
            f"temporal-cue classes chose the temporal operator for {pts(row['tf_temporal_cue'])}% of the gate bits "
            f"and spatial-cue classes for {pts(row['tf_spatial_cue'])}% (gap {pts(row['cue_gap_mean'], True)} "
            f"points, {level(alpha)} CI {ci_pts(row['cue_gap_ci_low'], row['cue_gap_ci_high'], True)}): "
            f"temporal-cue classes use it {gap}"
        )
    else:
        parts.append("no temporal-operator share recorded (its neurons have no gates)")
    if math.isfinite(row["collapse_layers"]) and row["collapse_layers"] > 0:
        parts.append(
            f"routing collapsed (one neuron above 90% of the samples) in {row['collapse_layers']:.2g} of "
            f"{row['num_layers']} layers on average over seeds"
        )
    return f"{row['variant']}: " + "; ".join(parts) + "."


def findings(report: Report) -> list[str]:
    """The findings, one sentence (or two) per line, from the numbers only."""
    lines: list[str] = []
    alpha, n_seeds = report.alpha, len(report.seeds)
    if n_seeds < 2:
        lines.append(
            "One seed per variant: no confidence interval or test is possible; differences below are single runs."
        )
    sds = report.ablation["top1_sd"].dropna()
    if len(sds):
        lines.append(
            f"Seed-to-seed standard deviation of top-1: {pts(sds.min())} to {pts(sds.max())} points across variants."
        )
    if 2 <= n_seeds <= SIGN_FLIP_MAX_N:
        floor = 2.0 ** (1 - n_seeds)
        lines.append(
            f"With n={n_seeds} paired seeds the exact sign-flip test cannot give p below {pval(floor)}"
            + (f", so it can never reach α={alpha:g}." if floor >= alpha else ".")
        )
    top1, mca = _rows_of(report), _rows_of(report, "mca")
    tested = sum(1 for c in top1.values() if math.isfinite(c["p_value"]))
    lines += [_comparison_sentence(c, mca.get(pair), alpha, tested) for pair, c in top1.items()]
    lines += [
        f"Not compared: {a} vs {b} ({', '.join(v for v in (a, b) if v not in report.variants)} not among the variants)."
        for a, b in report.skipped
    ]
    lines += power_sentences(report)
    lines += tie_sentences(report)
    lines += cue_sentences(report)
    lines += convergence_sentences(report)
    return lines
