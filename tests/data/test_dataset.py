"""Datasets and loaders: items, views, frame ranges, determinism, caching and bad videos."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsts.data import DataError, build_dataset, build_loader, set_epoch
from dsts.data.dataset import held_out
from dsts.data.sampling import segment_indices
from dsts.data.transforms import MEAN, STD
from tests.data.conftest import numbered_frames, tiny_config, write_json, write_lossless


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """The frame index each frame of a (3, T, h, w) clip of ``numbered_frames`` shows."""
    red = clip[0, :, 0, 0] * STD[0] + MEAN[0]
    return [int(round(v * 255)) // 3 for v in red.tolist()]


@pytest.fixture(scope="module")
def numbered_root(tmp_path_factory) -> Path:
    """A Diving48 layout of lossless numbered videos (20 and 6 frames) and a train list."""
    root = tmp_path_factory.mktemp("numbered")
    write_lossless(root / "rgb" / "long.mp4", numbered_frames(20))
    write_lossless(root / "rgb" / "short.mp4", numbered_frames(6))
    write_json(
        root / "Diving48_V2_train.json",
        [
            {"vid_name": "long", "label": 0, "start_frame": 4, "end_frame": 12},
            {"vid_name": "short", "label": 1, "start_frame": 0, "end_frame": 6},
            {"vid_name": "long", "label": 1, "start_frame": 0, "end_frame": 500},
            {"vid_name": "long", "label": 0, "start_frame": 7, "end_frame": 7},
        ],
    )
    return root


def numbered_config(root: Path, **changes):
    fields = {"dataset": "diving48", "num_frames": 4, "resize": 16, "crop": 16}
    fields.update(changes)
    return tiny_config(root, **fields)


@pytest.mark.parametrize("cache", [True, False])
def test_test_clips_take_segment_centres_within_the_range(numbered_root, cache):
    ds = build_dataset(numbered_config(numbered_root, cache=cache), "train", train=False)
    assert ds.num_classes == 2 and len(ds) == 4
    clips = [ds[i][0] for i in range(4)]
    assert all(c.shape == (1, 3, 4, 16, 16) for c in clips)
    assert frame_numbers(clips[0][0]) == [4 + i for i in segment_indices(8, 4, False)]  # [4, 12)
    assert frame_numbers(clips[1][0]) == [0, 2, 3, 5]  # 6 frames: bounds 0, 1, 3, 4, 6
    assert frame_numbers(clips[2][0]) == [i for i in segment_indices(20, 4, False)]  # end clamped to 20
    assert frame_numbers(clips[3][0]) == [7, 7, 7, 7]  # start == end: the single frame, repeated


def test_short_clip_is_padded_by_repeating_frames(numbered_root):
    ds = build_dataset(numbered_config(numbered_root, num_frames=9), "train", train=False)
    assert frame_numbers(ds[1][0][0]) == [0, 0, 1, 2, 2, 3, 4, 4, 5]  # floor(k * 6 / 9)


@pytest.mark.parametrize("cache", [True, False])
def test_training_frames_stay_in_range_one_per_segment(numbered_root, cache):
    ds = build_dataset(numbered_config(numbered_root, cache=cache), "train", train=True, seed=3)
    for epoch in range(5):
        ds.set_epoch(epoch)
        got = frame_numbers(ds[0][0])
        assert [4 <= g < 12 for g in got] == [True] * 4
        assert [(g - 4) // 2 for g in got] == [0, 1, 2, 3]


def test_dense_sampling_views(numbered_root):
    cfg = numbered_config(numbered_root, sampling="dense", dense_stride=3, test_clips=2)
    ds = build_dataset(cfg, "train", train=False)
    clip, _ = ds[2]  # the whole 20-frame video: window of 10 frames, room 10
    assert clip.shape == (2, 3, 4, 16, 16)
    assert frame_numbers(clip[0]) == [2, 5, 8, 11]  # start floor(10 * 1 / 4)
    assert frame_numbers(clip[1]) == [7, 10, 13, 16]  # start floor(10 * 3 / 4)


def test_shuffled_frames_are_a_fixed_permutation_wherever_the_data_lies(numbered_root, tmp_path):
    copies = [tmp_path / "a", tmp_path / "b" / "deeper"]
    for root in copies:
        shutil.copytree(numbered_root, root)
    plain = build_dataset(numbered_config(copies[0]), "train", train=False)
    shuffled = [build_dataset(numbered_config(r, shuffle_frames=True), "train", train=False) for r in copies]
    orders = [[frame_numbers(ds[i][0][0]) for i in range(len(ds))] for ds in shuffled]
    assert orders[0] == orders[1]  # the permutation follows the clip, not the folder it is read from
    want = [frame_numbers(plain[i][0][0]) for i in range(len(plain))]
    assert [sorted(o) for o in orders[0]] == [sorted(w) for w in want]
    assert any(o != w for o, w in zip(orders[0], want))


def test_cache_and_decoding_give_the_same_items(tiny_root):
    cached = build_dataset(tiny_config(tiny_root, cache=True), "train", train=True, seed=5)
    direct = build_dataset(tiny_config(tiny_root, cache=False), "train", train=True, seed=5)
    assert cached.cached and not direct.cached
    for i in (0, 3, 7):
        a, la = cached[i]
        b, lb = direct[i]
        assert la == lb
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_items_and_metadata(tiny_root):
    ds = build_dataset(tiny_config(tiny_root), "train", train=True)
    assert len(ds) == 12 and ds.num_classes == 4
    assert ds.class_names[0] == "Forward 10som STR 3m near stand"
    assert ds.class_cues == ["spatial", "spatial", "temporal", "temporal"]
    assert sorted(ds.table["label"].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    clip, label = ds[0]
    assert clip.shape == (3, 4, 28, 28) and clip.dtype == torch.float32
    assert label == int(ds.table["label"].iloc[0])
    test = build_dataset(tiny_config(tiny_root, test_clips=2, test_crops=3), "test", train=False)
    clip, _ = test[0]
    assert clip.shape == (6, 3, 4, 28, 28)
    assert test.skipped == []
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_num_classes_from_config_or_labels(tiny_copy):
    assert build_dataset(tiny_config(tiny_copy, num_classes=7), "test", train=False).num_classes == 7
    ds = build_dataset(tiny_config(tiny_copy, num_classes=7), "test", train=False)
    assert ds.class_names[6] == "6" and ds.class_cues[6] is None
    (tiny_copy / "Diving48_vocab.json").unlink()
    (tiny_copy / "Diving48_attributes.json").unlink()
    ds = build_dataset(tiny_config(tiny_copy), "test", train=False)
    assert ds.num_classes == 4 and ds.class_names == ["0", "1", "2", "3"] and ds.class_cues == [None] * 4


def test_label_out_of_range_for_the_configured_classes(tiny_root):
    with pytest.raises(DataError, match=r"Diving48_V2_train.json: entry \d+: label 3 is out of range"):
        build_dataset(tiny_config(tiny_root, num_classes=3), "train", train=True)


# --- determinism ----------------------------------------------------------------------------------


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)


def test_same_seed_same_batches_with_0_or_2_workers(tiny_root):
    ds = build_dataset(tiny_config(tiny_root), "train", train=True, seed=11)
    serial = build_loader(ds, 4, shuffle=True, seed=2, num_workers=0)
    parallel = build_loader(ds, 4, shuffle=True, seed=2, num_workers=2)
    set_epoch(serial, 3)
    set_epoch(parallel, 3)
    assert_same(batches(serial), batches(parallel))


def test_epochs_differ_and_a_resumed_epoch_repeats(tiny_root):
    ds = build_dataset(tiny_config(tiny_root), "train", train=True, seed=11)
    loader = build_loader(ds, 4, shuffle=True, seed=2)
    history = []
    for epoch in range(3):
        set_epoch(loader, epoch)
        history.append(batches(loader))
    assert not torch.equal(history[0][0][1], history[1][0][1]) or not torch.equal(
        history[0][0][0], history[1][0][0]
    )
    fresh = build_dataset(tiny_config(tiny_root), "train", train=True, seed=11)
    resumed = build_loader(fresh, 4, shuffle=True, seed=2)
    set_epoch(resumed, 2)
    assert_same(history[2], batches(resumed))


def test_items_ignore_global_random_state(tiny_root):
    ds = build_dataset(tiny_config(tiny_root), "train", train=True, seed=1)
    torch.manual_seed(0)
    np.random.seed(0)
    a = ds[4][0]
    torch.manual_seed(123)
    np.random.seed(123)
    torch.rand(10)
    b = ds[4][0]
    assert torch.equal(a, b)
    ds.seed = 2
    assert not torch.equal(a, ds[4][0])


def test_shallow_copy_shares_the_cache(tiny_root):
    ds = build_dataset(tiny_config(tiny_root), "train", train=True, seed=1)
    other = copy.copy(ds)
    other.seed = 99
    assert other._frames is ds._frames
    assert not torch.equal(other[0][0], ds[0][0])


def test_loader_rejects_sampler_with_shuffle(tiny_root):
    ds = build_dataset(tiny_config(tiny_root), "test", train=False)
    with pytest.raises(ValueError):
        build_loader(ds, 2, sampler=range(len(ds)), shuffle=True)
    loader = build_loader(ds, 3)
    x, y = next(iter(loader))
    assert x.shape == (3, 1, 3, 4, 28, 28) and y.dtype == torch.int64


# --- bad videos -----------------------------------------------------------------------------------


def spoil(root: Path, how: str) -> Path:
    """Make the first listed train video unreadable; returns its path."""
    import json

    name = json.loads((root / "Diving48_V2_train.json").read_text())[0]["vid_name"]
    path = root / "rgb" / f"{name}.mp4"
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":
        path.write_bytes(b"\x00" * 64 + data[64:])
    return path


@pytest.mark.parametrize("how", ["missing", "empty", "truncated", "corrupt"])
@pytest.mark.parametrize("cache", [True, False])
def test_bad_video_is_an_error_naming_it(tiny_copy, how, cache):
    path = spoil(tiny_copy, how)
    with pytest.raises(DataError) as info:
        build_dataset(tiny_config(tiny_copy, cache=cache), "train", train=True)
    text = str(info.value)
    assert str(path) in text and "Diving48_V2_train.json: entry 0" in text and "\n" not in text


@pytest.mark.parametrize("how", ["missing", "truncated", "corrupt"])
def test_skip_leaves_bad_videos_out_and_reports_them(tiny_copy, how, caplog):
    path = spoil(tiny_copy, how)
    with caplog.at_level(logging.WARNING, logger="dsts.data"):
        ds = build_dataset(tiny_config(tiny_copy, on_bad_video="skip"), "train", train=True)
    assert len(ds) == 11
    assert [p for p, _ in ds.skipped] == [str(path)]
    assert str(path) not in ds.table["path"].tolist()
    assert "skipped 1 of 12 videos" in caplog.text
    for i in range(len(ds)):
        ds[i]


def test_skip_with_nothing_readable(tiny_copy):
    for video in (tiny_copy / "rgb").glob("*.mp4"):
        video.write_bytes(b"")
    with pytest.raises(DataError, match="no readable clip"):
        build_dataset(tiny_config(tiny_copy, on_bad_video="skip"), "test", train=False)


def test_start_past_the_end_of_the_video(numbered_root, tmp_path):
    root = tmp_path / "late"
    shutil.copytree(numbered_root, root)
    write_json(
        root / "Diving48_V2_train.json",
        [{"vid_name": "short", "label": 0, "start_frame": 9, "end_frame": 12}],
    )
    with pytest.raises(DataError, match=r"short.mp4: the video has 6 frames but .*entry 0 starts at frame 9"):
        build_dataset(numbered_config(root), "train", train=True)


def test_finegym_dataset(tmp_path):
    names = ["A0xAXXysHUo_E_002407_002435_A_0003_0005", "-0_Zbk4pQzQ_E_000123_000170_A_0012_0015"]
    for k, name in enumerate(names):
        write_lossless(tmp_path / f"{name}.mp4", numbered_frames(8 + 4 * k))
    (tmp_path / "gym99_train_element_v1.1.txt").write_text(f"{names[0]} 5\n{names[1]} 2\n")
    cfg = numbered_config(tmp_path, dataset="finegym", num_classes=99)
    ds = build_dataset(cfg, "train", train=False)
    assert ds.num_classes == 99 and len(ds) == 2
    clip, label = ds[1]
    assert label == 2
    assert frame_numbers(clip[0]) == list(segment_indices(12, 4, False))  # the whole clip
    with pytest.raises(DataError, match="gym99_val_element.txt: no such annotation file"):
        build_dataset(cfg, "test", train=False)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    fraction=st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 0.9]),
    shuffle=st.integers(0, 2**16),
)
def test_held_out_is_stratified_and_depends_on_the_class_alone(sizes, fraction, shuffle):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    table = pd.DataFrame({"label": labels, "clip": np.arange(len(labels))})
    mask = held_out(table, fraction)
    for label, n in enumerate(sizes):
        held = int(mask[labels == label].sum())
        if fraction == 0 or n == 1:
            assert held == 0  # nothing to hold out, or a lone clip stays in training
        else:
            assert 1 <= held <= n - 1  # every class validated and still trained on
            assert held == min(n - 1, max(1, round(fraction * n)))
    # a class's held-out clips do not depend on the other classes' rows or where they sit
    shuffled = table.sample(frac=1.0, random_state=shuffle)
    moved = pd.concat([shuffled[shuffled["label"] != 0], table[table["label"] == 0]])
    again = held_out(moved, fraction)
    first = table["label"] == 0
    assert set(moved["clip"][again & (moved["label"] == 0).to_numpy()]) == set(
        table["clip"][mask & first.to_numpy()]
    )


def test_val_fraction_holds_out_a_disjoint_part_of_the_training_list(tmp_path):
    frames = numbered_frames(8)
    entries = []
    for i in range(9):
        write_lossless(tmp_path / "rgb" / f"v{i}.mp4", frames)
        entries.append({"vid_name": f"v{i}", "label": i % 3, "start_frame": 0, "end_frame": 8})
    write_json(tmp_path / "Diving48_V2_train.json", entries)
    cfg = numbered_config(tmp_path, val_fraction=0.1)
    train = build_dataset(cfg, "train", train=True)
    val = build_dataset(cfg, "val", train=False)
    train_clips, val_clips = set(train.table["path"]), set(val.table["path"])
    assert len(val_clips) == 3 and len(train_clips) == 6 and not train_clips & val_clips
    assert sorted(val.table["label"]) == [0, 1, 2]
    with pytest.raises(DataError, match="val_fraction 0.0|no validation split"):
        build_dataset(numbered_config(tmp_path, val_fraction=0.0), "val", train=False)
