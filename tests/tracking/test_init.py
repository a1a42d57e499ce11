"""MLflow glue: the store follows DVC_ROOT, one run per (variant, seed) that a rerun continues,
FAILED on an exception, a retry that outlasts SQLite's "database is locked", tags the UI groups
and filters on, the data as a dataset input, evaluation after the history, system metrics only
when asked, artifacts that follow a moved store, and a store MLflow refuses or a server that does not
answer as one named error."""

from __future__ import annotations

import http.server
import json
import math
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dsts.config import load_config
from dsts.errors import TrackingError
from dsts.provenance import dir_md5
from dsts.tracking import Tracker, probe_server, relocate_artifacts, retry, tracking_uri

ROOT = Path(__file__).resolve().parents[2]


def test_the_store_is_anchored_on_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri() == "http://127.0.0.1:5999"


def test_retry_outlasts_transient_locks_and_not_real_errors():
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry(locked_twice) == "ok" and len(calls) == 3
    with pytest.raises(ValueError, match="real"):
        retry(lambda: (_ for _ in ()).throw(ValueError("real")))


@pytest.mark.parametrize("uri", ["file:{tmp}/mlruns", "{tmp}/mlruns", "bogus://store"])
def test_a_store_mlflow_refuses_is_a_tracking_error_that_names_it(monkeypatch, tmp_path, uri):
    # MLflow 3 refuses its old file store unless MLFLOW_ALLOW_FILE_STORE is set, and any unknown scheme
    uri = uri.format(tmp=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = make_config()
    with pytest.raises(TrackingError) as caught:
        Tracker(cfg, cfg.train_hash("cpu"))
    assert uri in str(caught.value) and "tracking.enabled=false" in str(caught.value)
    assert caught.value.__cause__ is None and list(tmp_path.iterdir()) == []  # nothing written


def test_a_server_that_does_not_answer_is_one_line_after_a_few_tries(monkeypatch, tmp_path):
    """Without the probe, MLflow's client retries a refused connection for minutes before it gives up."""
    with socket.socket() as free:  # a port that nothing listens on
        free.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{free.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    cfg = make_config()
    with pytest.raises(TrackingError) as caught:
        Tracker(cfg, cfg.train_hash("cpu"))
    message = str(caught.value)
    assert uri in message and "does not answer" in message and "tracking.enabled=false" in message
    assert "\n" not in message and caught.value.__cause__ is None and list(tmp_path.iterdir()) == []


def test_any_answer_passes_the_probe_and_other_stores_are_not_probed():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe_server(f"http://127.0.0.1:{server.server_address[1]}")  # a 404 is an answer
    finally:
        server.shutdown()
    probe_server("sqlite:///nowhere/mlflow.db")  # only http(s) stores are probed


def make_config(variant: str = "dsts", seed: int = 3, **overrides):
    cfg = load_config(ROOT / "params.yaml", variant=variant, seed=seed)
    for key, value in overrides.items():
        setattr(cfg.tracking, key, value)
    return cfg


@pytest.fixture
def tracker(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # not a git repository: the dirty state is unknown
    cfg = make_config()
    return Tracker(cfg, cfg.train_hash("cpu"))


def test_a_run_per_variant_and_seed_that_a_rerun_continues(tracker):
    with tracker.run() as t:
        t.log_metrics({"test/top1": 0.5, "nan": float("nan")}, step=1)
        first = t.run_id
    run = tracker.client.get_run(first)
    assert run.info.status == "FINISHED"
    assert run.data.tags["variant"] == "dsts" and run.data.tags["seed"] == "3"
    assert run.data.params["model.dsts.num_neurons"] == "4" and run.data.params["variant"] == "dsts"
    assert run.data.metrics["test/top1"] == 0.5
    assert math.isnan(run.data.metrics["nan"])  # undefined stays NaN, as in history.csv
    with tracker.run(first) as t:
        assert t.run_id == first


def test_an_exception_marks_the_run_failed_and_a_new_process_finds_it(tracker):
    with pytest.raises(RuntimeError), tracker.run() as t:
        raise RuntimeError("crash")
    assert tracker.client.get_run(t.run_id).info.status == "FAILED"
    assert Tracker(tracker.cfg, tracker.train_hash).find_unfinished() == t.run_id


def switch_tags(dsts, routing, specialization, udl, updates, frames) -> dict[str, str]:
    return {
        "ablation.dsts": dsts,
        "ablation.routing": routing,
        "ablation.specialization": specialization,
        "ablation.udl": udl,
        "ablation.updates_per_step": str(updates),
        "ablation.frames": frames,
    }


@pytest.mark.parametrize(
    ("variant", "switches"),
    [
        ("baseline", switch_tags("off", "none", "none", "off", 1, "ordered")),
        ("shuffled", switch_tags("off", "none", "none", "off", 1, "shuffled")),
        ("static", switch_tags("on", "static", "st", "off", 1, "ordered")),
        ("dsts_3d", switch_tags("on", "dynamic", "3d", "off", 1, "ordered")),
        ("dsts_udl_fo", switch_tags("on", "dynamic", "st", "first_order", 1, "ordered")),
        ("dsts_cm", switch_tags("on", "dynamic", "st", "off", 3, "ordered")),
    ],
)
def test_runs_carry_the_switches_and_where_their_code_came_from(monkeypatch, tmp_path, variant, switches):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    cfg = make_config(variant, 0)
    with Tracker(cfg, cfg.train_hash("cpu"), stage="train").run() as t:
        pass
    tags = t.client.get_run(t.run_id).data.tags
    assert {k: tags[k] for k in switches} == switches
    assert tags["run_kind"] == "run" and tags["variant"] == variant and tags["seed"] == "0"
    assert tags["git_dirty"] == tags["git_dirty.train"] == "unknown"  # tmp_path is no git tree
    assert tags["mlflow.source.git.commit"] == tags["git_commit"] == "unknown"
    assert tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"


def git(repo: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "PATH": "/usr/bin:/bin"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid")
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


def test_a_later_stage_on_a_dirty_tree_makes_the_run_dirty(monkeypatch, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "code.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "code")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(repo)
    cfg = make_config()
    with Tracker(cfg, cfg.train_hash("cpu"), stage="train").run() as t:
        pass
    tags = t.client.get_run(t.run_id).data.tags
    assert tags["git_dirty"] == tags["git_dirty.train"] == "false" and len(tags["git_commit"]) == 40
    (repo / "code.py").write_text("x = 2\n")
    with Tracker(cfg, cfg.train_hash("cpu"), stage="evaluate").run(t.run_id):
        pass
    tags = t.client.get_run(t.run_id).data.tags
    assert tags["git_dirty.train"] == "false" and tags["git_dirty.evaluate"] == "true"
    assert tags["git_dirty"] == "true" and tags["git_dirty_paths"] == "code.py"


def test_the_data_is_a_dataset_input_with_its_dvc_md5(tracker, tmp_path):
    data = tmp_path / "data" / "generated"
    (data / "rgb").mkdir(parents=True)
    (data / "rgb" / "a.mp4").write_bytes(b"clip")
    (data / "vocab.json").write_text("{}")
    with tracker.run() as t:
        t.log_data({"train": "training"})
        t.log_data({"test": "evaluation"})
    run = t.client.get_run(t.run_id)
    found = {
        (i.dataset.name, i.dataset.digest, {tag.key: tag.value for tag in i.tags}["mlflow.data.context"])
        for i in run.inputs.dataset_inputs
    }
    md5 = dir_md5(data)
    assert found == {("generated/train", md5, "training"), ("generated/test", md5, "evaluation")}
    assert json.loads(run.inputs.dataset_inputs[0].dataset.source) == {"uri": "data/generated"}
    assert run.data.tags["data_md5"] == md5 and run.data.tags["data_md5_source"] == "computed"


def test_evaluation_lands_after_the_last_epoch_without_the_copied_history(tracker):
    epochs = tracker.cfg.train.epochs
    with tracker.run() as t:
        for epoch in range(1, epochs + 1):
            t.log_metrics({"test/top1": 0.1 * epoch, "train/loss": 1.0 / epoch}, step=epoch)
        t.log_evaluation({"test/top1": 0.75, "train/loss": 1.0 / epochs}, skip=["train/loss"])
    steps = {
        k: [(m.step, m.value) for m in t.client.get_metric_history(t.run_id, k)]
        for k in ("test/top1", "train/loss")
    }
    assert [s for s, _ in steps["test/top1"]] == [*range(1, epochs + 1), epochs + 1]
    assert steps["test/top1"][-1] == (epochs + 1, 0.75)
    assert [s for s, _ in steps["train/loss"]] == list(range(1, epochs + 1))
    assert t.client.get_run(t.run_id).data.metrics["test/top1"] == 0.75


def test_system_metrics_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    monkeypatch.chdir(tmp_path)
    found = {}
    for enabled in (False, True):
        cfg = make_config("dsts", int(enabled), system_metrics=enabled)
        with Tracker(cfg, cfg.train_hash("cpu")).run() as t:
            time.sleep(0.5)  # leaves the monitor time for a sample
        found[enabled] = {k for k in t.client.get_run(t.run_id).data.metrics if k.startswith("system/")}
    assert found[False] == set()
    assert "system/cpu_utilization_percentage" in found[True]


def test_a_moved_store_finds_its_artifacts(monkeypatch, tmp_path):
    old, new = tmp_path / "old", tmp_path / "moved" / "workspace"
    old.mkdir()
    (old / "note.txt").write_text("kept")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(old))
    monkeypatch.chdir(old)
    cfg = make_config()
    with Tracker(cfg, cfg.train_hash("cpu")).run() as t:
        t.log_artifact(old / "note.txt")
    run_id = t.run_id
    new.parent.mkdir()
    shutil.move(old, new)

    # before anything opens it, the moved store still names the old folder, which is gone
    with sqlite3.connect(new / "mlflow.db") as con:
        (uri,) = con.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    assert uri.startswith((old / "mlartifacts").as_uri())

    monkeypatch.setenv("DVC_ROOT", str(new))
    monkeypatch.chdir(new)
    moved = Tracker(cfg, cfg.train_hash("cpu"))
    client = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    experiment = client.get_experiment(moved.experiment_id)
    assert experiment.artifact_location == (new / "mlartifacts").as_uri()
    assert client.get_run(run_id).info.artifact_uri == f"{(new / 'mlartifacts').as_uri()}/{run_id}/artifacts"
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    fetched = client.download_artifacts(run_id, "note.txt", str(tmp_path))
    assert Path(fetched).read_text() == "kept"
    # a second look changes nothing; MLflow's own Default experiment is left alone
    assert relocate_artifacts(f"sqlite:///{new / 'mlflow.db'}") == {}
    assert not client.get_experiment("0").artifact_location.endswith("mlartifacts")
