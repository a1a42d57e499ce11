"""dvc.yaml agrees with the library: the params each stage depends on are the config's lists, and
the paths it declares are the run folder's and the report's files."""

from __future__ import annotations

from pathlib import Path

import yaml

from dsts.config import EVALUATE_KEYS, TRAIN_KEYS
from dsts.report import OUTPUTS
from dsts.runs import RunFolder

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
ABLATION = {"ablations/${item.variant}.yaml": None}


def params_of(stage: str) -> list:
    return STAGES[stage]["params"]


def test_train_and_evaluate_depend_on_the_configs_lists():
    assert params_of("train") == [*TRAIN_KEYS, ABLATION]
    assert params_of("evaluate") == [*EVALUATE_KEYS, ABLATION]
    assert "${data.root}" in STAGES["train"]["deps"] and "${data.root}" in STAGES["evaluate"]["deps"]


def names(entries: list) -> set[str]:
    out = set()
    for entry in entries:
        path = entry if isinstance(entry, str) else next(iter(entry))
        out.add(path.removeprefix("runs/${item.variant}/seed${item.seed}/").removeprefix("reports/"))
    return out


def test_declared_paths_are_the_run_folders_and_the_reports():
    folder = RunFolder(Path("."))
    train = names(STAGES["train"]["outs"] + STAGES["train"]["plots"])
    evaluate = names(STAGES["evaluate"]["outs"] + STAGES["evaluate"]["metrics"] + STAGES["evaluate"]["plots"])
    files = {
        folder.model,
        folder.history,
        folder.val_correct,
        folder.timing,
        folder.environment,
        folder.tracking,
        folder.metrics,
        folder.per_class,
        folder.predictions,
        folder.cost,
        folder.plots,
    }
    assert {str(f) for f in files} <= train | evaluate
    assert names(STAGES["report"]["outs"] + STAGES["report"]["metrics"]) == set(OUTPUTS)


def test_real_data_is_never_an_output():
    outs = [
        next(iter(o)) if isinstance(o, dict) else o
        for stage in STAGES.values()
        for o in stage.get("outs", [])
    ]
    assert not any("data.root" in o for o in outs)
    assert STAGES["prepare"]["outs"] == ["data/generated"]
