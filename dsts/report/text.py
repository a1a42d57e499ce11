"""``ablation.md``: the verdict of the positive control on its first line, then the report's tables
in markdown and its findings, sentences computed from the numbers of
:class:`dsts.report.tables.Report` only (dsts/report/findings.py). Accuracies read in percentage
points; an undefined value reads "n/a", never "nan"."""

from __future__ import annotations

import math
from typing import Any

from dsts.report.findings import epochs_sentence, findings, specialization_sentence, verdict
from dsts.report.fmt import ci_pts, count, level, md_table, num, pts, pval
from dsts.report.tables import Report
from dsts.report.verdicts import CHANCE, CONTROL, CONTROL_CUE, GAIN_LIMIT, TARGET_MDD

__all__ = ["environment_warning", "render_markdown"]

METRIC_NAMES = {
    "top1": "top-1",
    "mca": "mean class acc",
    "top1_spatial_cue": "top-1, spatial-cue classes",
    "top1_temporal_cue": "top-1, temporal-cue classes",
}


def _config_cells(c: dict[str, Any]) -> list[str]:
    dsts = bool(c.get("dsts"))
    return [
        "yes" if dsts else "no",
        str(c.get("num_neurons", "")) if dsts else "",
        str(c.get("specialization", "")) if dsts else "",
        str(c.get("udl", "no")),
        str(c.get("updates_per_step", "")),
    ]


def _variants_section(report: Report) -> list[str]:
    header = ["variant", "epochs"]
    if report.configs:
        header += ["DSTS", "neurons", "specialization", "UDL", "updates/step"]
    rows = []
    for r in report.ablation.to_dict("records"):
        low, high = r["epochs_min"], r["epochs_max"]
        cells = [r["variant"], f"{low:g}" if low == high else f"{low:g}–{high:g}"]
        if report.configs:
            cells += _config_cells(report.configs.get(r["variant"], {}))
        rows.append(cells)
    return ["## Variants", "", md_table(header, rows), "", epochs_sentence(report), ""]


def _mean_sd(r: dict[str, Any], metric: str) -> str:
    return f"{pts(r[f'{metric}_mean'])} ± {pts(r[f'{metric}_sd'])}"


def _accuracy_section(report: Report, lvl: str) -> list[str]:
    table = report.ablation
    topk = [
        c
        for c in table
        if c.startswith("top") and c.endswith("_mean") and c[3:-5].isdigit() and c != "top1_mean"
    ]
    header = ["variant", "n", "top-1 mean ± sd", f"top-1 {lvl} CI", "mean class acc ± sd", f"{lvl} CI"]
    header += ["top-1 spatial-cue", "top-1 temporal-cue", *(f"top-{c[3:-5]}" for c in topk)]
    rows = [
        [
            r["variant"],
            str(r["n_seeds"]),
            _mean_sd(r, "top1"),
            ci_pts(r["top1_ci_low"], r["top1_ci_high"]),
            _mean_sd(r, "mca"),
            ci_pts(r["mca_ci_low"], r["mca_ci_high"]),
            _mean_sd(r, "top1_spatial_cue"),
            _mean_sd(r, "top1_temporal_cue"),
            *(pts(r[c]) for c in topk),
        ]
        for r in table.to_dict("records")
    ]
    return [
        "## Accuracy",
        "",
        "Top-1 on the test clips of spatial-cue and of temporal-cue classes: mean ± sd over seeds.",
        "",
        md_table(header, rows),
        "",
        "![top-1 with confidence intervals](top1_ci.png)",
        "",
        "![mean class accuracy with confidence intervals](mca_ci.png)",
        "",
    ]


def _cues_section(report: Report, lvl: str) -> list[str]:
    out = [
        "## Cues learned",
        "",
        "Within-pair accuracy: the share of a paired class's test clips scored above its partner class, "
        f"which differs from it in one attribute (chance {pts(CHANCE)}%); `spatial_cue` and `temporal_cue` "
        f"pool the attributes of each kind. Each cell: mean over seeds, {lvl} CI, and the p-value of a "
        "one-sample t-test against 50%.",
        "",
    ]
    if not report.attributes:
        return [*out, "No run recorded a within-pair accuracy (test/pair/...).", ""]
    rows = [
        [
            r["variant"],
            *(
                f"{pts(r[f'pair_{a}_mean'])} {ci_pts(r[f'pair_{a}_ci_low'], r[f'pair_{a}_ci_high'])} "
                f"p={pval(r[f'pair_{a}_p_value'])}"
                for a in report.attributes
            ),
        ]
        for r in report.ablation.to_dict("records")
    ]
    return [*out, md_table(["variant", *report.attributes], rows), ""]


