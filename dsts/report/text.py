"""``ablation.md``: the report's tables in markdown and its findings, sentences computed from the
numbers of :class:`dsts.report.tables.Report` only. Accuracies read in percentage points; an
undefined value reads "n/a", never "nan"."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from dsts.report.tables import REFERENCES, Report
from dsts.stats import SIGN_FLIP_MAX_N

__all__ = ["findings", "render_markdown"]


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


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _count(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x / 1e6:.2f} M" if x >= 1e5 else f"{int(round(x))}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of already formatted cells (tabulate's number parsing off)."""
    return pd.DataFrame(list(rows), columns=list(header)).to_markdown(index=False, disable_numparse=True)


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
        f"{name}: {_pts(c['diff'], True)} points top-1 ({_level(alpha)} CI {_ci_pts(c['diff_ci_low'], c['diff_ci_high'], True)}, "
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


def _specialization_sentences(row: Mapping[str, Any], alpha: float) -> list[str]:
    v, lines = row["variant"], []
    if math.isfinite(row["tf_temporal_cue"]) and math.isfinite(row["tf_spatial_cue"]):
        text = (
            f"{v}: the temporal operator takes {_pts(row['tf_temporal_cue'])}% of the gate bits on temporal-cue "
            f"classes and {_pts(row['tf_spatial_cue'])}% on spatial-cue classes (gap {_pts(row['cue_gap_mean'], True)} points"
        )
        if row["cue_gap_n"] >= 2:
            significant = row["cue_gap_p_value"] < alpha
            verdict = f"significant at α={alpha:g}" if significant else f"no significant gap at α={alpha:g}"
            text += (
                f", {_level(alpha)} CI {_ci_pts(row['cue_gap_ci_low'], row['cue_gap_ci_high'], True)}, "
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
            f"Seed-to-seed standard deviation of top-1: {_pts(sds.min())} to {_pts(sds.max())} points across variants."
        )
    if 2 <= n_seeds <= SIGN_FLIP_MAX_N:
        floor = 2.0 ** (1 - n_seeds)
        lines.append(
            f"With n={n_seeds} paired seeds the exact sign-flip test cannot give p below {_p(floor)}"
            + (f", so it can never reach α={alpha:g}." if floor >= alpha else ".")
        )
    comparisons = report.comparisons.to_dict("records")
    by_key = {(c["metric"], c["variant"], c["reference"]): c for c in comparisons}
    for ref in report.references:
        family = [c for c in comparisons if c["metric"] == "top1" and c["reference"] == ref]
        tested = sum(1 for c in family if math.isfinite(c["p_value"]))
        for c in family:
            lines.append(_comparison_sentence(c, by_key.get(("mca", c["variant"], ref)), alpha, tested))
    lines += [
        f"No comparison against {ref}: it is not among the variants."
        for ref in REFERENCES
        if ref not in report.references
    ]
    for row in report.ablation.to_dict("records"):
        if row["num_layers"] > 0:
            lines += _specialization_sentences(row, alpha)
    return lines


def _variants_section(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for v, c in configs.items():
        dsts = bool(c.get("dsts"))
        rows.append(
            [
                v,
                "yes" if dsts else "no",
                str(c.get("num_neurons", "")) if dsts else "",
                str(c.get("specialization", "")) if dsts else "",
                str(c.get("udl", "no")),
                str(c.get("updates_per_step", "")),
            ]
        )
    header = ["variant", "DSTS", "neurons", "specialization", "UDL", "updates/step"]
    return ["## Variants", "", _table(header, rows), ""]


def _accuracy_section(report: Report, level: str) -> list[str]:
    table = report.ablation
    topk = [c for c in table if c.startswith("top") and c.endswith("_mean") and c != "top1_mean"]
    header = ["variant", "n", "top-1 mean ± sd", f"top-1 {level} CI", "mean class acc ± sd", f"{level} CI"]
    header += [f"top-{c[3:-5]}" for c in topk]
    rows = [
        [
            r["variant"],
            str(r["n_seeds"]),
            f"{_pts(r['top1_mean'])} ± {_pts(r['top1_sd'])}",
            _ci_pts(r["top1_ci_low"], r["top1_ci_high"]),
            f"{_pts(r['mca_mean'])} ± {_pts(r['mca_sd'])}",
            _ci_pts(r["mca_ci_low"], r["mca_ci_high"]),
            *(_pts(r[c]) for c in topk),
        ]
        for r in table.to_dict("records")
    ]
    return [
        "## Accuracy",
        "",
        _table(header, rows),
        "",
        "![top-1 with confidence intervals](top1_ci.png)",
        "",
        "![mean class accuracy with confidence intervals](mca_ci.png)",
        "",
    ]


def _comparisons_section(report: Report, level: str) -> list[str]:
    out = ["## Paired comparisons", ""]
    if not report.references:
        out += ["No reference variant (" + ", ".join(REFERENCES) + ") among the variants.", ""]
    header = [
        "variant",
        "metric",
        "n",
        "Δ points",
        f"{level} CI",
        "paired t p",
        "Holm p",
        "sign-flip p",
        "MDD points",
    ]
    for ref in report.references:
        rows = [
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
            for c in report.comparisons.to_dict("records")
            if c["reference"] == ref
        ]
        out += [f"### Against `{ref}` (variant minus {ref}, paired by seed)", "", _table(header, rows), ""]
    return out


def _specialization_section(report: Report, level: str) -> list[str]:
    out = [
        "## Specialization",
        "",
        "Per run, each statistic is averaged over the DSTS layers; the table shows the mean over seeds. "
        "Temporal fraction: the share of gate bits that choose the temporal operator, on the test clips "
        "of temporal-cue and of spatial-cue classes; the gap is tested against 0 across seeds.",
        "",
    ]
    rows = [
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
        for r in report.ablation.to_dict("records")
        if r["num_layers"] > 0
    ]
    if not rows:
        return out + ["No variant has DSTS layers.", "", "![specialization heatmaps](specialization.png)", ""]
    entropy, cue = "usage entropy (norm.)", ["temporal % (temporal-cue)", "temporal % (spatial-cue)"]
    header = ["variant", "layers", entropy, "NMI", "collapsed layers", *cue]
    header += ["gap points", f"gap {level} CI", "gap p"]
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
        for e in report.specialization.to_dict("records")
    ]
    layer_header = ["variant", "layer", entropy, "NMI", "collapse"]
    layer_header += ["temporal % (t-cue)", "temporal % (s-cue)", "gap"]
    return out + [
        _table(header, rows),
        "",
        "Per layer (means over seeds; collapse: share of seeds whose layer collapsed):",
        "",
        _table(layer_header, per_layer),
        "",
        "![specialization heatmaps](specialization.png)",
        "",
    ]


