"""Stage ``prepare``: writes the generated benchmark atomically; bad input is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dsts.data import DataError, read_diving48, read_vocab

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--set",
    "data.generate.classes=2",
    "--set",
    "data.generate.clips_per_class_train=2",
    "--set",
    "data.generate.clips_per_class_val=1",
    "--set",
    "data.generate.clips_per_class_test=1",
    "--set",
    "data.generate.frames=8",
    "--set",
    "data.generate.size=16",
]


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.prepare", "--params", str(ROOT / "params.yaml"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_help():
    out = prepare("--help")
    assert out.returncode == 0 and "usage: python -m pipeline.prepare" in out.stdout and "--out" in out.stdout


def test_writes_the_benchmark_and_replaces_it(tmp_path):
    target = tmp_path / "generated"
    out = prepare(*SMALL, "--out", str(target), "--jobs", "1")
    assert out.returncode == 0, out.stderr
    assert "2 classes, 4 train, 2 validation and 2 test clips" in out.stdout
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted(
        [
            "Diving48_V2_test.json",
            "Diving48_V2_train.json",
            "Diving48_V2_val.json",
            "Diving48_attributes.json",
            "Diving48_vocab.json",
            "contact_sheet.png",
            "generated.json",
            "rgb",
        ]
    )
    assert len(read_diving48(target, "train")) == 4 and len(read_diving48(target, "test")) == 2
    assert len(read_diving48(target, "val")) == 2
    assert read_vocab(target)["cue"].tolist() == ["spatial", "spatial"]
    first = (target / "Diving48_V2_train.json").read_bytes()
    again = prepare(*SMALL, "--set", "data.generate.seed=1", "--out", str(target))
    assert again.returncode == 0, again.stderr
    assert (target / "Diving48_V2_train.json").read_bytes() != first
    assert len(list((target / "rgb").glob("*.mp4"))) == 8  # the old clips are gone
    assert leftovers(tmp_path) == []


def test_bad_config_is_one_line_and_writes_nothing(tmp_path):
    out = prepare(*SMALL, "--set", "data.generate.size=33", "--out", str(tmp_path / "generated"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("error: data.generate.size: 33 is impossible")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_older_complete_folder(tmp_path, monkeypatch):
    """A generation that fails half-way leaves the older benchmark as it was and no staging folder."""
    import pipeline.prepare as stage

    target = tmp_path / "generated"
    target.mkdir()
    (target / "Diving48_V2_train.json").write_text("[]\n")
    (target / "generated.json").write_text("{}\n")  # an older benchmark that prepare made

    def broken(root, **kwargs):
        (Path(root) / "rgb").mkdir(parents=True)
        (Path(root) / "rgb" / "half.mp4").write_bytes(b"partial")
        raise DataError("generate: the disk is full (simulated)")

    monkeypatch.setattr(stage, "generate_benchmark", broken)
    monkeypatch.setattr(sys, "argv", ["prepare", "--params", str(ROOT / "params.yaml"), "--out", str(target)])
    with pytest.raises(DataError, match="simulated"):
        stage.main()
    assert sorted(p.name for p in target.iterdir()) == ["Diving48_V2_train.json", "generated.json"]
    assert (target / "Diving48_V2_train.json").read_text() == "[]\n"
    assert leftovers(tmp_path) == []


def test_a_folder_it_did_not_make_is_never_replaced(tmp_path):
    """A real data set at --out (no generated.json) is refused with one line and left as it was."""
    (tmp_path / "Diving48_V2_train.json").write_text('[{"vid_name": "a", "label": 0}]')
    (tmp_path / "rgb").mkdir()
    (tmp_path / "rgb" / "a.mp4").write_bytes(b"the user's video")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = prepare(*SMALL, "--out", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a generated benchmark (no generated.json); prepare replaces only a folder it made"
    ]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")]
