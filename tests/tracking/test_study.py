"""The study run: one per params state, found again and updated by a rerun (named after the DVC
experiment when there is one), its params, metrics and artifacts, and a member tag on the runs it
summarizes that keeps every study a shared run belongs to, survives a concurrent report, and drops a
replaced run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dsts.config import load_config, read_yaml
from dsts.runs import run_folder
from dsts.tracking import Tracker
from dsts.tracking import study as study_module
from dsts.tracking.study import MEMBER, log_study, member_query, member_tag, study_state

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
VARIANTS = ["baseline", "dsts"]
SETTINGS = {"comparisons": "dsts_vs_baseline", "alpha": 0.05, "power": 0.8}


def train_run(variant: str, seed: int, runs: Path) -> str:
    """What the train stage leaves: an MLflow run and the run folder's tracking.json."""
    cfg = load_config(PARAMS, variant=variant, seed=seed)
    with Tracker(cfg, cfg.train_hash("cpu"), stage="train").run() as t:
        t.log_evaluation({"test/top1": 0.5})
    folder = run_folder(variant, seed, runs)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.tracking.write_text(json.dumps({"run_id": t.run_id}))
    return t.run_id


@pytest.fixture
def study(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    ids = {(v, s): train_run(v, s, runs) for v in VARIANTS for s in (0, 1)}
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "ablation.md").write_text("# Ablation\n")
    (reports / "summary.json").write_text("{}")
    artifacts = [reports / "ablation.md", reports / "summary.json", reports / "absent.png"]

    def log(seeds=(0, 1), metrics=None, params=PARAMS):
        metrics = metrics or {
            "dsts/top1_mean": 0.5,
            "dsts/top1_ci_low": 0.4,
            "dsts_vs_baseline/top1_p_value": 0.03,
        }
        return log_study(params, VARIANTS, list(seeds), SETTINGS, metrics, artifacts, runs)

    return log, ids, runs


def search(client, experiment_id, query):
    return client.search_runs([experiment_id], query, max_results=1000)


def test_one_study_run_with_the_report_and_links_to_its_runs(study):
    log, ids, _ = study
    result = log()
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    client, exp = tracker.client, tracker.experiment_id
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == f"study-{result.key}"
    assert run.data.tags["run_kind"] == "study" and run.data.tags["study"] == result.key
    assert run.data.tags["study_runs"] == "4" and run.data.tags["study_missing"] == "none"
    assert run.data.metrics == {
        "dsts/top1_mean": 0.5,
        "dsts/top1_ci_low": 0.4,
        "dsts_vs_baseline/top1_p_value": 0.03,
    }
    params = run.data.params
    assert params["study.variants"] == "baseline,dsts" and params["study.seeds"] == "0,1"
    assert params["study.alpha"] == "0.05"
    assert params["train.lr"] == str(read_yaml(PARAMS)["train"]["lr"])  # shared: its usual name
    # a key the variants set apart (their ablation files): one key per variant, none shared
    assert "model.dsts.enabled" not in params
    assert params["baseline/model.dsts.enabled"] == "False" and params["dsts/model.dsts.enabled"] == "True"
    assert params["baseline/ablation.dsts"] == "off" and params["ablation.udl"] == "off"
    assert "train.seed" not in params and "baseline/train.seed" not in params
    assert {a.path for a in client.list_artifacts(result.run_id)} == {"ablation.md", "summary.json"}

    members = search(client, exp, f"{member_query(result.key)} and tags.run_kind = 'run'")
    assert {r.info.run_id for r in members} == set(ids.values()) == set(result.linked.values())
    dsts = search(client, exp, f"{member_query(result.key)} and tags.variant = 'dsts'")
    assert sorted(r.data.tags["seed"] for r in dsts) == ["0", "1"]


def test_a_rerun_updates_the_same_study_run(study, monkeypatch):
    log, _, _ = study
    first = log()
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-dace")
    again = log(metrics={"dsts/top1_mean": 0.75})
    assert (again.run_id, again.key) == (first.run_id, first.key)
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    studies = search(tracker.client, tracker.experiment_id, "tags.run_kind = 'study'")
    assert [r.info.run_id for r in studies] == [first.run_id]
    run = studies[0]
    assert run.info.run_name == "lucky-dace" and run.data.tags["dvc_experiment"] == "lucky-dace"
    assert run.data.metrics["dsts/top1_mean"] == 0.75


def test_a_run_shared_by_two_studies_keeps_both_links(study):
    log, ids, _ = study
    both_seeds, seed0 = log(), log(seeds=(0,))
    assert both_seeds.key != seed0.key and both_seeds.run_id != seed0.run_id
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    tags = {key: studies_of(tracker.client.get_run(run_id)) for key, run_id in ids.items()}
    assert tags[("dsts", 0)] == {both_seeds.key, seed0.key}
    assert tags[("dsts", 1)] == {both_seeds.key}


