"""dsts.report.text and dsts.report.findings: ablation.md's first line, sections and sentences
follow the numbers."""

from __future__ import annotations

import json
import re

from dsts.report.findings import findings
from dsts.report.load import load_runs
from dsts.report.tables import build_report
from dsts.report.text import render_markdown
from dsts.runs import write_history, write_val_correct
from tests.report.fakes import write_fake_runs, write_runs_with, write_runs_with_top1

ALL = ("baseline", "shuffled", "static", "dsts_3d", "dsts", "dsts_udl")
CONTROL = {  # shuffled: 29 points worse on rotation (diffs -30, -27, -30), spatial diffs +1, -1, 0
    "baseline": {"test/pair/rotation": [0.80, 0.82, 0.78], "test/pair/spatial_cue": [0.70, 0.75, 0.72]},
    "shuffled": {"test/pair/rotation": [0.50, 0.55, 0.48], "test/pair/spatial_cue": [0.71, 0.74, 0.72]},
}


def make(tmp_path, variants=ALL, seeds=(0, 1, 2), **run_args):
    write_fake_runs(tmp_path, variants, seeds, **run_args)
    return build_report(load_runs(tmp_path, variants, seeds), variants, seeds)


def from_values(tmp_path, values, **kw):
    seeds = write_runs_with(tmp_path, values)
    return build_report(load_runs(tmp_path, list(values), seeds), list(values), seeds, **kw)


def from_top1(tmp_path, top1, **kw):
    seeds = write_runs_with_top1(tmp_path, top1)
    return build_report(load_runs(tmp_path, list(top1), seeds), list(top1), seeds, **kw)


def first_line(report) -> str:
    lines = render_markdown(report).splitlines()
    assert lines[:2] == ["# DSTS-Bench ablation report", ""] and lines[3] == ""
    return lines[2]


def row(text: str, *cells: str) -> bool:
    """Whether a markdown table row starts with these cells (tabulate pads them)."""
    return re.search(r"^\| " + r" +\| ".join(map(re.escape, cells)) + r" +\|", text, re.MULTILINE) is not None


def test_a_detected_control_is_the_first_line(tmp_path):
    assert first_line(from_values(tmp_path, CONTROL)) == (
        "The study can detect a real effect: its positive control shuffled is 29.0 points below baseline on "
        "rotation (paired t p=0.001 at α=0.05, n=3), and on the spatial cues its difference, +0.0 points, "
        "95% CI [-2.5, +2.5], lies within ± the detectable difference of 3.3 points."
    )


def test_a_control_that_fails_says_the_study_is_broken(tmp_path):
    same = dict(CONTROL, shuffled=dict(CONTROL["shuffled"], **{"test/pair/rotation": [0.81, 0.80, 0.79]}))
    assert first_line(from_values(tmp_path / "a", same)) == (
        "The study is broken: shuffled is not significantly worse than baseline on rotation (+0.0 points, "
        "paired t p=1.000 at α=0.05, n=3)."
    )
    off = dict(CONTROL, shuffled=dict(CONTROL["shuffled"], **{"test/pair/spatial_cue": [0.73, 0.79, 0.77]}))
    assert first_line(from_values(tmp_path / "b", off)) == (
        "The study is broken: on the spatial cues its difference from baseline (+4.0 points, 95% CI "
        "[+1.5, +6.5]) is not within ± the detectable difference (3.3 points)."
    )
    both = {"baseline": CONTROL["baseline"], "shuffled": off["shuffled"] | same["shuffled"]}
    both["shuffled"]["test/pair/spatial_cue"] = off["shuffled"]["test/pair/spatial_cue"]
    line = first_line(from_values(tmp_path / "c", both))
    assert (
        line.startswith("The study is broken: shuffled is not significantly worse")
        and "; on the spatial" in line
    )
    assert first_line(make(tmp_path / "d", variants=("baseline", "dsts"))) == (
        "The study is broken: its positive control (shuffled vs baseline) cannot be checked, shuffled not among "
        "the variants, so nothing shows that it can detect a real effect."
    )
    one = first_line(make(tmp_path / "e", variants=("baseline", "shuffled"), seeds=(0,)))
    assert one.startswith(
        "The study is broken: shuffled is not significantly worse than baseline on rotation ("
    )
    assert "n=1 paired seed: no test is possible" in one


