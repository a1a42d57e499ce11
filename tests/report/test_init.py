"""dsts.report: make_report and write_report (every output, a failure that leaves the folder as it
was) and a package that imports no model code."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dsts.report as R
from tests.report.fakes import write_fake_runs, write_params

ROOT = Path(__file__).resolve().parents[2]


def test_the_report_imports_no_model_code():
    code = "import sys, dsts.report; print(' '.join(sorted(sys.modules)))"
    modules = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "dsts.report" in modules
    for heavy in ("dsts.engine", "dsts.model", "dsts.module", "dsts.cost", "torch"):
        assert heavy not in modules, heavy


def make(tmp_path, variants=("baseline", "shuffled", "dsts", "dsts_udl"), seeds=(0, 1, 2)):
    write_fake_runs(tmp_path / "runs", variants, seeds)
    return R.build_report(R.load_runs(tmp_path / "runs", variants, seeds), variants, seeds)


def test_write_report_outputs(tmp_path):
    assert R.OUTPUTS == (
        *(
            "ablation.csv",
            "ablation.md",
            "comparisons.csv",
            "curves.csv",
            "learning_curves.png",
            "mca_ci.png",
        ),
        *(
            "routing.png",
            "runs.csv",
            "specialization.csv",
            "specialization.png",
            "summary.json",
            "top1_ci.png",
        ),
    )
    report = make(tmp_path)
    out = tmp_path / "reports"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    written = R.write_report(report, out)
    assert sorted(p.name for p in written) == sorted(R.OUTPUTS) and all(p.is_file() for p in written)
    assert (out / "notes.txt").read_text() == "mine"  # other files are kept
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with open(out / "ablation.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["variant"] for r in table] == report.variants
    assert table[0]["cue_gap_mean"] == "NaN" and table[0]["n_seeds"] == "3"
    assert float(table[2]["top1_mean"]) == report.ablation["top1_mean"].iloc[2]  # exact round trip
    with open(out / "comparisons.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 10  # dsts - baseline, dsts_udl - dsts, shuffled - baseline; 10 metrics each
    assert {(r["first"], r["second"]) for r in rows} == {
        ("dsts", "baseline"),
        ("dsts_udl", "dsts"),
        ("shuffled", "baseline"),
    }
    with open(out / "curves.csv", newline="") as handle:
        curves = list(csv.DictReader(handle))
    assert list(curves[0]) == ["epoch", *report.variants] and len(curves) == 3
    assert json.loads((out / "summary.json").read_text()) == R.summary(report)


def test_a_failure_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    report = make(tmp_path)
    out = tmp_path / "reports"
    R.write_report(report, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(R, "plot_layer_heatmaps", boom)  # the last figure written
    with pytest.raises(RuntimeError, match="plot failed"):
        R.write_report(make(tmp_path / "other", seeds=(0, 1)), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["other", "reports", "runs"]  # no staging folder left


def test_make_report(tmp_path):
    params = write_params(tmp_path, ["baseline", "static"], [0, 1], comparisons=[["static", "baseline"]])
    write_fake_runs(tmp_path / "runs", ["baseline", "static"], [0, 1])
    report = R.make_report(tmp_path / "runs", params, tmp_path / "reports", alpha=0.1)
    assert report.variants == ["baseline", "static"] and report.seeds == [0, 1] and report.alpha == 0.1
    assert report.pairs == [("static", "baseline")] and report.skipped == []
    assert report.configs["static"]["num_neurons"] == 1 and report.configs["baseline"]["dsts"] is False
    assert "90% CI" in (tmp_path / "reports" / "ablation.md").read_text()
    assert sorted(os.listdir(tmp_path / "reports")) == sorted(R.OUTPUTS)


def test_make_report_compares_the_default_pairs_without_report_comparisons(tmp_path):
    variants = ["baseline", "shuffled", "dsts"]
    params = write_params(tmp_path, variants, [0, 1], comparisons=None)
    write_fake_runs(tmp_path / "runs", variants, [0, 1])
    report = R.make_report(tmp_path / "runs", params, tmp_path / "reports")
    assert report.pairs == [("dsts", "baseline"), ("shuffled", "baseline")]
    assert report.skipped == [("dsts", "dsts_3d"), ("dsts_udl", "dsts")]
