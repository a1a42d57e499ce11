"""Writing the generated benchmark: the round trip through Diving48's format, and the same bytes
for the same seed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dsts.data import DataError, probe, read_attributes, read_diving48, read_video, read_vocab
from dsts.data.dives import ATTRIBUTES, class_specs
from dsts.data.generate import generate_benchmark
from tests.data.conftest import TINY


def test_round_trip(tiny_root):
    """generate -> read_diving48 -> decode, as a real download would be read."""
    for split, per_class in (
        ("train", TINY["clips_per_class_train"]),
        ("test", TINY["clips_per_class_test"]),
    ):
        table = read_diving48(tiny_root, split)
        assert len(table) == TINY["classes"] * per_class
        assert Counter(table["label"]) == {k: per_class for k in range(TINY["classes"])}
        assert (table["start_frame"] == 0).all() and (table["end_frame"] == TINY["frames"]).all()
        for path in table["path"]:
            assert probe(path) == TINY["frames"]
        clip = read_video(table["path"].iloc[0])
        assert clip.shape == (TINY["frames"], TINY["size"], TINY["size"], 3)
    vocab = read_vocab(tiny_root)
    specs = class_specs(TINY["classes"])
    assert vocab["name"].tolist() == [s.name for s in specs]
    assert vocab["cue"].tolist() == [s.cue for s in specs]
    assert json.loads((tiny_root / "Diving48_vocab.json").read_text())[0] == specs[0].vocab
    doc = read_attributes(tiny_root)
    assert [a["name"] for a in doc["attributes"]] == [a["name"] for a in ATTRIBUTES]
    assert [c["cue_attribute"] for c in doc["classes"]] == [s.cue_attribute for s in specs]
    train_names = set(read_diving48(tiny_root, "train")["video_id"])
    assert not train_names & set(read_diving48(tiny_root, "test")["video_id"])


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tiny_root, tmp_path):
    """Same seed: the same list files and the same mp4 bytes (so the same decoded frames), also with
    two encoding processes; another seed changes them."""
    again = tmp_path / "again"
    generate_benchmark(again, jobs=2, **TINY)
    want = folder_bytes(tiny_root)
    assert set(want) == set(folder_bytes(again))
    assert want == folder_bytes(again)
    other = tmp_path / "other"
    generate_benchmark(other, **{**TINY, "seed": 1})
    got = folder_bytes(other)
    assert got["Diving48_V2_train.json"] != want["Diving48_V2_train.json"]
    assert got["Diving48_vocab.json"] == want["Diving48_vocab.json"]
    videos = [k for k in want if k.startswith("rgb/")]
    assert all(got.get(k.replace("synth0", "synth1")) != want[k] for k in videos)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"size": 33}, "size must be even"),
        ({"frames": 6}, "frames must be >= 8"),
        ({"clips_per_class_train": 0}, "clips per class"),
        ({"classes": 5}, "classes must be even"),
    ],
)
def test_bad_generate_arguments(tmp_path, changes, message):
    with pytest.raises(DataError, match=message):
        generate_benchmark(tmp_path / "out", **{**TINY, **changes})
