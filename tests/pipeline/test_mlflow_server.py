"""A shared tracking server: start it on a free loopback port, train against it, read the run back
over the REST API, stop it by its PID and wait until the port is free."""

from __future__ import annotations

import json

import pytest

from tests.pipeline.e2e import stage
from tests.pipeline.mlflow_rest import call, mlflow_server

pytestmark = pytest.mark.slow


def test_training_logs_to_a_shared_server(workdir, tmp_path):
    store = ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    with mlflow_server(*store, "--artifacts-destination", str(tmp_path / "artifacts")) as base:
        out = tmp_path / "run"
        args = ["--variant", "dsts", "--seed", "3", "--out", str(out), "--set", "train.epochs=1"]
        remote = {"MLFLOW_TRACKING_URI": base}
        stage(workdir, "pipeline.train", *args, env=remote)
        stage(workdir, "pipeline.evaluate", *args, env=remote)

        experiments = call(f"{base}/api/2.0/mlflow/experiments/search?max_results=10")["experiments"]
        ids = [e["experiment_id"] for e in experiments if e["name"] == "dsts-bench-generated"]
        assert ids, experiments
        runs = call(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": ids})["runs"]
        assert len(runs) == 1
        run = call(f"{base}/api/2.0/mlflow/runs/get?run_id={runs[0]['info']['run_id']}")["run"]
        assert run["info"]["status"] == "FINISHED"
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["variant"] == "dsts" and tags["seed"] == "3"
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        saved = json.loads((out / "metrics.json").read_text())
        assert metrics["test/top1"] == pytest.approx(saved["test/top1"])
        # artifacts went through the server into its destination folder
        assert any(p.name == "model.pt" for p in (tmp_path / "artifacts").rglob("*"))
