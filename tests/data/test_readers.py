"""Annotation readers on files in the exact official formats, and every bad entry."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from dsts.data import DataError, read_diving48, read_finegym, read_vocab
from dsts.data.readers import COLUMNS
from tests.data.conftest import write_json

# Diving48 V2 entries exactly as the official lists write them.
DIVING48_TRAIN = [
    {"vid_name": "-mmq0PT-u8k_00155", "label": 0, "start_frame": 0, "end_frame": 184},
    {"vid_name": "-mmq0PT-u8k_00156", "label": 33, "start_frame": 0, "end_frame": 81},
    {"vid_name": "_8Vy3dlHg2w_00000", "label": 47, "start_frame": 12, "end_frame": 12},
]
DIVING48_VOCAB = [["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "15Twis", "FREE"]] + [
    ["Forward", f"{k}som", "NoTwis", "PIKE"] for k in range(46)
]
# FineGym element lists: "{ytid}_E_{start}_{end}_A_{start}_{end} {label}".
GYM_LINES = [
    "A0xAXXysHUo_E_002407_002435_A_0003_0005 0",
    "",
    "-0_Zbk4pQzQ_E_000123_000170_A_0012_0015 98",
    "zz_-9kLm2Ab_E_004871_004930_A_0040_0043 17",
]


def diving48(root: Path, entries, vocab=DIVING48_VOCAB, split: str = "train") -> Path:
    write_json(root / f"Diving48_V2_{split}.json", entries)
    if vocab is not None:
        write_json(root / "Diving48_vocab.json", vocab)
    return root


def test_diving48_official_format(tmp_path):
    root = diving48(tmp_path, DIVING48_TRAIN)
    table = read_diving48(root, "train")
    assert list(table.columns) == COLUMNS
    assert table["video_id"].tolist() == [e["vid_name"] for e in DIVING48_TRAIN]
    assert table["label"].tolist() == [0, 33, 47]
    assert table["start_frame"].tolist() == [0, 0, 12]
    assert table["end_frame"].tolist() == [184, 81, 12]
    expected = [os.path.join(os.path.abspath(root), "rgb", e["vid_name"] + ".mp4") for e in DIVING48_TRAIN]
    assert table["path"].tolist() == expected
    assert all(os.path.isabs(p) for p in table["path"])
    assert table.index.tolist() == [0, 1, 2]
    assert table.attrs["annotation"].endswith("Diving48_V2_train.json")


def test_diving48_test_split_and_no_vocab(tmp_path):
    root = diving48(tmp_path, DIVING48_TRAIN[:1], vocab=None, split="test")
    assert len(read_diving48(root, "test")) == 1
    assert read_vocab(root) is None
    with pytest.raises(DataError, match="split"):
        read_diving48(root, "val")


def test_vocab_official_format(tmp_path):
    root = diving48(tmp_path, DIVING48_TRAIN)
    vocab = read_vocab(root)
    assert list(vocab.columns) == ["label", "name", "cue"]
    assert len(vocab) == 48
    assert vocab["name"].iloc[0] == "Back 15som 05Twis FREE"
    assert vocab["cue"].isna().all()


def test_vocab_cues_from_attributes_file(tmp_path):
    root = diving48(tmp_path, DIVING48_TRAIN)
    write_json(
        root / "Diving48_attributes.json",
        {
            "classes": [
                {"label": 0, "cue": "spatial"},
                {"label": 2, "cue": "temporal"},
                {"label": 3, "cue": None},
            ]
        },
    )
    vocab = read_vocab(root)
    assert vocab["cue"].iloc[0] == "spatial"
    assert vocab["cue"].iloc[2] == "temporal"
    assert pd.isna(vocab["cue"].iloc[1]) and pd.isna(vocab["cue"].iloc[3])


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"classes": [{"label": 99, "cue": "spatial"}]}, "entry 0: label 99 is out of range"),
        ({"classes": [{"label": 0, "cue": "colour"}]}, "entry 0: cue 'colour'"),
        ({"classes": [{"label": 0}]}, "entry 0: expected an object with 'label' and 'cue'"),
        ([1, 2], "expected an object with a 'classes' list"),
    ],
)
def test_bad_attributes_file(tmp_path, doc, message):
    root = diving48(tmp_path, DIVING48_TRAIN)
    write_json(root / "Diving48_attributes.json", doc)
    with pytest.raises(DataError, match=message) as info:
        read_vocab(root)
    assert "Diving48_attributes.json" in str(info.value)


def test_finegym_official_format(tmp_path):
    list_file = tmp_path / "gym99_train_element_v1.1.txt"
    list_file.write_text("\n".join(GYM_LINES) + "\n")
    table = read_finegym(list_file, tmp_path / "clips")
    assert list(table.columns) == COLUMNS
    assert table["video_id"].tolist() == [
        "A0xAXXysHUo_E_002407_002435_A_0003_0005",
        "-0_Zbk4pQzQ_E_000123_000170_A_0012_0015",
        "zz_-9kLm2Ab_E_004871_004930_A_0040_0043",
    ]
    assert table["label"].tolist() == [0, 98, 17]
    assert table["start_frame"].tolist() == [0, 0, 0]
    assert table["end_frame"].isna().all()
    assert table["path"].iloc[1] == os.path.join(
        os.path.abspath(tmp_path / "clips"), table["video_id"].iloc[1] + ".mp4"
    )
    assert table.index.tolist() == [1, 3, 4]  # line numbers; the blank line 2 is skipped


# --- bad entries: one line naming the file and the entry (or line) ------------------------------


def entry(**changes):
    base = {"vid_name": "abc_00001", "label": 1, "start_frame": 0, "end_frame": 30}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize(
    "bad, message",
    [
        (entry(vid_name=...), "entry 1: missing key 'vid_name'"),
        (entry(label=...), "entry 1: missing key 'label'"),
        (entry(start_frame=...), "entry 1: missing key 'start_frame'"),
        (entry(end_frame=...), "entry 1: missing key 'end_frame'"),
        (entry(label=-1), "entry 1: label -1 is negative"),
        (entry(label=48), "entry 1: label 48 is out of range"),
        (entry(label="3"), "entry 1: label must be an integer"),
        (entry(label=True), "entry 1: label must be an integer"),
        (entry(start_frame=40, end_frame=30), "entry 1: start_frame 40 > end_frame 30"),
        (entry(start_frame=-2), "entry 1: start_frame -2 is negative"),
        (entry(vid_name="../outside"), "entry 1: vid_name '../outside' escapes the data root"),
        (entry(vid_name="a/../../b"), "entry 1: vid_name 'a/../../b' escapes the data root"),
        (entry(vid_name="/etc/passwd"), "entry 1: vid_name '/etc/passwd' is an absolute path"),
        (entry(vid_name=""), "entry 1: vid_name '' is empty"),
        (entry(vid_name=7), "entry 1: vid_name must be a string"),
        ("abc", "entry 1: expected an object"),
    ],
)
def test_bad_diving48_entry(tmp_path, bad, message):
    root = diving48(tmp_path, [DIVING48_TRAIN[0], bad])
    with pytest.raises(DataError, match=message) as info:
        read_diving48(root, "train")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(root / "Diving48_V2_train.json"))


def test_escape_is_bad_even_if_the_file_exists(tmp_path):
    root = tmp_path / "data"
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"x")
    diving48(root, [entry(vid_name="../../outside")])
    assert (root / "rgb" / "../../outside.mp4").resolve() == outside.resolve()
    with pytest.raises(DataError, match="escapes the data root"):
        read_diving48(root, "train")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"vid_name": "a", "label": 1,', "malformed JSON"),
        ("", "malformed JSON"),
        ('{"vid_name": "a"}', "expected a list of entries"),
    ],
)
def test_malformed_diving48_json(tmp_path, text, message):
    (tmp_path / "Diving48_V2_train.json").write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_diving48(tmp_path, "train")
    assert "Diving48_V2_train.json" in str(info.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="no such annotation file"):
        read_diving48(tmp_path, "train")
    with pytest.raises(DataError, match="no such annotation file"):
        read_finegym(tmp_path / "gym99_val_element.txt", tmp_path)


def test_malformed_vocab(tmp_path):
    root = diving48(tmp_path, DIVING48_TRAIN, vocab=[["Back", 3]])
    with pytest.raises(DataError, match="Diving48_vocab.json: entry 0"):
        read_vocab(root)
    (root / "Diving48_vocab.json").write_text("[[")
    with pytest.raises(DataError, match="Diving48_vocab.json: malformed JSON"):
        read_diving48(root, "train")


@pytest.mark.parametrize(
    "line, message",
    [
        ("A0xAXXysHUo_E_002407_002435_A_0003_0005", "line 2: malformed line"),
        ("A0xAXXysHUo_E_002407_002435_A_0003_0005 zero", "line 2: malformed line"),
        ("A0xAXXysHUo_E_002407_002435_0003_0005 4", "line 2: malformed line"),
        ("A0xAXXysHUo_E_002407_002435_A_0003_0005 -4", "line 2: label -4 is negative"),
        ("A0xAXXysHUo_E_002435_002407_A_0003_0005 4", "line 2: event start 002435 > event end 002407"),
        ("A0xAXXysHUo_E_002407_002435_A_0009_0005 4", "line 2: action start 0009 > action end 0005"),
        ("../A0xAXXysHUo_E_002407_002435_A_0003_0005 4", "line 2: clip name .* escapes the data root"),
        ("/tmp/A0xAXXysHUo_E_002407_002435_A_0003_0005 4", "line 2: clip name .* is an absolute path"),
    ],
)
def test_bad_finegym_line(tmp_path, line, message):
    list_file = tmp_path / "gym99_val_element.txt"
    list_file.write_text(GYM_LINES[0] + "\n" + line + "\n")
    with pytest.raises(DataError, match=message) as info:
        read_finegym(list_file, tmp_path)
    assert str(info.value).startswith(str(list_file))
    assert "\n" not in str(info.value)
