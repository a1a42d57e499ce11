"""A shared tracking server: start it on a free loopback port, train against it, read the run back
over the REST API, stop it by its PID and wait until the port is free."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pipeline.e2e import stage

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def call(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith("{") else {"text": text}


def test_training_logs_to_a_shared_server(workdir, tmp_path):
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        pytest.skip("mlflow is not installed")
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    server = subprocess.Popen(
        [
            mlflow,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if call(f"{base}/health").get("text", "").strip() == "OK":
                    break
            except OSError:
                pass
            assert server.poll() is None, "the server exited while starting"
            assert time.time() < deadline, "the server did not answer /health in 120 s"
            time.sleep(0.5)

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
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        deadline = time.time() + 60
        while port_in_use(port) and time.time() < deadline:
            time.sleep(0.2)
    assert not port_in_use(port), "the port is still taken after the server stopped"
