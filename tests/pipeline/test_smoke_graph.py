"""The whole DVC graph on the smoke profile, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipeline.e2e import ROOT

pytestmark = pytest.mark.slow


def dvc(copy: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{copy / 'mlflow.db'}", DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["dvc", *args], cwd=copy, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_copy(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("smoke") / "repo"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.smoke", "--keep", str(copy)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return copy


def test_every_stage_ran_and_wrote_its_outputs(smoke_copy):
    params = yaml.safe_load((smoke_copy / "params.yaml").read_text())
    assert params["seeds"] == [0], "the smoke profile was merged"
    for variant in params["variants"]:
        for seed in params["seeds"]:
            run = smoke_copy / "runs" / variant / f"seed{seed}"
            metrics = json.loads((run / "metrics.json").read_text())
            assert 0.0 <= metrics["test/top1"] <= 1.0
            assert (run / "model.pt").exists() and (run / "plots" / "confusion.png").exists()
    for name in ("ablation.md", "ablation.csv", "summary.json", "top1_ci.png", "learning_curves.png"):
        assert (smoke_copy / "reports" / name).stat().st_size > 0, name
    shown = dvc(smoke_copy, "metrics", "show", "--json")
    assert shown.returncode == 0 and "test/top1" in shown.stdout


def test_second_repro_has_nothing_to_do(smoke_copy):
    status = dvc(smoke_copy, "status")
    assert status.returncode == 0, status.stderr
    assert "up to date" in status.stdout, status.stdout
    again = dvc(smoke_copy, "repro")
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout, again.stdout


def test_mlflow_holds_one_run_per_variant_and_seed_matching_the_metrics(smoke_copy):
    from mlflow.tracking import MlflowClient

    params = yaml.safe_load((smoke_copy / "params.yaml").read_text())
    client = MlflowClient(f"sqlite:///{smoke_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dsts-bench-generated")
    runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'run'", max_results=1000)
    keys = sorted((r.data.tags["variant"], int(r.data.tags["seed"])) for r in runs)
    assert keys == sorted((v, s) for v in params["variants"] for s in params["seeds"])
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags.get("dvc_stage", "").startswith("evaluate@")
        saved = json.loads(
            (
                smoke_copy
                / "runs"
                / run.data.tags["variant"]
                / f"seed{run.data.tags['seed']}"
                / "metrics.json"
            ).read_text()
        )
        for key, value in saved.items():
            assert run.data.metrics[key] == pytest.approx(value, rel=1e-12, abs=0, nan_ok=True), key
