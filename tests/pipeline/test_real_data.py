"""Real data is an input of `dvc repro`, never an output: a full run leaves every file of the data set
as it was, inside or outside the workspace, caches none of it, and a change of the data reruns
training."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.pipeline.workspaces import digest, dvc, make_workspace, tiny_grid, write_diving48, write_finegym

pytestmark = pytest.mark.slow

FORMATS = {
    "diving48": (write_diving48, {"dataset": "diving48"}),
    "finegym": (
        write_finegym,
        {
            "dataset": "finegym",
            "finegym_train_list": "gym99_train_element_v1.1.txt",
            "finegym_test_list": "gym99_val_element.txt",
        },
    ),
}


def cached_files(workspace) -> set[str]:
    """The md5s in the workspace's DVC cache."""
    cache = workspace / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name for p in cache.rglob("*") if p.is_file()} if cache.exists() else set()


# Each format once and each place once: where the data lie is DVC's business and the same for every
# format (one ${data.root} dependency); how a format is read is tests/data/test_readers.py's. The queued
# experiments of tests/pipeline/test_dvc_experiments.py read Diving48 outside the workspace too.
@pytest.mark.parametrize(("kind", "place"), [("diving48", "inside"), ("finegym", "outside")])
def test_dvc_repro_reads_real_data_and_never_touches_it(tmp_path, kind, place):
    write, settings = FORMATS[kind]
    workspace = tmp_path / "repo"
    root = (workspace / "data" / kind) if place == "inside" else (tmp_path / "elsewhere" / kind)
    profile = tiny_grid("baseline")  # one variant: reading the data does not depend on it
    profile["data"].update(settings, root=str(root) if place == "outside" else f"data/{kind}")
    make_workspace(workspace, profile)
    write(root)
    before = digest(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    dvc(workspace, "repro")

    assert digest(root) == before, "dvc repro changed the data set"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes, "dvc repro rewrote the data set"
    metrics = json.loads((workspace / "runs" / "baseline" / "seed0" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/top1"] <= 1.0
    videos = sorted(root.rglob("*.mp4"))
    assert not {hashlib.md5(v.read_bytes()).hexdigest() for v in videos} & cached_files(workspace)
    assert "train@" not in dvc(workspace, "status", "--json").stdout

    # a changed annotation file reruns training; so does an added video
    listing = root / ("Diving48_V2_train.json" if kind == "diving48" else "gym99_train_element_v1.1.txt")
    original = listing.read_bytes()
    listing.write_bytes(original + b"\n")
    assert stale_trainings(workspace) == {"train@baseline-0"}
    listing.write_bytes(original)
    assert stale_trainings(workspace) == set()
    (videos[0].parent / "extra.mp4").write_bytes(videos[0].read_bytes())
    assert stale_trainings(workspace) == {"train@baseline-0"}


def stale_trainings(workspace) -> set[str]:
    return {
        name for name in json.loads(dvc(workspace, "status", "--json").stdout) if name.startswith("train@")
    }