def test_sections_tables_and_no_nan(tmp_path):
    report = make(tmp_path)
    report.configs = {"static": {"dsts": True, "num_neurons": 1, "specialization": "st", "udl": "no"}}
    text = render_markdown(report)
    for heading in (
        "## Variants",
        "## Accuracy",
        "## Cues learned",
        "## Paired comparisons",
        "## Convergence",
    ):
        assert heading in text
    for heading in ("## Did specialization happen?", "## Cost", "## Findings", "## Method"):
        assert heading in text
    for pair in ("dsts − baseline", "dsts − dsts_3d", "dsts_udl − dsts", "shuffled − baseline"):
        assert f"### {pair}" in text
    assert row(text, "static", "3", "yes", "1", "st", "no")
    assert row(text, "baseline", "3", "no", "", "", "no", "")  # no config of its own: the defaults
    udl = report.ablation.set_index("variant").loc["dsts_udl"]
    assert row(text, "dsts_udl", "3", f"{100 * udl['top1_mean']:.1f} ± {100 * udl['top1_sd']:.1f}")
    assert "![routing trajectories](routing.png)" in text and "noncentral t" in text
    assert text.index("routing.png") < text.index("dsts: the training-time selection")  # next to it
    assert "q = max(1, floor(E/4 + 1/2))" in text  # the convergence definition
    assert re.search(r"\bnan\b", text, re.IGNORECASE) is None  # undefined values read "n/a"


def test_cues_learned(tmp_path):
    values = {
        "dsts": {"test/pair/rotation": [0.60, 0.62, 0.64], "test/pair/facing": [0.52, 0.48, 0.50]},
        "baseline": {"test/pair/rotation": [0.50, 0.50, 0.50], "test/pair/facing": [0.55, 0.45, 0.50]},
    }
    report = from_values(tmp_path, values)
    text = render_markdown(report)
    assert row(text, "dsts", "62.0 [57.0, 67.0] p=0.009")  # t = 0.12 / (0.02/√3) on 2 df
    lines = findings(report)
    assert (
        "rotation: learned above 50% (one-sample t against 50%, p < 0.05) by dsts (62.0%, p=0.009)." in lines
    )
    assert "facing: no variant learned it above 50% at p < 0.05 (highest: dsts, 50.0%, p=1.000)." in lines


def test_comparison_sentences_follow_the_numbers(tmp_path):
    same = from_top1(tmp_path / "a", {"dsts": [0.50, 0.60, 0.40], "baseline": [0.52, 0.57, 0.44]})
    text = "\n".join(findings(same))
    assert "dsts vs baseline: -1.0 points top-1" in text and "no significant difference at α=0.05" in text
    assert "exact sign-flip test cannot give p below 0.250, so it can never reach α=0.05" in text
    assert "Not compared: dsts vs dsts_3d (dsts_3d not among the variants)." in text
    apart = from_top1(tmp_path / "b", {"dsts": [0.50, 0.55, 0.60], "baseline": [0.40, 0.44, 0.51]})
    text = "\n".join(findings(apart))
    assert "dsts vs baseline: +10.0 points top-1 (95% CI [+7.5, +12.5], paired t p=0.003" in text
    assert (
        "significant at α=0.05 (higher); the smallest difference this run could detect is 3.3 points" in text
    )


def test_holm_caveat_over_the_top1_family(tmp_path):
    report = from_top1(
        tmp_path,
        {
            "dsts": [0.40, 0.50, 0.45],
            "baseline": [0.35, 0.40, 0.39],  # +5, +10, +6 points: p = 0.045
            "dsts_3d": [0.45, 0.44, 0.49],
            "dsts_udl": [0.41, 0.52, 0.43],
        },
    )
    c = report.comparisons.set_index(["metric", "first", "second"]).loc[("top1", "dsts", "baseline")]
    assert c["p_value"] < 0.05 <= c["p_holm"]
    assert "but not after Holm's correction over 3 comparisons" in "\n".join(findings(report))


