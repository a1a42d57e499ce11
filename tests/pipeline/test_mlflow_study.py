"""What ``make ui`` shows after ``dvc repro``, read through the REST API of an MLflow server over a
workspace that a tiny ``dvc repro`` filled, ran the report again, then moved: one study run with the
report's files as artifacts and its summary as metrics, the runs of one variant found by the study
tag and by a search on the variant, tags and inputs the UI groups and filters on, and every
artifact found at the workspace's new place."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dsts.report import OUTPUTS
from dsts.tracking.study import member_query
from tests.pipeline.mlflow_rest import call, mlflow_server
from tests.pipeline.workspaces import TINY_GRID, dvc, make_workspace, run

pytestmark = pytest.mark.slow

SEEDS = [0, 1]  # two seeds, so that a search on the variant has more than one run to find


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> Path:
    """The tiny workspace after `dvc repro` and a forced rerun of the report, moved elsewhere."""
    grid = copy.deepcopy(TINY_GRID)
    grid["seeds"] = SEEDS
    workspace = make_workspace(tmp_path_factory.mktemp("study") / "repo", grid)
    dvc(workspace, "repro")
    dvc(workspace, "repro", "--force", "--single-item", "report")
    target = tmp_path_factory.mktemp("moved") / "repo"
    shutil.move(workspace, target)
    return target


def search(base: str, experiment_id: str, query: str) -> list[dict]:
    body = {"experiment_ids": [experiment_id], "filter": query, "max_results": 1000}
    return call(f"{base}/api/2.0/mlflow/runs/search", body).get("runs", [])


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_the_ui_shows_one_study_and_the_runs_of_each_variant(moved):
    relocated = run(
        moved, sys.executable, "-m", "pipeline.relocate_mlflow", "--uri", f"sqlite:///{moved / 'mlflow.db'}"
    )
    assert f"-> {(moved / 'mlartifacts').as_uri()}" in relocated.stdout  # what `make ui` runs first
    params = yaml.safe_load((moved / "params.yaml").read_text())
    summary = json.loads((moved / "reports" / "summary.json").read_text())
    lock = yaml.safe_load((moved / "dvc.lock").read_text())
    data_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/generated")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=moved, capture_output=True, text=True
    ).stdout.strip()

    store = f"sqlite:///{moved / 'mlflow.db'}"
    with mlflow_server("--backend-store-uri", store, cwd=moved, command="ui") as base:
        experiments = call(f"{base}/api/2.0/mlflow/experiments/search", max_results="10")["experiments"]
        (experiment_id,) = [e["experiment_id"] for e in experiments if e["name"] == "dsts-bench-generated"]

        # one study run, though the report ran twice, holding the report's files and numbers
        (study,) = search(base, experiment_id, "tags.run_kind = 'study'")
        key = tags_of(study)["study"]
        assert study["info"]["status"] == "FINISHED" and study["info"]["run_name"] == f"study-{key}"
        listed = call(f"{base}/api/2.0/mlflow/artifacts/list", run_id=study["info"]["run_id"])
        assert {f["path"] for f in listed["files"]} == set(OUTPUTS)
        fetched = call(f"{base}/get-artifact", path="ablation.md", run_uuid=study["info"]["run_id"])
        assert fetched["text"] == (moved / "reports" / "ablation.md").read_text()
        metrics = {m["key"]: m["value"] for m in study["data"]["metrics"]}
        assert metrics == pytest.approx(summary) and "dsts/top1_mean" in metrics
        study_params = {p["key"]: p["value"] for p in study["data"]["params"]}
        assert study_params["study.variants"] == ",".join(params["variants"])
        assert study_params["study.seeds"] == "0,1"

        for variant in params["variants"]:
            # the runs of one variant tagged with the study, and a search on the variant alone
            linked = search(base, experiment_id, f"{member_query(key)} and tags.variant = '{variant}'")
            by_param = search(base, experiment_id, f"params.variant = '{variant}'")
            assert sorted(int(tags_of(r)["seed"]) for r in linked) == SEEDS
            assert sorted(int(tags_of(r)["seed"]) for r in by_param) == SEEDS
            for found in linked:
                seed = tags_of(found)["seed"]
                folder = moved / "runs" / variant / f"seed{seed}"
                assert found["info"]["run_id"] == json.loads((folder / "tracking.json").read_text())["run_id"]
                check_run(base, found, folder, data_md5, head)


def check_run(base: str, found: dict, folder: Path, data_md5: str, head: str) -> None:
    """One (variant, seed) run: its tags, inputs, evaluation after the history, and its artifacts
    found at the workspace's new place."""
    run_id = found["info"]["run_id"]
    tags = tags_of(found)
    assert tags["run_kind"] == "run" and tags["ablation.dsts"] == (
        "off" if tags["variant"] == "baseline" else "on"
    )
    assert tags["git_dirty"] == "false"  # a committed tree and DVC's own outputs only
    assert tags["mlflow.source.git.commit"] == tags["git_commit"] == head
    assert tags["mlflow.source.name"] == "pipeline/train.py"
    assert tags["data_md5"] == data_md5 and tags["data_md5_source"] == "dvc.lock"
    inputs = {(d["dataset"]["name"], d["dataset"]["digest"]) for d in found["inputs"]["dataset_inputs"]}
    assert inputs == {("generated/train", data_md5), ("generated/test", data_md5)}

    saved = json.loads((folder / "metrics.json").read_text())
    metrics = {m["key"]: m["value"] for m in found["data"]["metrics"]}
    assert {k: metrics[k] for k in saved} == pytest.approx(saved)
    assert not any(k.startswith("system/") for k in metrics)  # tracking.system_metrics is off
    epochs = yaml.safe_load((folder / "config.yaml").read_text())["train"]["epochs"]
    history = call(f"{base}/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="test/top1")[
        "metrics"
    ]
    last = max(history, key=lambda m: m["step"])
    assert last["step"] == epochs + 1 and last["value"] == pytest.approx(saved["test/top1"])
    assert sum(m["step"] == epochs + 1 for m in history) == 1

    listed = {f["path"] for f in call(f"{base}/api/2.0/mlflow/artifacts/list", run_id=run_id)["files"]}
    assert {"model.pt", "metrics.json", "plots"} <= listed
    assert call(f"{base}/get-artifact", path="metrics.json", run_uuid=run_id) == saved
