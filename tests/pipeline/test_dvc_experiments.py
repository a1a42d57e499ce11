"""DVC experiments keep every result: queued experiments show numeric metrics, compare, draw their
plots and come back with `dvc exp apply`; a changed neutral setting retrains nothing; a DVC remote
shares results without retraining; real data outside the workspace reaches queued experiments."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.pipeline.workspaces import (
    TINY_GRID,
    dvc,
    make_workspace,
    queue_workers,
    run,
    set_params,
    tiny_grid,
    write_diving48,
)

pytestmark = pytest.mark.slow


def numeric_metrics(row: dict) -> dict[str, float]:
    """An experiment row of `dvc exp show --json`: its metrics files' numbers, by file and key."""
    out = {}
    for file, content in (row.get("data", {}).get("metrics") or {}).items():
        for key, value in (content.get("data") or {}).items():
            if isinstance(value, int | float):
                out[f"{file}:{key}"] = value
    return out


def experiments(workspace: Path) -> dict[str, dict]:
    """Name -> row of every experiment of the workspace's baseline commit."""
    shown = json.loads(dvc(workspace, "exp", "show", "--json").stdout)
    rows = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs") or []:
                rows[revision.get("name") or exp.get("name")] = revision
    return rows


def wait_for_queue(workspace: Path, count: int, timeout: float = 1500) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = dvc(workspace, "queue", "status").stdout
        done = status.count("Success")
        failed = [line.split()[1] for line in status.splitlines() if line.rstrip().endswith("Failed")]
        if failed:
            logs = dvc(workspace, "queue", "logs", failed[0], check=False)
            raise AssertionError(f"a queued experiment failed:\n{status}\n{logs.stdout[-3000:]}")
        if done >= count:
            return
        time.sleep(5)
    dvc(workspace, "queue", "kill", "--all", check=False)
    raise AssertionError(f"queued experiments did not finish in {timeout} s:\n{status}")


def test_queued_experiments_keep_metrics_plots_and_reports(tmp_path):
    """Two queued experiments of every stage kind, in seconds, reading a real data set that lies
    outside the workspace (a queued experiment runs in a temporary clone, so only an absolute root
    reaches it)."""
    profile = tiny_grid("dsts_udl")
    profile["data"].update(dataset="diving48", root=str(write_diving48(tmp_path / "Diving48")))
    workspace = make_workspace(tmp_path / "repo", profile)
    for lr in ("0.001", "0.004"):
        dvc(workspace, "exp", "run", "--queue", "-S", f"train.lr={lr}")
    with queue_workers(workspace, 2):
        wait_for_queue(workspace, 2)

    rows = experiments(workspace)
    assert len(rows) == 2, rows.keys()
    metrics = {name: numeric_metrics(row) for name, row in rows.items()}
    for name, values in metrics.items():
        assert any(k.endswith("metrics.json:test/top1") for k in values), (name, sorted(values)[:5])
        assert any(k.startswith("reports/summary.json:") for k in values), name
    first, second = sorted(rows)
    params = rows[first]["data"]["params"]
    assert (
        "ablations/dsts_udl.yaml" in params and params["ablations/dsts_udl.yaml"]["data"]
    )  # a variant's changes

    diff = json.loads(dvc(workspace, "exp", "diff", first, second, "--json").stdout)
    assert (
        diff["params"]["params.yaml"]["train.lr"]["old"] != diff["params"]["params.yaml"]["train.lr"]["new"]
    )
    plots = json.loads(dvc(workspace, "plots", "diff", first, second, "--json").stdout)["data"]
    for plot in ("top1_by_variant", "confusion"):
        revisions = {r for entry in plots[plot] for r in entry.get("revisions", [])}
        assert {first, second} <= revisions, (plot, revisions)

    dvc(workspace, "exp", "apply", first)
    summary = json.loads((workspace / "reports" / "summary.json").read_text())
    wanted = {
        k.split(":", 1)[1]: v for k, v in metrics[first].items() if k.startswith("reports/summary.json:")
    }
    assert {k: summary[k] for k in wanted} == wanted
    assert (workspace / "reports" / "ablation.md").is_file() and (
        workspace / "reports" / "top1_ci.png"
    ).is_file()
    assert (workspace / "runs" / "dsts_udl" / "seed0" / "predictions.csv").is_file()


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    """The tiny grid reproduced once, with its results committed (as a user commits dvc.lock)."""
    workspace = make_workspace(tmp_path_factory.mktemp("tiny") / "repo", TINY_GRID)
    dvc(workspace, "repro")
    run(workspace, "git", "add", "-A")
    run(workspace, "git", "commit", "-q", "-m", "results")
    return workspace


@pytest.mark.parametrize(
    ("key", "value", "stale"),
    [
        ("tracking.experiment", "renamed", set()),
        ("data.num_workers", 1, set()),
        ("eval.batch_size", 7, {"evaluate@baseline-0", "evaluate@dsts-0"}),
        ("train.lr", 0.005, {"train@baseline-0", "train@dsts-0", "evaluate@baseline-0", "evaluate@dsts-0"}),
    ],
)
def test_a_stage_reruns_only_for_the_params_it_depends_on(tiny_repo, key, value, stale):
    original = (tiny_repo / "params.yaml").read_text()
    try:
        set_params(tiny_repo, **{key: value})
        status = json.loads(dvc(tiny_repo, "status", "--json").stdout)
        assert {s for s in status if s.startswith(("train@", "evaluate@"))} == stale
    finally:
        (tiny_repo / "params.yaml").write_text(original)


def test_an_ablation_file_is_a_params_file(tiny_repo):
    ablation = tiny_repo / "ablations" / "dsts.yaml"
    original = ablation.read_text()
    try:
        ablation.write_text("model:\n  dsts:\n    num_neurons: 2\n")
        status = json.loads(dvc(tiny_repo, "status", "--json").stdout)
        assert {s for s in status if s.startswith("train@")} == {"train@dsts-0"}
        diff = dvc(tiny_repo, "params", "diff").stdout
        assert "ablations/dsts.yaml" in diff and "model.dsts.num_neurons" in diff
    finally:
        ablation.write_text(original)


def test_a_remote_shares_the_results_without_retraining(tiny_repo, tmp_path):
    remote = tmp_path / "remote"
    dvc(tiny_repo, "remote", "add", "-f", "shared", str(remote))
    dvc(tiny_repo, "push", "-r", "shared")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(tiny_repo), str(clone))
    dvc(clone, "remote", "add", "-f", "-d", "shared", str(remote))
    dvc(clone, "pull")
    for variant in TINY_GRID["variants"]:
        for name in ("model.pt", "metrics.json", "history.csv", "environment.json"):
            assert (clone / "runs" / variant / "seed0" / name).is_file(), (variant, name)
    assert (clone / "reports" / "ablation.md").is_file() and (clone / "data" / "generated" / "rgb").is_dir()
    status = dvc(clone, "status").stdout  # what DVC sees as changed, should a stage rerun
    again = dvc(clone, "repro")
    assert "Running stage" not in again.stdout, f"dvc status:\n{status}\ndvc repro:\n{again.stdout}"
    shutil.rmtree(clone)
