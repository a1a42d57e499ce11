"""The seed planner reads a finished study's paired spreads and run times and projects both."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd


def test_power_table_from_a_finished_study(tmp_path):
    for variant, seconds in (("baseline", 35.0), ("dsts", 95.0)):
        for seed in (0, 1):
            run = tmp_path / "runs" / variant / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "timing.json").write_text(json.dumps({"train_seconds": seconds + seed}))
    (tmp_path / "reports").mkdir()
    rows = [
        {"metric": "top1", "first": "dsts", "second": "baseline", "diff_sd": 0.05},
        {"metric": "mca", "first": "dsts", "second": "baseline", "diff_sd": 0.5},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "reports" / "comparisons.csv", index=False)
    cmd = [sys.executable, "-m", "pipeline.power", "--seeds", "10", "--variants", "baseline", "dsts"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    header, _, row = done.stdout.splitlines()[:3]
    assert header == "| seeds | dsts_vs_baseline MDD | projected time |"  # top-1 only
    seeds, mdd, minutes = (cell.strip() for cell in row.strip("|").split("|"))
    # 10 pairs, alpha 0.05, power 0.8: d = 0.996 (G*Power's paired t); 5 points of sd
    assert seeds == "10" and mdd == f"{0.996 * 5:.1f}"
    assert minutes == f"{10 * (35.5 + 25 + 95.5 + 25) / 60:.0f} min"


def test_power_without_a_report_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "pipeline.power", "--variants", "baseline"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "comparisons.csv: no such file" in done.stderr
