"""The sweep behind the calibration tables: ``--train-only`` trains, leaves the test split unread,
and reports validation from each run's own history."""

from __future__ import annotations

import json
import subprocess
import sys
from statistics import mean

from dsts.config import flatten
from dsts.runs import read_history, run_folder
from tests.pipeline.e2e import ROOT, TINY

# the tiny profile on the workspace's data (a data.generate override would make the sweep generate its own)
TINY_SET = [f"{k}={v}" for k, v in flatten(TINY).items() if not k.startswith("data.generate")]


def test_train_only_reads_validation_and_never_the_test_split(workdir, tmp_path):
    out, table = tmp_path / "sweep", tmp_path / "table.json"
    data = workdir / "data" / "generated"
    cmd = [sys.executable, "-m", "pipeline.sweep", "--out", str(out), "--data", str(data)]
    cmd += ["--variants", "baseline", "--seeds", "0", "--train-only", "--json", str(table)]
    cmd += [arg for item in [*TINY_SET, "train.epochs=4"] for arg in ("--set", item)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    folder = run_folder("baseline", 0, out / "base" / "runs")
    assert folder.history.is_file() and not folder.metrics.exists()
    assert not folder.predictions.exists() and not (out / "base" / "reports").exists()
    history = read_history(folder.history)
    curve = [row["val/top1"] for row in history if "val/top1" in row]
    [row] = json.loads(table.read_text())
    # params.yaml's train.val_interval (4) and the last quarter of 4 epochs: epochs 3 and 4 validated
    assert [int(r["epoch"]) for r in history if "val/top1" in r] == [3, 4]
    assert len(history) == 4 and row["val_top1"] == curve[-1]
    assert row["val_top1_last3"] == mean(curve[-3:]) and row["val_top1_last3_per_seed"] == {
        "0": mean(curve[-3:])
    }
    assert "(not read)" in done.stdout
