"""The generated benchmark: class design, cue locality, the round trip and byte-for-byte determinism."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dsts.data import DataError, probe, read_attributes, read_diving48, read_video, read_vocab
from dsts.data.generate import (
    ATTRIBUTES,
    COARSE,
    FINE,
    MAX_CLASSES,
    ClassSpec,
    class_specs,
    generate_benchmark,
    nearest_classes,
    render_clip,
)
from tests.data.conftest import TINY

KIND = {a["name"]: a["cue"] for a in ATTRIBUTES}


def test_class_design():
    specs = class_specs(MAX_CLASSES)
    assert [s.label for s in specs] == list(range(16))
    assert len({s.name for s in specs}) == 16
    assert Counter(s.cue for s in specs) == {"spatial": 8, "temporal": 8}
    near = nearest_classes(specs)
    for s in specs:
        partner = [t for t in specs if t.group == s.group and t.label != s.label]
        assert len(partner) == 1
        # the group shares every coarse attribute and differs in the cue attribute alone
        assert all(getattr(s, a) == getattr(partner[0], a) for a in COARSE)
        assert [a for a in FINE if getattr(s, a) != getattr(partner[0], a)] == [s.cue_attribute]
        assert near[s.label] == [(partner[0].label, s.cue_attribute)]
        assert s.cue == KIND[s.cue_attribute]
    # every coarse combination is one group, shared by its two classes only
    assert len({tuple(getattr(s, a) for a in COARSE) for s in specs}) == 8


def test_smaller_class_counts_stay_balanced():
    specs = class_specs(8)
    assert sorted(s.cue_attribute for s in specs[::2]) == sorted(FINE)
    assert Counter(s.cue for s in class_specs(4)) == {"spatial": 2, "temporal": 2}
    for bad in (0, 3, 18):
        with pytest.raises(DataError, match="classes must be even"):
            class_specs(bad)


def variant(spec: ClassSpec, **changes) -> ClassSpec:
    return dataclasses.replace(spec, **changes)


def differing_frames(a: np.ndarray, b: np.ndarray) -> list[int]:
    return [t for t in range(len(a)) if not np.array_equal(a[t], b[t])]


@pytest.mark.parametrize("seed", range(6))
def test_spatial_cues_show_in_a_few_frames_only(seed):
    """With the same seed, the two values of a spatial cue give clips that differ only in a few frames:
    the take-off (facing) or a few frames of the flight (position)."""
    base = class_specs(16)[0]
    front = render_clip(variant(base, facing="front"), (seed,))
    back = render_clip(variant(base, facing="back"), (seed,))
    frames = differing_frames(front, back)
    assert frames == list(range(len(frames))) and 3 <= len(frames) <= 5  # the take-off frames
    straight = render_clip(variant(base, position="STR"), (seed,))
    piked = render_clip(variant(base, position="PIKE"), (seed,))
    frames = differing_frames(straight, piked)
    assert 3 <= len(frames) <= 5 and frames == list(range(frames[0], frames[0] + len(frames)))
    assert frames[0] >= 4 and frames[-1] <= 13  # inside the flight


@pytest.mark.parametrize("seed", range(6))
def test_temporal_cues_change_the_whole_flight_but_not_the_take_off(seed):
    base = class_specs(16)[2]
    for attribute, (a, b) in (("rotation", ("forward", "backward")), ("somersaults", ("05som", "10som"))):
        one = render_clip(variant(base, **{attribute: a}), (seed,))
        two = render_clip(variant(base, **{attribute: b}), (seed,))
        frames = differing_frames(one, two)
        assert frames[0] >= 3  # the take-off is the same
        assert len(frames) >= 8  # every flight frame (bar a coincidence of angles)


def test_render_is_a_pure_function_of_the_seed():
    spec = class_specs(16)[5]
    a = render_clip(spec, (1, 2, 3), 12, 48)
    assert a.shape == (12, 48, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_clip(spec, (1, 2, 3), 12, 48))
    assert not np.array_equal(a, render_clip(spec, (1, 2, 4), 12, 48))


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