def _comparisons_section(report: Report, lvl: str) -> list[str]:
    out = [
        "## Paired comparisons",
        "",
        "Each pair of `report.comparisons` in the params: difference = first − second, paired by seed; "
        "Holm's adjustment over the pairs compared on one metric. Cue attributes: within-pair accuracies.",
        "",
    ]
    if not report.pairs:
        out += ["No comparison: no pair of report.comparisons has both its variants among the variants.", ""]
    header = ["metric", "n", "Δ points", f"{lvl} CI", "paired t p", "Holm p", "sign-flip p", "MDD points"]
    for first, second in report.pairs:
        mine = report.comparisons[
            (report.comparisons["first"] == first) & (report.comparisons["second"] == second)
        ]
        rows = [
            [
                METRIC_NAMES.get(c["metric"], c["metric"]),
                str(c["n_pairs"]),
                pts(c["diff"], True),
                ci_pts(c["diff_ci_low"], c["diff_ci_high"], True),
                pval(c["p_value"]),
                pval(c["p_holm"]),
                pval(c["p_sign_flip"]),
                pts(c["mdd"]),
            ]
            for c in mine.to_dict("records")
        ]
        out += [f"### {first} − {second}", "", md_table(header, rows), ""]
    return out


def _convergence_section(report: Report) -> list[str]:
    rows = []
    for r in report.ablation.to_dict("records"):
        mine = report.runs[report.runs["variant"] == r["variant"]]
        named = [f"seed{s}" for s, c in zip(mine["seed"], mine["converged"]) if c == 0]
        share = r["converged_share"]
        rows.append(
            [
                r["variant"],
                pts(r["gain_max"], True),
                pts(r["gain_max_sd"]),
                "unknown" if math.isnan(share) else f"{share:.2f}",
                ", ".join(named) or "none",
            ]
        )
    header = [
        "variant",
        "largest late gain (points)",
        "its sampling sd (points)",
        "converged share",
        "not converged",
    ]
    return [
        "## Convergence",
        "",
        "Late gain of a run: the rise of the least-squares line through its validation top-1 over the last "
        f"quarter of its epochs; a gain above {pts(GAIN_LIMIT)} point flags the run as not converged (see Method). "
        "Its sampling sd: how far the gain would move on another draw of as many validation clips.",
        "",
        md_table(header, rows),
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]


def _routing_cells(r: dict[str, Any], nmi: str, collapse: str, gap: str) -> list[str]:
    """The specialization cells shared by the per-variant and the per-layer table."""
    return [
        f"{num(r['selection_entropy_first'], 2)} → {num(r['selection_entropy_last'], 2)}",
        pts(r["agreement_last"]),
        num(r[nmi]),
        num(r["usage_entropy_norm"]),
        num(r[collapse], 2),
        pts(r["tf_temporal_cue"]),
        pts(r["tf_spatial_cue"]),
        pts(r[gap], True),
    ]


def _specialization_tables(report: Report, lvl: str) -> tuple[str, str]:
    """Per variant (means over layers and seeds, with the cue gap's test) and per layer."""
    rows = [
        [
            r["variant"],
            str(r["num_layers"]),
            *_routing_cells(r, "nmi_mean", "collapse_layers", "cue_gap_mean"),
            ci_pts(r["cue_gap_ci_low"], r["cue_gap_ci_high"], True),
            pval(r["cue_gap_p_value"]),
        ]
        for r in report.ablation.to_dict("records")
        if r["num_layers"] > 0
    ]
    per_layer = [
        [e["variant"], str(e["layer"]), *_routing_cells(e, "nmi", "collapse", "cue_gap")]
        for e in report.specialization.to_dict("records")
    ]
    cells = ["selection entropy first → last", "agreement % (last)", "NMI", "usage entropy"]
    header = ["variant", "layers", *cells, "collapsed layers", "temporal % (temporal-cue)"]
    header += ["temporal % (spatial-cue)", "gap points", f"gap {lvl} CI", "gap p"]
    layer_header = ["variant", "layer", *cells, "collapse", "temporal % (t-cue)", "temporal % (s-cue)", "gap"]
    return md_table(header, rows), md_table(layer_header, per_layer)


def _specialization_section(report: Report, lvl: str) -> list[str]:
    out = [
        "## Did specialization happen?",
        "",
        "In training, each DSTS layer samples a neuron from the softmax of its selection logits; evaluation "
        "takes their argmax (docs/method.md §2.2). The trajectories: the normalized entropy of the sampled "
        "distribution, and the share of training samples whose sampled neuron is the argmax, mean over seeds "
        "per epoch. Then, on the test clips: the NMI between class and neuron, and the share of gate bits that "
        "choose the temporal operator on temporal-cue and on spatial-cue classes, whose gap is tested against "
        "0 across seeds. Per run each statistic is averaged over the DSTS layers; tables show means over seeds.",
        "",
        "![routing trajectories](routing.png)",
        "",
    ]
    if not (report.ablation["num_layers"] > 0).any():
        return [*out, "No variant has DSTS layers.", "", "![specialization heatmaps](specialization.png)", ""]
    table, per_layer = _specialization_tables(report, lvl)
    sentences = [
        specialization_sentence(r, report.alpha)
        for r in report.ablation.to_dict("records")
        if r["num_layers"] > 0
    ]
    return [
        *out,
        table,
        "",
        *(f"- {s}" for s in sentences),
        "",
        "Per layer (means over seeds; collapse: share of seeds whose layer collapsed):",
        "",
        per_layer,
        "",
        "![specialization heatmaps](specialization.png)",
        "",
    ]


