"""The GPU benchmark skips cleanly without CUDA, and imports no PyAV, MLflow or DVC."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.pipeline.e2e import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs the real benchmark on a GPU machine")
def test_skips_with_one_line_without_cuda():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.gpu_bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == ["gpu_bench: skipped, no CUDA device is available"]


def test_needs_only_torch_and_the_core():
    code = (
        "import sys, runpy; sys.argv=['gpu_bench', '--help']\n"
        "try:\n    runpy.run_module('pipeline.gpu_bench', run_name='__main__')\nexcept SystemExit: pass\n"
        "import dsts.model, dsts.udl, dsts.config\n"
        "bad = [m for m in ('av', 'mlflow', 'dvc', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