def test_power_against_the_five_point_target(tmp_path):
    report = from_top1(
        tmp_path,
        {"dsts": [0.50, 0.55, 0.60], "baseline": [0.40, 0.44, 0.51], "dsts_3d": [0.49, 0.50, 0.64]},
    )
    lines = findings(report)
    assert (
        "Power, dsts vs baseline: the smallest top-1 difference detectable with power 0.8 at α=0.05 (n=3) is "
        "3.3 points, against a 5-point target: the target is met." in lines
    )
    not_met = [line for line in lines if line.startswith("Power, dsts vs dsts_3d:")]
    assert len(not_met) == 1 and not_met[0].endswith("the target is not met: it needs more seeds.")
    assert (
        "Power, dsts_udl vs dsts: not compared (a variant is not among the variants), so the 5-point target cannot be checked."
        in lines
    )
    report = from_top1(tmp_path / "b", {"dsts": [0.5, 0.6, 0.7], "baseline": [0.4, 0.5, 0.6]}, comparisons=[])
    assert (
        "Power, dsts vs baseline: not compared (not in report.comparisons), so the 5-point target cannot be checked."
        in findings(report)
    )


def test_a_gain_just_above_the_limit_reads_as_above_it(tmp_path):
    """4 of 384 validation clips over the last quarter: 1.04 points, flagged; one decimal would print
    the limit itself."""
    write_fake_runs(tmp_path, ["dsts"], (0,))
    curve = (0.5, 0.6, 0.76, 0.76 + 4 / 384)
    write_history(
        tmp_path / "dsts" / "seed0" / "history.csv",
        [{"epoch": e, "val/top1": x} for e, x in enumerate(curve, start=1)],
    )
    lines = findings(build_report(load_runs(tmp_path, ["dsts"], (0,)), ["dsts"], (0,)))
    assert (
        "Not converged: dsts/seed0 gained 1.04 points of validation top-1 from epoch 3 to epoch 4 (the least-squares "
        "line through those epochs), more than 1.0 point over the last quarter of its epochs." in lines
    )


def test_convergence_names_each_flagged_run(tmp_path):
    write_fake_runs(tmp_path, ["baseline", "dsts"], (0, 1))
    history = [
        {"epoch": e, "val/top1": x} for e, x in enumerate((0.2, 0.3, 0.35, 0.38, 0.40, 0.423), start=1)
    ]
    write_history(tmp_path / "dsts" / "seed1" / "history.csv", history)
    # its 1000 validation clips: 380 right from epoch 4 on, 20 more from epoch 5, 23 more at epoch 6,
    # so each clip's own gain over epochs 4 to 6 (the line's weights -1, 0, +1) is 1 for 43 clips
    # and 0 for the rest: sd sqrt(0.043 * 0.957 * 1000 / 999) / sqrt(1000) = 0.64 points
    clips = [f"c{i}@0" for i in range(1000)]
    right = {4: 380, 5: 400, 6: 423}
    rows = [[e, *(int(i < right.get(e, 0)) for i in range(1000))] for e in range(1, 7)]
    write_val_correct(tmp_path / "dsts" / "seed1" / "val_correct.csv", clips, rows)
    write_history(tmp_path / "baseline" / "seed0" / "history.csv", [{"epoch": 1, "train/loss": 1.0}])
    report = build_report(load_runs(tmp_path, ["baseline", "dsts"], (0, 1)), ["baseline", "dsts"], (0, 1))
    lines = findings(report)
    assert (
        "Not converged: dsts/seed1 gained 4.30 points of validation top-1 from epoch 4 to epoch 6 (the least-squares "
        "line through those epochs), more than 1.0 point over the last quarter of its epochs; its sampling sd is "
        "0.64 points." in lines
    )
    assert (
        "Convergence unknown (no val/top1 at every epoch of the last quarter in history.csv): baseline/seed0."
        in lines
    )
    text = render_markdown(report)
    assert row(text, "dsts", "+4.3", "0.6", "0.50", "seed1") and row(
        text, "baseline", "+0.0", "n/a", "unknown", "none"
    )
    assert row(text, "dsts", "3–6") and row(text, "baseline", "1–3")  # the epochs of each variant's runs
    assert "The variants trained for different numbers of epochs: baseline 1–3, dsts 3–6." in text
    converged = findings(make(tmp_path / "b", variants=("baseline",)))
    assert converged[-1].startswith("Every run converged: none gained more than 1.0 points")
    assert "Every run trained for 3 epochs." in render_markdown(make(tmp_path / "c", variants=("baseline",)))