def _cost_section(report: Report) -> list[str]:
    rows = [
        [
            r["variant"],
            count(r["num_parameters"]),
            num(r["flops_per_clip"] / 1e9, 3),
            num(r["latency_ms"], 1),
            num(r["train_seconds_mean"], 1),
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
        md_table(header, rows),
        "",
    ]


def _method_section(report: Report) -> list[str]:
    first, second = CONTROL
    return [
        "## Method",
        "",
        f"- CI: mean ± t_(1-α/2, n-1) · sd / √n with sd over seeds (ddof 1), α={report.alpha:g}.",
        "- Paired t-test: differences d = first − second over the seeds both variants share; "
        "t = mean(d) / (sd(d)/√n), two-sided, n-1 degrees of freedom (scipy.stats). All-equal differences: "
        "p = 1 if they are 0, else 0. The pairs are `report.comparisons` of the params.",
        "- Holm: step-down adjustment over the pairs compared on one metric (for top-1, the family of the "
        "study's top-1 comparisons).",
        "- Sign-flip p: exact, over all 2^n sign patterns of the differences (smallest possible value 2^(1-n)).",
        f"- MDD (smallest detectable difference): the true mean difference at which the paired t-test at level α "
        f"rejects with probability {report.power:g}, at the measured sd(d): the exact power from the noncentral "
        't distribution, as R\'s power.t.test(type = "paired", strict = FALSE) computes it. The paper '
        f"comparisons should detect {100 * TARGET_MDD:g} points of top-1.",
        "- Within-pair accuracy (`test/pair/<attribute>`): the share of a paired class's clips scored above "
        "its partner class (a tie counts half), chance 50%; tested against 50% by a one-sample t-test over seeds.",
        f"- Positive control: {first} is detected when it is worse than {second} on {CONTROL_CUE} at paired "
        f"t p < α (unadjusted), and its `spatial_cue` difference from {second} must have its CI within "
        "± its MDD. Either failure makes the report's first line say that the study is broken.",
        "- Convergence: with E the last epoch of a run and q = max(1, floor(E/4 + 1/2)) (a quarter of the "
        "epochs, rounded half up), the late gain is the rise over q epochs of the least-squares line through "
        f"val/top1 at epochs E − q to E (for q = 1, their difference). A gain above {pts(GAIN_LIMIT)} point "
        "flags the run; the converged share of a variant is the share of its seeds not flagged, undefined "
        "when a run lacks val/top1 at one of those epochs. The gain is the mean over the n validation clips "
        "of each clip's own gain g_i (the line's weights applied to whether the clip was right at each "
        "epoch, `val_correct.csv`), so its sampling sd is sd(g_i)/√n.",
        "- Routing: the selection sharpened (or broadened) when the per-seed fall of the normalized selection "
        "entropy from the first to the last epoch differs from 0 at α (one-sample t); NMI and the cue gap are "
        "tested against 0 the same way.",
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
    out += [md_table(["runs", "e.g.", *FINGERPRINT], rows), ""]
    warning = environment_warning(report)
    return out + ([f"**{warning}**", ""] if warning else [])


def render_markdown(report: Report) -> str:
    """``ablation.md``: the control's verdict first, then every table and finding, generated from
    the numbers only."""
    lvl = level(report.alpha)
    out = [
        "# DSTS-Bench ablation report",
        "",
        verdict(report),
        "",
        f"{len(report.variants)} variants × seeds {', '.join(map(str, report.seeds))}. Accuracies in percent; "
        f"{lvl} confidence intervals are t-based over seeds; comparisons pair runs by seed. "
        "Generated by `python -m pipeline.report` from the run files; every sentence below is computed from them.",
        "",
    ]
    warning = environment_warning(report)
    if warning:
        out += [f"**{warning}**", ""]
    out += _variants_section(report)
    out += _accuracy_section(report, lvl)
    out += _cues_section(report, lvl)
    out += _comparisons_section(report, lvl)
    out += _convergence_section(report)
    out += _specialization_section(report, lvl)
    out += _cost_section(report)
    out += ["## Findings", "", *(f"- {line}" for line in findings(report)), ""]
    out += _environment_section(report)
    out += _method_section(report)
    return "\n".join(out)