def test_a_concurrent_report_keeps_the_other_studys_links(study, monkeypatch):
    """Report A reads the runs before report B links them, and writes after: B's links survive."""
    log, ids, _ = study
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    before = {run_id: tracker.client.get_run(run_id) for run_id in ids.values()}
    seed0 = log(seeds=(0,))  # B
    opened = study_module.open_experiment

    def stale_reads(cfg):  # A's client sees each run as it was before B linked it
        tracking, client, experiment_id = opened(cfg)
        fresh = client.get_run
        monkeypatch.setattr(client, "get_run", lambda run_id: before.get(run_id) or fresh(run_id))
        return tracking, client, experiment_id

    monkeypatch.setattr(study_module, "open_experiment", stale_reads)
    both_seeds = log()  # A
    for (variant, seed), run_id in ids.items():
        expected = {both_seeds.key, seed0.key} if seed == 0 else {both_seeds.key}
        assert studies_of(tracker.client.get_run(run_id)) == expected, (variant, seed)


def test_two_reports_creating_the_study_at_once_keep_one_run(study, monkeypatch):
    """Report A searched for the study run and found none; report B created it before A created its
    own. A sees both, deletes its own and updates B's: one study run, whichever report finishes last."""
    log, _, _ = study
    other = log()  # B
    opened = study_module.open_experiment
    created = []

    def late_search(cfg):  # A's first search ran before B's run existed
        tracking, client, experiment_id = opened(cfg)
        search_runs, create_run = client.search_runs, client.create_run
        searches = []

        def stale_first(*a, **k):
            searches.append(a)
            return [] if len(searches) == 1 else search_runs(*a, **k)

        monkeypatch.setattr(client, "search_runs", stale_first)

        def create(*a, **k):
            created.append(create_run(*a, **k))
            return created[-1]

        monkeypatch.setattr(client, "create_run", create)
        return tracking, client, experiment_id

    monkeypatch.setattr(study_module, "open_experiment", late_search)
    mine = log(metrics={"dsts/top1_mean": 0.75})  # A
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    client = tracker.client
    studies = search(client, tracker.experiment_id, "tags.run_kind = 'study'")
    assert [r.info.run_id for r in studies] == [other.run_id] == [mine.run_id]
    assert len(created) == 1 and created[0].info.run_id != other.run_id
    assert client.get_run(created[0].info.run_id).info.lifecycle_stage == "deleted"
    assert studies[0].info.status == "FINISHED" and studies[0].data.metrics["dsts/top1_mean"] == 0.75


def test_a_duplicate_study_run_left_by_a_race_is_removed(study):
    log, _, _ = study
    first = log()
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    client = tracker.client
    tags = {"run_kind": "study", "study": first.key}
    duplicate = client.create_run(tracker.experiment_id, run_name="late", tags=tags).info.run_id
    client.set_terminated(duplicate)
    assert log().run_id == first.run_id
    studies = search(client, tracker.experiment_id, "tags.run_kind = 'study'")
    assert [r.info.run_id for r in studies] == [first.run_id]
    assert client.get_run(duplicate).info.lifecycle_stage == "deleted"


def studies_of(run) -> set[str]:
    """The keys of the studies whose member tag a run carries."""
    return {
        k.removeprefix("study.") for k, v in run.data.tags.items() if k.startswith("study.") and v == MEMBER
    }


def test_a_replaced_run_loses_the_link(study):
    log, ids, runs = study
    first = log()
    retrained = train_run("dsts", 1, runs)  # a new run of (dsts, 1); tracking.json names it now
    again = log()
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    assert member_tag(first.key) not in tracker.client.get_run(ids[("dsts", 1)]).data.tags
    assert first.key == again.key and studies_of(tracker.client.get_run(retrained)) == {first.key}
    assert again.linked["dsts/seed1"] == retrained


def test_runs_missing_from_the_store_are_named(study):
    log, _, runs = study
    run_folder("baseline", 1, runs).tracking.write_text(json.dumps({"run_id": "0" * 32}))
    result = log()
    assert result.missing == ["baseline/seed1"] and len(result.linked) == 3
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    assert tracker.client.get_run(result.run_id).data.tags["study_missing"] == "baseline/seed1"


def test_no_study_without_tracking_or_tracked_runs(study, tmp_path):
    log, _, runs = study
    params = yaml.safe_load(PARAMS.read_text())
    params["tracking"]["enabled"] = False
    off = tmp_path / "off" / "params.yaml"
    off.parent.mkdir()
    off.write_text(yaml.safe_dump(params))
    (off.parent / "ablations").symlink_to(ROOT / "ablations")
    assert log(params=off) is None
    for variant in VARIANTS:
        for seed in (0, 1):
            run_folder(variant, seed, runs).tracking.write_text('{"run_id": ""}')
    assert log() is None
    tracker = Tracker(load_config(PARAMS, variant="dsts", seed=0), "x")
    assert search(tracker.client, tracker.experiment_id, "tags.run_kind = 'study'") == []


def test_the_key_follows_what_decides_the_numbers_only():
    key, _, _ = study_state(PARAMS, VARIANTS, [0, 1], SETTINGS)
    assert study_state(PARAMS, VARIANTS, [0, 1], SETTINGS)[0] == key
    assert study_state(PARAMS, VARIANTS, [0, 1, 2], SETTINGS)[0] != key
    assert study_state(PARAMS, VARIANTS, [0, 1], {**SETTINGS, "alpha": 0.01})[0] != key
    assert study_state(PARAMS, ["dsts", "baseline"], [0, 1], SETTINGS)[0] != key
