"""MLflow glue that the stage scripts call (the library itself never opens a run).

One experiment per dataset; one run per (variant, seed) holds both training and evaluation.
The store is ``sqlite:///<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts``, where
``<root>`` is ``DVC_ROOT`` when DVC runs the stage (it points at the workspace even inside a
queued experiment's temporary clone) and the current folder otherwise; ``MLFLOW_TRACKING_URI`` wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

# telemetry off before MLflow is imported (it reads these when it loads)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from dsts.config import Config  # noqa: E402

T = TypeVar("T")


def workspace_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{workspace_root() / 'mlflow.db'}"


def experiment_name(cfg: Config) -> str:
    return cfg.tracking.experiment or f"dsts-bench-{cfg.data.dataset}"


def retry(call: Callable[[], T], attempts: int = 8) -> T:
    """SQLite answers "database is locked" under concurrent writers (``dvc queue start -j 2``):
    back off and try again instead of losing the write."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # mlflow wraps the sqlite error in several exception types
            text = str(exc).lower()
            transient = "database is locked" in text or "unique constraint" in text or "busy" in text
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while it is opened: MLflow creates and migrates
    its tables on first use, and two processes doing that at once (``dvc queue start -j 2`` on a new
    workspace) corrupt the migration. Other stores (a server) need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root or workspace_root(),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


class Tracker:
    """The MLflow run of one (variant, seed)."""

    def __init__(self, cfg: Config, train_hash: str):
        self.cfg = cfg
        self.train_hash = train_hash  # Config.train_hash: a change of training settings is a new run
        self.uri = tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        with store_lock(self.uri):  # the first process creates the tables; the others wait for it
            self.client = MlflowClient(self.uri)
            self.experiment_id = self._experiment()
        self.run_id: str | None = None

    def _experiment(self) -> str:
        name = experiment_name(self.cfg)

        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            location = None
            if self.uri.startswith("sqlite:"):
                location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except Exception:  # a parallel process created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
                return found.experiment_id

        return retry(get_or_create)

    def tags(self) -> dict[str, str]:
        tags = {
            "variant": self.cfg.variant,
            "seed": str(self.cfg.train.seed),
            "config_hash": self.train_hash,
            "git_commit": git_commit(),
            "dataset": self.cfg.data.dataset,
        }
        if os.environ.get("DVC_STAGE"):
            tags["dvc_stage"] = os.environ["DVC_STAGE"]
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
        return tags

    def find_unfinished(self) -> str | None:
        """A crashed or killed run of this exact resolved config: resuming continues it."""
        query = (
            f"tags.variant = '{self.cfg.variant}' and tags.seed = '{self.cfg.train.seed}' "
            f"and tags.config_hash = '{self.train_hash}'"
        )
        runs = retry(
            lambda: self.client.search_runs(
                [self.experiment_id],
                filter_string=query,
                order_by=["attributes.start_time DESC"],
                max_results=5,
            )
        )
        for run in runs:
            if run.info.status in ("RUNNING", "FAILED", "KILLED"):
                return run.info.run_id
        return None

    def exists(self, run_id: str) -> bool:
        try:
            run = retry(lambda: self.client.get_run(run_id))
        except Exception:
            return False
        return run.info.experiment_id == self.experiment_id

    def start(self, run_id: str | None = None) -> str:
        """Continue ``run_id`` (or an unfinished run of this config), else open a new run."""
        run_id = run_id if run_id and self.exists(run_id) else self.find_unfinished()
        if run_id is None:
            run = retry(
                lambda: self.client.create_run(
                    self.experiment_id,
                    run_name=f"{self.cfg.variant}-seed{self.cfg.train.seed}",
                    tags=self.tags(),
                )
            )
            run_id = run.info.run_id
            self.run_id = run_id
            self.log_params(self.cfg.flat())
        else:
            self.run_id = run_id
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            for key, value in self.tags().items():
                retry(lambda k=key, v=value: self.client.set_tag(run_id, k, v))
        return run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, "null" if v is None else str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            batch = items[i : i + 100]
            retry(lambda b=batch: self.client.log_batch(self.run_id, params=b))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, step or 0)
            for key, value in sorted(metrics.items())
            if isinstance(value, (int, float)) and value == value  # drop NaN
        ]
        for i in range(0, len(items), 500):
            batch = items[i : i + 500]
            retry(lambda b=batch: self.client.log_batch(self.run_id, metrics=b))

    def set_tag(self, key: str, value: str) -> None:
        retry(lambda: self.client.set_tag(self.run_id, key, value))

    def set_tags(self, tags: dict[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in sorted(tags.items())]
        retry(lambda: self.client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            retry(lambda: self.client.set_terminated(self.run_id, status=status))

    @contextlib.contextmanager
    def run(self, run_id: str | None = None) -> Iterator[Tracker]:
        """Open (or continue) the run; an exception marks it FAILED, Ctrl-C marks it KILLED."""
        self.start(run_id)
        try:
            yield self
        except KeyboardInterrupt:
            self.end("KILLED")
            raise
        except BaseException:
            self.end("FAILED")
            raise
        self.end("FINISHED")
