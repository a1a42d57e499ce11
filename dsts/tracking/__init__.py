"""MLflow glue that the stage scripts call (the library itself never opens a run).

One experiment per dataset. In it, one run per (variant, seed) holds both training and evaluation
(:class:`Tracker`), and the report stage keeps one study run per params state
(``dsts/tracking/study.py``) that the runs it summarizes link to by their ``study`` tag.
docs/tracking.md lists every key.

The store is ``sqlite:///<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts``, where
``<root>`` is ``DVC_ROOT`` when DVC runs the stage (it points at the workspace even inside a
queued experiment's temporary clone) and the current folder otherwise; ``MLFLOW_TRACKING_URI`` wins.
MLflow stores artifact locations as absolute paths: whoever opens a SQLite store points them back at
the ``mlartifacts`` folder beside it (:func:`relocate_artifacts`), so a moved or copied workspace
keeps its artifacts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import sqlite3
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

# telemetry off before MLflow is imported (it reads these when it loads)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from dsts import provenance  # noqa: E402
from dsts.config import Config  # noqa: E402
from dsts.errors import TrackingError  # noqa: E402

T = TypeVar("T")

CODE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds dsts/ and pipeline/
ARTIFACTS = "mlartifacts"  # beside mlflow.db
RUN, STUDY = "run", "study"  # values of the run_kind tag
# An http(s) store is asked once for /health before MLflow's client, which retries a server that does
# not answer for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES): a few quick tries, then one clear line.
PROBE_ATTEMPTS = 3
PROBE_SECONDS = 10.0  # per try: a server that accepts the connection but does not answer


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


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while it is opened: MLflow creates and migrates
    its tables on first use, and two processes doing that at once (``dvc queue start -j 2`` on a new
    workspace) corrupt the migration. Other stores (a server) need no lock."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    lock = Path(str(db) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def artifact_root(uri: str) -> str | None:
    """``file://`` URI of the artifacts folder beside a SQLite store; None for other stores (a
    server chooses its own, ``mlflow-artifacts:/``, which does not name a path)."""
    db = _sqlite_path(uri)
    return (db.resolve().parent / ARTIFACTS).as_uri() if db is not None else None


def relocate_artifacts(uri: str) -> dict[str, tuple[str, str]]:
    """Point every experiment of a SQLite store whose artifact location is an ``mlartifacts`` folder
    elsewhere (the store was moved or copied) at the one beside it, with its runs' and logged
    models' artifact URIs. MLflow has no call to change an artifact location, so this edits its
    tables. Returns ``{experiment_id: (old, new)}``; other stores and locations are left alone."""
    db, new = _sqlite_path(uri), artifact_root(uri)
    if db is None or new is None or not db.is_file():
        return {}
    moved = {}
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        try:
            rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # not an MLflow store yet
                return {}
            raise  # "database is locked": the caller retries
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for experiment_id, old in rows:
            old = (old or "").rstrip("/")
            if old == new or not old.startswith(("file:///", "/")) or Path(old).name != ARTIFACTS:
                continue
            con.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, experiment_id)
            )
            for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                if table in tables:
                    con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE experiment_id = ? AND substr({column}, 1, ?) = ?",
                        (new, len(old) + 1, experiment_id, len(old), old),
                    )
            moved[str(experiment_id)] = (old, new)
        con.commit()
    return moved


def probe_server(uri: str) -> None:
    """Raise :class:`TrackingError` when an ``http(s)`` store does not answer at all (refused,
    unresolvable, silent for ``PROBE_SECONDS``) after ``PROBE_ATTEMPTS`` tries. Any answer counts,
    an HTTP error or a TLS handshake that MLflow's own settings may accept included; other stores are
    not probed."""
    if not uri.startswith(("http://", "https://")):
        return
    reason = ""
    for attempt in range(PROBE_ATTEMPTS):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                return  # it answered; certificates are MLflow's business (MLFLOW_TRACKING_INSECURE_TLS)
            reason = str(exc.reason)
        except (OSError, ValueError) as exc:  # a timeout while reading, a malformed address
            reason = str(exc) or type(exc).__name__
        if attempt < PROBE_ATTEMPTS - 1:
            time.sleep(0.5 * 2**attempt)
    raise TrackingError(
        f"the MLflow server {uri} does not answer ({reason}; {PROBE_ATTEMPTS} tries): start it, or set "
        "MLFLOW_TRACKING_URI, or tracking.enabled=false to run without MLflow"
    )


def open_experiment(cfg: Config) -> tuple[str, MlflowClient, str]:
    """``(uri, client, experiment_id)``: the store (relocated if it moved) and the experiment of
    ``cfg``, created once with its artifacts beside a SQLite store."""
    uri = tracking_uri()  # not mlflow.set_tracking_uri: it would also set MLFLOW_TRACKING_URI
    probe_server(uri)
    try:
        return _open_experiment(uri, experiment_name(cfg))
    except MlflowException as exc:  # a store the user named and MLflow refuses: their fix, not a bug
        raise TrackingError(
            f"the MLflow store {uri} cannot be opened (MLFLOW_TRACKING_URI, or tracking.enabled=false "
            f"to run without MLflow): {exc.message}"
        ) from None


def _open_experiment(uri: str, name: str) -> tuple[str, MlflowClient, str]:
    with store_lock(uri):  # the first process creates the tables; the others wait for it
        client = MlflowClient(uri)

        def get_or_create() -> str:
            found = client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            try:
                return client.create_experiment(name, artifact_location=artifact_root(uri))
            except Exception:  # a parallel process created it first
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
                return found.experiment_id

        experiment_id = retry(get_or_create)
        retry(lambda: relocate_artifacts(uri))
    return uri, client, experiment_id


def stage_name() -> str:
    """``train`` for the stage ``train@dsts-0``; outside DVC, the script's name."""
    stage = os.environ.get("DVC_STAGE", "").split("@")[0]
    return stage or (Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "python")


