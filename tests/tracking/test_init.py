"""MLflow glue: the store follows DVC_ROOT, one run per (variant, seed) that a rerun continues,
FAILED on an exception, and a retry that outlasts SQLite's "database is locked"."""

from __future__ import annotations

import pytest

from dsts.config import load_config
from dsts.tracking import Tracker, retry, tracking_uri


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


@pytest.fixture
def tracker(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config("params.yaml", variant="dsts", seed=3)
    return Tracker(cfg, cfg.train_hash("cpu"))


def test_a_run_per_variant_and_seed_that_a_rerun_continues(tracker):
    with tracker.run() as t:
        t.log_metrics({"test/top1": 0.5, "nan": float("nan")}, step=1)
        first = t.run_id
    run = tracker.client.get_run(first)
    assert run.info.status == "FINISHED"
    assert run.data.tags["variant"] == "dsts" and run.data.tags["seed"] == "3"
    assert run.data.params["model.dsts.num_neurons"] == "4"
    assert run.data.metrics == {"test/top1": 0.5}  # NaN is dropped
    with tracker.run(first) as t:
        assert t.run_id == first


def test_an_exception_marks_the_run_failed_and_a_new_process_finds_it(tracker):
    with pytest.raises(RuntimeError), tracker.run() as t:
        raise RuntimeError("crash")
    assert tracker.client.get_run(t.run_id).info.status == "FAILED"
    assert Tracker(tracker.cfg, tracker.train_hash).find_unfinished() == t.run_id
