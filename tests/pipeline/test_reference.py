"""The plain reference trains outside the engine, on the same Diving48-format files, and reports
val and test top-1 per seed for both of its models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dsts.data.generate import generate_benchmark


@pytest.mark.parametrize("model", ["plain", "small3d"])
def test_reference_trains_on_the_benchmark_files(tmp_path, model):
    root = tmp_path / "generated"
    generate_benchmark(
        root,
        classes=4,
        clips_per_class_train=4,
        clips_per_class_test=2,
        frames=8,
        size=32,
        clips_per_class_val=1,
    )
    out = tmp_path / "reference.json"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.reference",
        "--root",
        str(root),
        "--epochs",
        "1",
        "--seeds",
        "0",
        "1",
    ]
    done = subprocess.run(
        [*cmd, "--stride", "2", "--model", model, "--json", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [r["seed"] for r in result["runs"]] == [0, 1]
    for r in result["runs"]:
        assert r["test_top1"] in {k / 8 for k in range(9)}  # 8 test clips
        assert r["val_top1"] in {k / 4 for k in range(5)}  # 4 val clips
    assert "mean over 2 seeds" in done.stdout