def source_name() -> str:
    """The script that runs, relative to the code's root (``pipeline/train.py``)."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is None or not script.is_file():
        return "python"
    return script.relative_to(CODE_ROOT).as_posix() if script.is_relative_to(CODE_ROOT) else script.name


def code_state() -> tuple[str, str, list[str]]:
    """``(commit, dirty, dirty paths)`` of the git tree the stage runs in (its current folder, which
    is the temporary clone for a queued experiment); dirty is ``true``, ``false`` or ``unknown``."""
    root = Path.cwd()
    paths = provenance.git_dirty(root)
    dirty = "unknown" if paths is None else str(bool(paths)).lower()
    return provenance.git_commit(root), dirty, paths or []


def source_tags(state: tuple[str, str, list[str]]) -> dict[str, str]:
    """What a run records when it is created, from :func:`code_state`: the commit, whether the tree
    was dirty (and which paths), the script."""
    commit, dirty, paths = state
    tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "git_dirty": dirty,
        "mlflow.source.name": source_name(),
        "mlflow.source.type": "LOCAL",
    }
    if paths:
        tags["git_dirty_paths"] = listing(paths)
    return tags


def listing(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def dvc_tags() -> dict[str, str]:
    names = {"DVC_STAGE": "dvc_stage", "DVC_EXP_NAME": "dvc_experiment"}
    return {tag: os.environ[var] for var, tag in names.items() if os.environ.get(var)}


def ablation_tags(cfg: Config) -> dict[str, str]:
    """The ablation switches under stable names, whatever the variant is called: one per way a
    variant of ``ablations/`` departs from another (one neuron per layer is DSTS without routing)."""
    dsts = cfg.model.dsts
    routing = "none" if not dsts.enabled else "static" if dsts.num_neurons == 1 else "dynamic"
    return {
        "ablation.dsts": "on" if dsts.enabled else "off",
        "ablation.routing": routing,
        "ablation.specialization": dsts.specialization if dsts.enabled else "none",
        "ablation.udl": cfg.udl.method if cfg.udl.enabled else "off",
        "ablation.updates_per_step": str(cfg.train.updates_per_step),
        "ablation.frames": "shuffled" if cfg.data.shuffle_frames else "ordered",
    }


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, "null" if v is None else str(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        batch = items[i : i + 100]
        retry(lambda b=batch: client.log_batch(run_id, params=b))


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    now = int(time.time() * 1000)
    items = [
        Metric(key, float(value), now, step)
        for key, value in sorted(metrics.items())
        if isinstance(value, (int, float))  # NaN too: an undefined statistic stays visible as NaN
    ]
    for i in range(0, len(items), 500):
        batch = items[i : i + 500]
        retry(lambda b=batch: client.log_batch(run_id, metrics=b))


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(k, str(v)) for k, v in sorted(tags.items())]
    retry(lambda: client.log_batch(run_id, tags=items))


def log_data(client: MlflowClient, run_id: str, cfg: Config, splits: Mapping[str, str]) -> None:
    """What ``mlflow.log_input`` logs, for each ``{split: context}``: a dataset named
    ``<dataset>/<split>`` whose digest is the data's DVC md5 (dsts/provenance.py) and whose source
    is ``data.root`` as the params give it; the md5 and where it came from are also tags."""
    md5, origin = provenance.data_md5(Path.cwd(), cfg.data.root)
    set_tags(client, run_id, {"data_md5": md5 or "none", "data_md5_source": origin})
    if md5 is None:
        return
    source = json.dumps({"uri": str(cfg.data.root)})
    inputs = [
        DatasetInput(
            Dataset(f"{cfg.data.dataset}/{split}", md5, "local", source),
            [InputTag("mlflow.data.context", context), InputTag("dvc.md5_source", origin)],
        )
        for split, context in splits.items()
    ]
    retry(lambda: client.log_inputs(run_id, datasets=inputs))


class Tracker:
    """The MLflow run of one (variant, seed)."""

    def __init__(self, cfg: Config, train_hash: str, stage: str | None = None):
        self.cfg = cfg
        self.train_hash = train_hash  # Config.train_hash: a change of training settings is a new run
        self.stage = stage or stage_name()
        self.uri, self.client, self.experiment_id = open_experiment(cfg)
        self.run_id: str | None = None

    def tags(self) -> dict[str, str]:
        """What the run is: set when it is created and again whenever a stage continues it."""
        tags = {
            "variant": self.cfg.variant,
            "seed": str(self.cfg.train.seed),
            "config_hash": self.train_hash,
            "dataset": self.cfg.data.dataset,
            "run_kind": RUN,
            **ablation_tags(self.cfg),
        }
        return {**tags, **dvc_tags()}

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
        """Continue ``run_id`` (or an unfinished run of this config), else open a new run. Each stage
        records its own ``git_commit.<stage>`` and ``git_dirty.<stage>``; ``git_commit`` and the
        ``mlflow.source.*`` tags are the creating stage's, and ``git_dirty`` becomes ``true`` once
        any stage ran on a dirty tree."""
        run_id = run_id if run_id and self.exists(run_id) else self.find_unfinished()
        state = commit, dirty, paths = code_state()
        per_stage = {f"git_commit.{self.stage}": commit, f"git_dirty.{self.stage}": dirty}
        if run_id is None:
            run = retry(
                lambda: self.client.create_run(
                    self.experiment_id,
                    run_name=f"{self.cfg.variant}-seed{self.cfg.train.seed}",
                    tags={**self.tags(), **source_tags(state), **per_stage},
                )
            )
            self.run_id = run.info.run_id
            self.log_params(self.cfg.flat())
        else:
            self.run_id = run_id
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            if dirty == "true":
                per_stage.update(git_dirty="true", git_dirty_paths=listing(paths))
            self.set_tags({**self.tags(), **per_stage})
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        log_params(self.client, self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        log_metrics(self.client, self.run_id, metrics, step or 0)

    def log_evaluation(self, metrics: dict[str, float], skip: Sequence[str] = ()) -> None:
        """The evaluation's numbers under their ``metrics.json`` names, at the step after the last
        epoch, so that no per-epoch point of the history is overwritten; ``skip``: keys that are
        copies of the history's last row."""
        skipped = set(skip)
        kept = {k: v for k, v in metrics.items() if k not in skipped}
        log_metrics(self.client, self.run_id, kept, self.cfg.train.epochs + 1)

    def log_data(self, splits: Mapping[str, str]) -> None:
        """``{split: context}``, e.g. ``{"train": "training"}``: see :func:`log_data`."""
        log_data(self.client, self.run_id, self.cfg, splits)

    def set_tag(self, key: str, value: str) -> None:
        retry(lambda: self.client.set_tag(self.run_id, key, value))

    def set_tags(self, tags: dict[str, str]) -> None:
        set_tags(self.client, self.run_id, tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            retry(lambda: self.client.set_terminated(self.run_id, status=status))

    def _system_metrics(self) -> Any:
        """A running ``system/*`` monitor when ``tracking.system_metrics`` is true (off by default)."""
        if not getattr(self.cfg.tracking, "system_metrics", False):
            return None
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, resume_logging=True, tracking_uri=self.uri)
        monitor.start()
        return monitor

    @contextlib.contextmanager
    def run(self, run_id: str | None = None) -> Iterator[Tracker]:
        """Open (or continue) the run; an exception marks it FAILED, Ctrl-C marks it KILLED."""
        self.start(run_id)
        monitor, status = None, "FINISHED"
        try:
            monitor = self._system_metrics()
            yield self
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if monitor is not None:
                monitor.finish()
            self.end(status)
