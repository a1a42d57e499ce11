"""dsts.report.load: the study from the params file and the run files, with one-line errors that
name the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from dsts.config import ConfigError
from dsts.errors import DSTSError
from dsts.report.load import Run, load_runs, read_comparisons, read_settings, read_study
from tests.report.fakes import fake_metrics, write_fake_runs

ROOT = Path(__file__).resolve().parents[2]


def write_params(folder: Path, **tree) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_read_study(tmp_path):
    assert read_study(write_params(tmp_path, variants=["a", "b"], seeds=[0, 2])) == (["a", "b"], [0, 2])


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"seeds": [0]}, "variants: expected a non-empty list"),
        ({"variants": [], "seeds": [0]}, "variants: expected a non-empty list"),
        ({"variants": ["a", 1], "seeds": [0]}, "variants: expected a non-empty list"),
        ({"variants": ["a", "a"], "seeds": [0]}, "variants: a name is listed twice"),
        ({"variants": ["a"], "seeds": []}, "seeds: expected a non-empty list"),
        ({"variants": ["a"], "seeds": [0, -1]}, "seeds: expected a non-empty list"),
        ({"variants": ["a"], "seeds": [True]}, "seeds: expected a non-empty list"),
        ({"variants": ["a"], "seeds": [1, 1]}, "seeds: a seed is listed twice"),
    ],
)
def test_read_study_rejects_bad_lists(tmp_path, tree, message):
    path = write_params(tmp_path, **tree)
    with pytest.raises(ConfigError, match=message) as info:
        read_study(path)
    assert "\n" not in str(info.value)


def test_read_comparisons(tmp_path):
    path = write_params(tmp_path, report={"comparisons": [["dsts", "baseline"], ["shuffled", "baseline"]]})
    assert read_comparisons(path) == [("dsts", "baseline"), ("shuffled", "baseline")]
    assert read_comparisons(write_params(tmp_path, report={"comparisons": []})) == []
    assert read_comparisons(write_params(tmp_path, report={"confusion_run": "dsts/seed0"})) is None
    assert read_comparisons(write_params(tmp_path, variants=["dsts"])) is None


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ("dsts,baseline", "expected a list of [first, second] pairs"),
        ([["dsts"]], "expected a list of [first, second] pairs"),
        ([["dsts", "baseline", "static"]], "expected a list of [first, second] pairs"),
        ([["dsts", 1]], "expected a list of [first, second] pairs"),
        ([["dsts", "dsts"]], "pairs of two different variant names"),
        ([["dsts", "baseline"], ["dsts", "baseline"]], "report.comparisons: a pair is listed twice"),
    ],
)
def test_read_comparisons_rejects_bad_pairs(tmp_path, pairs, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        read_comparisons(write_params(tmp_path, report={"comparisons": pairs}))
    assert "\n" not in str(info.value)


def test_read_settings_from_the_ablation_files(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    path = write_params(tmp_path, **params)
    (tmp_path / "ablations").symlink_to(ROOT / "ablations", target_is_directory=True)
    settings = read_settings(path, ["baseline", "static", "dsts_udl"], 0)
    assert settings["baseline"]["dsts"] is False and settings["baseline"]["udl"] == "no"
    assert settings["static"]["dsts"] is True and settings["static"]["num_neurons"] == 1
    assert settings["dsts_udl"]["udl"] != "no"


def test_load_runs_reads_every_file(tmp_path):
    fake = write_fake_runs(tmp_path, ["static", "dsts"], [0, 1], latency=3.5)
    runs = load_runs(tmp_path, ["static", "dsts"], [0, 1])
    assert [(r.variant, r.seed) for r in runs] == [("static", 0), ("static", 1), ("dsts", 0), ("dsts", 1)]
    run = runs[2]
    assert isinstance(run, Run) and run.folder == tmp_path / "dsts" / "seed0"
    assert run.metrics == fake[("dsts", 0)]
    assert [row["epoch"] for row in run.history] == [1.0, 2.0, 3.0]
    assert run.timing == {"train_seconds": 12.5, "data_seconds": 1.0}
    assert run.cost == {"latency_ms": 3.5}


def test_timing_and_cost_files_are_optional(tmp_path):
    write_fake_runs(tmp_path, ["dsts"], [0], latency=None)
    (tmp_path / "dsts" / "seed0" / "timing.json").unlink()
    (run,) = load_runs(tmp_path, ["dsts"], [0])
    assert run.timing == {} and run.cost == {}


def test_missing_and_malformed_run_files_name_the_file(tmp_path):
    write_fake_runs(tmp_path, ["dsts"], [0])
    folder = tmp_path / "dsts" / "seed0"

    def error() -> str:
        with pytest.raises(DSTSError) as info:
            load_runs(tmp_path, ["dsts"], [0])
        assert "\n" not in str(info.value)
        return str(info.value)

    with pytest.raises(DSTSError, match=r"dsts/seed1/metrics.json: missing"):
        load_runs(tmp_path, ["dsts"], [0, 1])
    (folder / "metrics.json").write_text("{not json")
    assert "metrics.json: not readable JSON" in error()
    (folder / "metrics.json").write_text(json.dumps({"test/top1": "high", "test/mean_class_accuracy": 0.3}))
    assert "'test/top1' is not a number" in error()
    (folder / "metrics.json").write_text(json.dumps({"test/mean_class_accuracy": 0.3}))
    assert "no finite 'test/top1'" in error()
    (folder / "metrics.json").write_text(json.dumps(fake_metrics("dsts", 0)))
    (folder / "cost.json").write_text(json.dumps({"latency_ms": "fast"}))
    assert f"{folder / 'cost.json'}: 'latency_ms' is not a number" in error()
    (folder / "cost.json").unlink()
    (folder / "history.csv").unlink()
    assert f"{folder / 'history.csv'}: missing" in error()


def test_no_variant_or_seed(tmp_path):
    with pytest.raises(DSTSError, match="variants: the list of variants is empty"):
        load_runs(tmp_path, [], [0])
    with pytest.raises(DSTSError, match="seeds: the list of seeds is empty"):
        load_runs(tmp_path, ["dsts"], [])
