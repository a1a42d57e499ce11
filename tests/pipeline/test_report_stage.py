"""``python -m pipeline.report`` end to end on fake run folders: every output, a summary that equals
an independent recomputation and does not change on a rerun, cost columns from the run files, and
one error line (exit 2, nothing written) for a missing or malformed run file."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dsts.report import OUTPUTS
from tests.report.fakes import FLOPS, write_fake_runs, write_params

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["baseline", "shuffled", "static", "dsts", "dsts_udl"]
PAIRS = [("dsts", "baseline"), ("dsts_udl", "dsts"), ("shuffled", "baseline")]  # of fakes.COMPARISONS
SEEDS = [0, 1, 2]
T975_DF2 = 4.302652729749464  # exact: 0.95 / sqrt(2 * 0.975 * 0.025)
MDD_N3 = 3.2640435498  # MDD / sd(d) at n = 3: exact noncentral-t power 0.8 (R power.t.test: 3.26)


def run_report(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", DVC_NO_ANALYTICS="1")
    return subprocess.run(
        [sys.executable, "-m", "pipeline.report", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def workspace(tmp_path):
    write_params(tmp_path, VARIANTS, SEEDS)
    fake = write_fake_runs(tmp_path / "runs", VARIANTS, SEEDS)
    return tmp_path, fake


def args_for(ws: Path, out: str = "reports") -> list[str]:
    return [
        "--runs",
        str(ws / "runs"),
        "--out",
        str(ws / out),
        "--params",
        str(ws / "params.yaml"),
    ]


def expected_summary(fake: dict) -> dict[str, float]:
    """The headline numbers of summary.json from numpy and the closed-form t of 2 degrees of freedom."""
    out: dict[str, float] = {}
    for v in VARIANTS:
        for metric, key in (("top1", "test/top1"), ("mca", "test/mean_class_accuracy")):
            x = np.array([fake[(v, s)][key] for s in SEEDS])
            half = T975_DF2 * x.std(ddof=1) / math.sqrt(3)
            out[f"{v}/{metric}_mean"] = x.mean()
            out[f"{v}/{metric}_sd"] = x.std(ddof=1)
            out[f"{v}/{metric}_ci_low"] = x.mean() - half
            out[f"{v}/{metric}_ci_high"] = x.mean() + half
        out[f"{v}/n_seeds"] = 3
    for (first, second), metric in [(p, m) for p in PAIRS for m in ("top1", "pair/rotation")]:
        d = np.array(
            [fake[(first, s)][f"test/{metric}"] - fake[(second, s)][f"test/{metric}"] for s in SEEDS]
        )
        t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
        key = f"{first}_vs_{second}/{metric.removeprefix('pair/')}"
        out[f"{key}_diff"] = d.mean()
        out[f"{key}_p_value"] = 1 - abs(t) / math.sqrt(2 + t * t)  # two-sided, df = 2
        out[f"{key}_mdd"] = MDD_N3 * d.std(ddof=1)
        out[f"{key}_n_pairs"] = 3
    for v in VARIANTS:
        x = np.array([fake[(v, s)]["test/top1_temporal_cue"] for s in SEEDS])
        out[f"{v}/top1_temporal_cue_mean"] = x.mean()
        x = np.array([fake[(v, s)]["test/pair/temporal_cue"] for s in SEEDS])
        t = (x.mean() - 0.5) / (x.std(ddof=1) / math.sqrt(3))
        out[f"{v}/pair_temporal_cue_mean"] = x.mean()
        out[f"{v}/pair_temporal_cue_p_value"] = 1 - abs(t) / math.sqrt(2 + t * t)
        out[f"{v}/converged_share"] = 1.0  # the fakes' validation top-1 stops rising halfway
    out["study/control_detected"] = 1
    out["study/control_spatial_within_mdd"] = 1
    gaps = np.array(
        [
            np.mean([fake[("dsts_udl", s)][f"test/layer{j}/temporal_fraction/cue_gap"] for j in range(2)])
            for s in SEEDS
        ]
    )
    t = gaps.mean() / (gaps.std(ddof=1) / math.sqrt(3))
    out["dsts_udl/cue_gap_mean"] = gaps.mean()
    out["dsts_udl/cue_gap_p_value"] = 1 - abs(t) / math.sqrt(2 + t * t)
    out["baseline/num_parameters"] = 145180.0
    out["static/flops_per_clip"] = FLOPS["static"]
    return out


def test_help():
    res = run_report("--help")
    assert res.returncode == 0
    assert "--runs" in res.stdout and "summary.json" in res.stdout and "report.comparisons" in res.stdout
    assert "--references" not in res.stdout  # the pairs come from the params
    assert (
        "--no-cost" not in res.stdout and "--latency-repeats" not in res.stdout
    )  # cost comes from the files


def test_report_end_to_end(workspace):
    ws, fake = workspace
    res = run_report(*args_for(ws))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1 and res.stdout.startswith("report: 5 variants x 3 seeds")
    out = ws / "reports"
    assert {p.name for p in out.iterdir()} == set(OUTPUTS)
    assert [p.name for p in ws.iterdir() if p.name.startswith(".")] == []  # no staging folder left

    summary = json.loads((out / "summary.json").read_text())
    expected = expected_summary(fake)
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert all(math.isfinite(v) for v in summary.values())
    assert "baseline/cue_gap_mean" not in summary and not any("latency" in k for k in summary)
    assert not any(k.startswith(("dsts_vs_dsts_3d/", "static_vs_")) for k in summary)  # not compared

    text = (out / "ablation.md").read_text()
    assert text.splitlines()[2].startswith(
        "The study can detect a real effect: its positive control shuffled is"
    )
    for v in VARIANTS:
        assert re.search(rf"^\| {v} +\|", text, re.MULTILINE), v
    assert re.search(r"^\| static +\| 0.26 M +\| 0.250 +\| 4.0 +\| 12.5 +\|", text, re.MULTILINE)  # cost
    with open(out / "ablation.csv", newline="") as handle:
        table = {r["variant"]: r for r in csv.DictReader(handle)}
    assert float(table["static"]["latency_ms"]) == 4.0 and float(table["static"]["flops_per_clip"]) == 2.5e8
    p = summary["dsts_udl_vs_dsts/top1_p_value"]
    verdict = "significant at α=0.05" if p < 0.05 else "no significant difference at α=0.05"
    assert f"dsts_udl vs dsts: {100 * summary['dsts_udl_vs_dsts/top1_diff']:+.1f} points top-1" in text
    assert verdict in text.split("- dsts_udl vs dsts:")[1].split("\n")[0]

    # a rerun on the same files writes the same summary, byte for byte
    first = (out / "summary.json").read_bytes()
    again = run_report(*args_for(ws))
    assert again.returncode == 0, again.stderr
    assert (out / "summary.json").read_bytes() == first


def test_missing_metrics_file_is_one_line_and_writes_nothing(workspace):
    ws, _ = workspace
    missing = ws / "runs" / "static" / "seed1" / "metrics.json"
    missing.unlink()
    res = run_report(*args_for(ws))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    assert not (ws / "reports").exists()
    assert sorted(p.name for p in ws.iterdir()) == ["ablations", "params.yaml", "runs"]


def test_malformed_cost_file_is_one_line_and_writes_nothing(workspace):
    ws, _ = workspace
    bad = ws / "runs" / "dsts_udl" / "seed2" / "cost.json"  # a malformed optional file
    bad.write_text('{"latency_ms": "slow"}')
    res = run_report(*args_for(ws))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and str(bad) in res.stderr
    assert not (ws / "reports").exists()


def test_bad_comparisons_are_one_line(workspace):
    ws, _ = workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["report"]["comparisons"] = [["dsts", "dsts"]]
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    res = run_report(*args_for(ws))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "report.comparisons" in res.stderr
    assert not (ws / "reports").exists()


def test_bad_params_list_is_one_line(workspace):
    ws, _ = workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["seeds"] = []
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    res = run_report(*args_for(ws))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "seeds" in res.stderr
    assert not (ws / "reports").exists()
