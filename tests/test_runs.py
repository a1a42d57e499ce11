"""The run folder: its layout, and run files that round-trip exactly or fail with one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsts.runs import (
    RunFileError,
    read_history,
    read_metrics,
    read_val_correct,
    run_dir,
    run_folder,
    write_history,
    write_metrics,
    write_per_class,
    write_val_correct,
)


def test_layout():
    assert run_dir("dsts_udl", 2) == Path("runs/dsts_udl/seed2")
    folder = run_folder("baseline", 0, root="/tmp/r")
    assert folder.metrics == Path("/tmp/r/baseline/seed0/metrics.json")
    assert folder.checkpoint("abc") == Path("/tmp/r/baseline/seed0/checkpoints/abc.pt")


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(rows=st.lists(st.fixed_dictionaries({"loss": finite, "test/top1": finite}), min_size=1, max_size=5))
def test_history_round_trips_every_float_exactly(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("h") / "history.csv"
    history = [{"epoch": float(i + 1), **row} for i, row in enumerate(rows)]
    write_history(path, history)
    assert read_history(path) == history
    assert path.read_text().splitlines()[1].startswith("1,")  # the epoch is an integer


def test_bad_run_files_are_one_line_errors(tmp_path):
    with pytest.raises(RunFileError, match="missing"):
        read_history(tmp_path / "history.csv")
    (tmp_path / "history.csv").write_text("epoch,loss\n1,abc\n")
    with pytest.raises(RunFileError, match="line 2: 'loss' is not a number"):
        read_history(tmp_path / "history.csv")
    (tmp_path / "m.json").write_text('{"test/top1": "high"}')
    with pytest.raises(RunFileError, match="is not a number"):
        read_metrics(tmp_path / "m.json")
    write_metrics(tmp_path / "m.json", {"test/top1": 0.5})
    assert read_metrics(tmp_path / "m.json", required=["test/top1"]) == {"test/top1": 0.5}
    with pytest.raises(RunFileError, match="no finite 'test/loss'"):
        read_metrics(tmp_path / "m.json", required=["test/loss"])


@given(
    clips=st.lists(st.from_regex(r"[A-Za-z0-9_]{1,8}@[0-9]{1,3}", fullmatch=True), max_size=5, unique=True),
    epochs=st.lists(st.integers(1, 99), max_size=4, unique=True),
    data=st.data(),
)
def test_val_correct_round_trips(tmp_path_factory, clips, epochs, data):
    path = tmp_path_factory.mktemp("v") / "val_correct.csv"
    bits = st.lists(st.integers(0, 1), min_size=len(clips), max_size=len(clips))
    rows = {e: data.draw(bits) for e in epochs}
    write_val_correct(path, clips, [[e, *b] for e, b in rows.items()])
    assert read_val_correct(path) == rows
    assert path.read_text().splitlines()[0] == ",".join(["epoch", *clips])  # the clips name the columns


def test_bad_val_correct_files_are_one_line_errors(tmp_path):
    path = tmp_path / "val_correct.csv"
    with pytest.raises(RunFileError, match="missing"):
        read_val_correct(path)
    for text, message in (
        ("", "header is 'epoch'"),
        ("clip,a@0\n", "header is 'epoch'"),
        ("epoch,a@0,b@0\n1,1\n", "line 2: 2 fields, but the header has 3"),
        ("epoch,a@0\n1,2\n", "line 2: expected an epoch number, then 0 or 1 per clip"),
        ("epoch,a@0\nx,1\n", "line 2: expected an epoch number"),
        ("epoch,a@0\n\u00b2,1\n", "line 2: expected an epoch number"),  # a digit to str.isdigit
        ("epoch,a@0\n1,1\n1,0\n", "line 3: epoch 1 is written twice"),
    ):
        path.write_text(text)
        with pytest.raises(RunFileError, match=message):
            read_val_correct(path)
    with pytest.raises(ValueError, match="epoch 3: 1 results for 2 validation clips"):
        write_val_correct(path, ["a", "b"], [[3, 1]])


def test_per_class_rows(tmp_path):
    path = tmp_path / "per_class.csv"
    write_per_class(path, ["a", "b"], ["temporal", None], [3, 0], [2 / 3, math.nan])
    assert path.read_bytes() == (
        b"label,name,cue,support,accuracy\r\n0,a,temporal,3,0.6666666666666666\r\n1,b,,0,\r\n"
    )