def _cost_section(report: Report) -> list[str]:
    rows = [
        [
            r["variant"],
            _count(r["num_parameters"]),
            _num(r["flops_per_clip"] / 1e9, 3),
            _num(r["latency_ms"], 1),
            _num(r["train_seconds_mean"], 1),
        ]
        for r in report.ablation.to_dict("records")
    ]
    header = ["variant", "parameters", "GFLOPs / clip", "CPU latency ms / clip", "train s (mean)"]
    return [
        "## Cost",
        "",
        "Means over seeds of what each run recorded: parameters and FLOPs of one evaluation-mode forward "
        "at batch 1 (torch.utils.flop_counter: 2 per multiply-add) from `metrics.json`; CPU latency, the "
        "median wall time of a few such forwards, from `cost.json` (a timing: it varies with load, and is "
        "not in summary.json); training time from `timing.json`. n/a: not recorded by the run.",
        "",
        _table(header, rows),
        "",
    ]


def _method_section(report: Report) -> list[str]:
    return [
        "## Method",
        "",
        f"- CI: mean ± t_(1-α/2, n-1) · sd / √n with sd over seeds (ddof 1), α={report.alpha:g}.",
        "- Paired t-test: differences d over the seeds both variants share; t = mean(d) / (sd(d)/√n), "
        "two-sided, n-1 degrees of freedom (scipy.stats). All-equal differences: p = 1 if they are 0, else 0.",
        "- Holm: step-down adjustment over the variants compared with one reference, per metric.",
        "- Sign-flip p: exact, over all 2^n sign patterns of the differences (smallest possible value 2^(1-n)).",
        f"- MDD (smallest detectable difference): the true mean difference at which the paired t-test at level α "
        f"rejects with probability {report.power:g}, at the measured sd(d): the exact power from the noncentral "
        't distribution, as R\'s power.t.test(type = "paired", strict = FALSE) computes it.',
        "",
    ]


FINGERPRINT = ("cpu", "cpu_id", "cpu_capability", "threads", "torch", "mkl", "onednn", "setting.portable")


def environment_warning(report: Report) -> str | None:
    """One sentence when the runs came from more than one environment, else None."""
    if len(report.environments) < 2:
        return None
    return (
        f"Warning: the runs were trained in {len(report.environments)} different environments (see "
        "Reproducibility); numbers from different environments need not be byte-identical."
    )


def _environment_section(report: Report) -> list[str]:
    out = ["## Reproducibility", ""]
    if not report.environments:
        return [*out, "No run recorded its environment (environment.json).", ""]
    out.append(
        "The environments the runs were trained in (dsts/portable.py records them in each run's "
        "environment.json); the byte-identical set holds within one environment."
    )
    out.append("")
    rows = [
        [str(len(names)), ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")]
        + [env.get(k, "?") for k in FINGERPRINT]
        for env, names in report.environments
    ]
    out += [_table(["runs", "e.g.", *FINGERPRINT], rows), ""]
    warning = environment_warning(report)
    return out + ([f"**{warning}**", ""] if warning else [])


def render_markdown(report: Report) -> str:
    """``ablation.md``: every table and finding, generated from the numbers only."""
    level = _level(report.alpha)
    out = [
        "# DSTS-Bench ablation report",
        "",
        f"{len(report.variants)} variants × seeds {', '.join(map(str, report.seeds))}. Accuracies in percent; "
        f"{level} confidence intervals are t-based over seeds; comparisons pair runs by seed. "
        "Generated by `python -m pipeline.report` from the run files; every sentence below is computed from them.",
        "",
    ]
    warning = environment_warning(report)
    if warning:
        out += [f"**{warning}**", ""]
    if report.configs:
        out += _variants_section(report.configs)
    out += _accuracy_section(report, level)
    out += _comparisons_section(report, level)
    out += _specialization_section(report, level)
    out += _cost_section(report)
    out += ["## Findings", "", *(f"- {line}" for line in findings(report)), ""]
    out += ["![learning curves](learning_curves.png)", ""]
    out += _environment_section(report)
    out += _method_section(report)
    return "\n".join(out)
