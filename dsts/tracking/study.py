"""The study run: one per params state, that the report stage creates or updates (part of the MLflow
glue of ``dsts/tracking``; the report stage calls :func:`log_study`).

Its key is a hash of what decides the study's numbers (:func:`study_state`); each (variant, seed)
run it summarizes carries the tag :func:`member_tag` of that key. docs/tracking.md lists every key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsts.config import EVALUATE_KEYS, Config, load_config, select
from dsts.runs import run_folder
from dsts.tracking import (
    STUDY,
    ablation_tags,
    code_state,
    dvc_tags,
    listing,
    log_data,
    log_metrics,
    log_params,
    open_experiment,
    retry,
    set_tags,
    source_tags,
)

__all__ = ["MEMBER", "StudyRun", "log_study", "member_tag", "member_query", "study_state"]

MEMBER = "true"  # the value of a run's member tag


@dataclass
class StudyRun:
    """What :func:`log_study` did: the study run, its key, and the (variant, seed) runs it links."""

    run_id: str
    key: str
    name: str
    linked: dict[str, str] = field(default_factory=dict)  # "variant/seedS" -> run id
    missing: list[str] = field(default_factory=list)  # "variant/seedS" without a run in the store


def study_state(
    params: str | Path, variants: Sequence[str], seeds: Sequence[int], settings: Mapping[str, Any]
) -> tuple[str, dict[str, str], dict[str, Config]]:
    """``(key, params, configs)`` of a study. The key is a hash of what decides its numbers: the
    variants and seeds, the report's ``settings`` (comparisons, alpha, power) and each variant's
    evaluation settings (``dsts.config.EVALUATE_KEYS`` less the seed). Params: ``study.*``, the
    settings every variant shares under their usual names, and the others as ``<variant>/<key>``."""
    configs = {v: load_config(params, variant=v, seed=seeds[0]) for v in variants}
    resolved = {}
    for variant, cfg in configs.items():
        values = {k: v for k, v in select(cfg.flat(), EVALUATE_KEYS).items() if k != "train.seed"}
        resolved[variant] = {**values, **ablation_tags(cfg)}
    state = {"variants": list(variants), "seeds": list(seeds), "settings": dict(settings), **resolved}
    key = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:12]
    first = resolved[variants[0]]
    shared = {k: v for k, v in first.items() if all(resolved[o].get(k) == v for o in variants)}
    out = {"study.variants": ",".join(variants), "study.seeds": ",".join(map(str, seeds))}
    out.update({f"study.{k}": str(v) for k, v in settings.items()})
    out.update({k: str(v) for k, v in shared.items()})
    for variant in variants:
        out.update({f"{variant}/{k}": str(v) for k, v in resolved[variant].items() if k not in shared})
    return key, out, configs


def _member_ids(runs_dir: str | Path, variants: Sequence[str], seeds: Sequence[int]) -> dict[str, str]:
    """``{"variant/seedS": run id}`` from each run folder's ``tracking.json`` (the train stage's)."""
    ids = {}
    for variant in variants:
        for seed in seeds:
            file = run_folder(variant, seed, runs_dir).tracking
            try:
                run_id = json.loads(file.read_text()).get("run_id") if file.is_file() else None
            except (OSError, ValueError, AttributeError):
                run_id = None
            if run_id:
                ids[f"{variant}/seed{seed}"] = str(run_id)
    return ids


def _study_runs(client: Any, experiment_id: str, key: str) -> list[Any]:
    """The live study runs of ``key``, the first created first (ties by run id): every report that
    sees the same runs picks the same one."""
    query = f"tags.run_kind = '{STUDY}' and tags.study = '{key}'"
    runs = retry(lambda: client.search_runs([experiment_id], query, max_results=1000))
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def member_tag(key: str) -> str:
    """The tag that links a run to study ``key``: one tag per study, so that two reports running at
    once each write only their own link and never overwrite the other's (a shared list of keys,
    read and written back, loses one of them)."""
    return f"study.{key}"


def member_query(key: str) -> str:
    """The MLflow search for the runs study ``key`` summarizes (its key has a dot: backticks)."""
    return f"tags.`{member_tag(key)}` = '{MEMBER}'"


def log_study(
    params: str | Path,
    variants: Sequence[str],
    seeds: Sequence[int],
    settings: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: Sequence[str | Path],
    runs_dir: str | Path = "runs",
) -> StudyRun | None:
    """Create or update the study run of this params state: its params, ``metrics`` (the report's
    summary, at step 0), ``artifacts`` (the report's files), tags, and the member tag
    (:func:`member_tag`) of every (variant, seed) run it summarizes; a run can belong to several
    studies, and a run that no longer belongs to this one loses its tag. None when
    ``tracking.enabled`` is false or no run folder names an MLflow run (nothing to link)."""
    key, study_params, configs = study_state(params, variants, seeds, settings)
    cfg = configs[variants[0]]
    members = _member_ids(runs_dir, variants, seeds)
    if not cfg.tracking.enabled or not members:
        return None
    _, client, experiment_id = open_experiment(cfg)
    state = commit, dirty, paths = code_state()
    exp_name = os.environ.get("DVC_EXP_NAME")
    found = _study_runs(client, experiment_id, key)
    if not found:
        tags = {"run_kind": STUDY, "study": key, **source_tags(state)}
        mine = retry(lambda: client.create_run(experiment_id, run_name=f"study-{key}", tags=tags)).info.run_id
        # Another report of the same params state may have searched, found nothing and created its
        # own at the same moment: both now see both, and both keep the first.
        found = _study_runs(client, experiment_id, key)
        if found[0].info.run_id != mine:
            retry(lambda: client.delete_run(mine))
    run_id, name = found[0].info.run_id, exp_name or found[0].info.run_name
    for extra in found[1:]:  # left by an earlier race; one still running deletes itself
        if extra.info.status != "RUNNING":
            retry(lambda r=extra: client.delete_run(r.info.run_id))
    retry(lambda: client.update_run(run_id, status="RUNNING", name=name))
    log_params(client, run_id, study_params)  # the same values again on an update: MLflow accepts that
    result = StudyRun(run_id, key, name)
    tag = member_tag(key)
    try:
        for label, member in members.items():
            try:
                run = retry(lambda m=member: client.get_run(m))
            except Exception:  # trained against another store
                result.missing.append(label)
                continue
            if run.data.tags.get(tag) != MEMBER:
                retry(lambda m=member: client.set_tag(m, tag, MEMBER))
            result.linked[label] = member
        stale = retry(lambda: client.search_runs([experiment_id], member_query(key), max_results=10000))
        for run in stale:
            if run.info.run_id not in result.linked.values():
                retry(lambda r=run: client.delete_tag(r.info.run_id, tag))
        log_metrics(client, run_id, metrics, 0)
        for path in artifacts:
            if Path(path).is_file():
                retry(lambda p=path: client.log_artifact(run_id, str(p)))
        log_data(client, run_id, cfg, {"train": "training", "test": "evaluation"})
        note = (
            f"Ablation study of {len(variants)} variants x {len(seeds)} seeds ({', '.join(variants)}).\n\n"
            f"Its runs: search ``{member_query(key)} and tags.run_kind = 'run'``, group by `variant`. "
            "The report: artifacts `ablation.md`, the CSVs and figures; metrics as in `summary.json`."
        )
        tags = {
            "study_name": name,
            "study_runs": str(len(result.linked)),
            "study_missing": listing(result.missing) or "none",
            "mlflow.note.content": note,
            **dvc_tags(),
        }
        tags.update({"git_commit.report": commit, "git_dirty.report": dirty})
        if dirty == "true":
            tags.update(git_dirty="true", git_dirty_paths=listing(paths))
        set_tags(client, run_id, tags)
    except BaseException:
        retry(lambda: client.set_terminated(run_id, status="FAILED"))
        raise
    retry(lambda: client.set_terminated(run_id, status="FINISHED"))
    return result
