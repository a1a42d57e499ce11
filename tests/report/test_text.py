"""dsts.report.text: ablation.md's sections and findings follow the numbers."""

from __future__ import annotations

import json
import re

from dsts.report.load import load_runs
from dsts.report.tables import build_report
from dsts.report.text import findings, render_markdown
from tests.report.fakes import write_fake_runs, write_runs_with_top1


def make(tmp_path, variants=("baseline", "static", "dsts_udl"), seeds=(0, 1, 2), **run_args):
    write_fake_runs(tmp_path, variants, seeds, **run_args)
    return build_report(load_runs(tmp_path, variants, seeds), variants, seeds)


def from_top1(tmp_path, top1):
    seeds = write_runs_with_top1(tmp_path, top1)
    return build_report(load_runs(tmp_path, list(top1), seeds), list(top1), seeds)


def row(text: str, *cells: str) -> bool:
    """Whether a markdown table row starts with these cells (tabulate pads them)."""
    return re.search(r"^\| " + r" +\| ".join(map(re.escape, cells)) + r" +\|", text, re.MULTILINE) is not None


def test_sections_tables_and_no_nan(tmp_path):
    report = make(tmp_path)
    report.configs = {"static": {"dsts": True, "num_neurons": 1, "specialization": "st", "udl": "no"}}
    text = render_markdown(report)
    for heading in ("## Variants", "## Accuracy", "## Paired comparisons", "## Specialization", "## Cost"):
        assert heading in text
    assert "## Findings" in text and "## Method" in text
    for v in report.variants:
        assert row(text, v)
    assert row(text, "static", "yes", "1", "st", "no")
    udl = report.ablation.iloc[2]
    assert row(text, "dsts_udl", "3", f"{100 * udl['top1_mean']:.1f} ± {100 * udl['top1_sd']:.1f}")
    assert "temporal operator takes" in text and "noncentral t" in text
    assert re.search(r"\bnan\b", text, re.IGNORECASE) is None  # undefined values read "n/a"


def test_cost_table_reads_the_run_files(tmp_path):
    text = render_markdown(make(tmp_path / "a"))
    assert row(text, "static", "0.26 M", "0.250", "4.0", "12.5")  # parameters, GFLOPs, ms, train s
    text = render_markdown(make(tmp_path / "b", latency=None))
    assert row(text, "static", "0.26 M", "0.250", "n/a", "12.5")


def test_findings_follow_the_numbers(tmp_path):
    same = from_top1(tmp_path / "a", {"static": [0.50, 0.60, 0.40], "dsts_udl": [0.52, 0.57, 0.44]})
    text = "\n".join(findings(same))
    assert "dsts_udl vs static: +1.0 points top-1" in text
    assert "no significant difference at α=0.05" in text
    assert "exact sign-flip test cannot give p below 0.250, so it can never reach α=0.05" in text
    apart = from_top1(
        tmp_path / "b", {"static": [0.40, 0.50, 0.45, 0.55, 0.42], "dsts_udl": [0.50, 0.61, 0.54, 0.66, 0.51]}
    )
    c = apart.comparisons.set_index(["metric", "variant"]).loc[("top1", "dsts_udl")]
    assert c["p_value"] < 0.05
    text = "\n".join(findings(apart))
    assert f"dsts_udl vs static: +{100 * c['diff']:.1f} points top-1" in text
    assert "significant at α=0.05 (higher)" in text
    assert f"the smallest difference this run could detect is {100 * c['mdd']:.1f} points" in text
    assert "static vs dsts_udl" in text and "(lower)" in text


def test_holm_caveat(tmp_path):
    report = from_top1(
        tmp_path,
        {
            "static": [0.40, 0.50, 0.45],
            "baseline": [0.35, 0.40, 0.39],  # -5, -10, -6 points: p = 0.045
            "dsts": [0.45, 0.44, 0.49],
            "dsts_3d": [0.41, 0.52, 0.43],
        },
    )
    c = report.comparisons.set_index(["metric", "variant", "reference"]).loc[("top1", "baseline", "static")]
    assert c["p_value"] < 0.05 <= c["p_holm"]
    assert "but not after Holm's correction over 3 comparisons" in "\n".join(findings(report))


def test_single_seed_and_missing_references(tmp_path):
    text = render_markdown(make(tmp_path / "a", seeds=(0,)))
    assert "One seed per variant" in text and "no test is possible with n=1" in text and "n/a" in text
    text = render_markdown(make(tmp_path / "b", variants=("baseline", "dsts")))
    assert "No comparison against dsts_udl" in text and "No comparison against static" in text
    assert "No reference variant (dsts_udl, static) among the variants." in text
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