def test_one_sentence_per_variant_says_what_the_routing_did(tmp_path):
    text = render_markdown(make(tmp_path, variants=("static", "dsts_3d", "dsts")))
    sentences = {line[2:].split(":")[0]: line[2:] for line in text.splitlines() if line.startswith("- ")}
    dsts = sentences["dsts"]
    assert dsts.startswith("dsts: the training-time selection sharpened (p=0): normalized selection entropy")
    assert (
        "at the last epoch training sampled the neuron evaluation would choose for 90.0% of its samples"
        in dsts
    )
    assert "class–neuron NMI at evaluation" in dsts and "temporal-cue classes use it" in dsts
    assert sentences["static"].startswith(
        "static: one neuron per layer: nothing is routed; temporal-cue classes"
    )
    assert sentences["dsts_3d"].endswith("no temporal-operator share recorded (its neurons have no gates).")


def test_cost_table_reads_the_run_files(tmp_path):
    text = render_markdown(make(tmp_path / "a", variants=("static",)))
    assert row(text, "static", "0.26 M", "0.250", "4.0", "12.5")  # parameters, GFLOPs, ms, train s
    text = render_markdown(make(tmp_path / "b", variants=("static",), latency=None))
    assert row(text, "static", "0.26 M", "0.250", "n/a", "12.5")


def test_single_seed_and_no_comparison(tmp_path):
    text = render_markdown(make(tmp_path / "a", variants=("baseline", "dsts"), seeds=(0,)))
    assert "One seed per variant" in text and "no test is possible with n=1" in text and "n/a" in text
    text = render_markdown(make(tmp_path / "b", variants=("baseline", "static")))
    assert "No comparison: no pair of report.comparisons has both its variants among the variants." in text
    text = render_markdown(make(tmp_path / "c", variants=("baseline",)))
    assert "No variant has DSTS layers." in text


def test_environments_are_listed_and_a_mix_is_warned(tmp_path):
    variants, seeds = ("baseline", "dsts"), (0, 1)
    write_fake_runs(tmp_path, variants, seeds)
    same = {"cpu": "Xeon", "cpu_capability": "AVX2", "threads": "2", "setting.portable": "true"}
    for v in variants:
        for s in seeds:
            (tmp_path / v / f"seed{s}" / "environment.json").write_text(json.dumps(same))
    text = render_markdown(build_report(load_runs(tmp_path, variants, seeds), variants, seeds))
    assert "## Reproducibility" in text and row(text, "4", "baseline/seed0, baseline/seed1, dsts/seed0 ...")
    assert "Warning" not in text
    other = dict(same, cpu_capability="AVX512", **{"setting.portable": "false"})
    (tmp_path / "dsts" / "seed1" / "environment.json").write_text(json.dumps(other))
    report = build_report(load_runs(tmp_path, variants, seeds), variants, seeds)
    text = render_markdown(report)
    assert text.count("trained in 2 different environments") == 2  # at the top and under Reproducibility
    assert row(text, "1", "dsts/seed1", "Xeon", "?", "AVX512", "2")  # cpu_id not recorded here


def test_equal_differences_on_every_seed_are_named_not_taken_for_certainty(tmp_path):
    tied = from_values(
        tmp_path / "a",
        {
            "dsts": {"test/top1": [0.50, 0.60], "test/pair/rotation": [0.90, 0.90]},
            "baseline": {"test/top1": [0.45, 0.55], "test/pair/rotation": [0.80, 0.85]},
        },
    )
    c = tied.comparisons.set_index(["metric", "first", "second"]).loc[("top1", "dsts", "baseline")]
    assert c["mdd"] < 1e-9 and c["p_value"] < 1e-9  # what a t-test makes of a spread of 0
    text = "\n".join(findings(tied))
    assert "The paired differences are equal on every seed for dsts − baseline on top1" in text
    assert "dsts − baseline on rotation" not in text  # +10 and +5 points: a spread
    assert "The within-pair accuracy is equal on every seed for dsts on rotation" in text
    assert "baseline on rotation" not in text.split("The within-pair accuracy")[1].split("\n")[0]
    apart = from_values(
        tmp_path / "b",
        {"dsts": {"test/top1": [0.50, 0.60]}, "baseline": {"test/top1": [0.45, 0.56]}},
    )
    assert not any("equal on every seed" in line for line in findings(apart))
