"""The run folder: where one (variant, seed) keeps its files. The one home of that layout.

``runs/<variant>/seed<S>/`` holds what the ``train`` and ``evaluate`` stages write and what the
report reads; ``dvc.yaml`` spells the same paths (``tests/pipeline/test_dvc_graph.py`` checks that
they agree).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dsts.errors import DSTSError
from dsts.files import atomic_write, write_json

RUNS_ROOT = "runs"


class RunFileError(DSTSError):
    """A run file that is missing or malformed; the message names the file."""


class _File:
    """A file of the run folder, by name: ``folder.metrics`` is ``folder.path / "metrics.json"``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder: RunFolder, owner: type) -> Path:
        return folder.path / self.name


@dataclass(frozen=True)
class RunFolder:
    """The files of one run, by name."""

    path: Path

    model = _File("model.pt")
    history = _File("history.csv")
    val_correct = _File("val_correct.csv")  # each validation clip right (1) or wrong (0), per epoch
    metrics = _File("metrics.json")
    per_class = _File("per_class.csv")
    predictions = _File("predictions.csv")  # actual and predicted class per test clip: the confusion plot
    timing = _File("timing.json")
    cost = _File("cost.json")  # the evaluation latency: a timing, so it stays out of metrics.json
    environment = _File("environment.json")  # where the numbers came from (dsts.portable.fingerprint)
    tracking = _File("tracking.json")  # the MLflow run that evaluation continues
    plots = _File("plots")

    def checkpoint(self, config_hash: str) -> Path:
        return self.path / "checkpoints" / f"{config_hash}.pt"


def run_dir(variant: str, seed: int, root: str | Path = RUNS_ROOT) -> Path:
    """``<root>/<variant>/seed<seed>``."""
    return Path(root) / variant / f"seed{int(seed)}"


def run_folder(variant: str, seed: int, root: str | Path = RUNS_ROOT) -> RunFolder:
    return RunFolder(run_dir(variant, seed, root))


def write_history(path: str | Path, history: Sequence[Mapping[str, float]]) -> None:
    """One row per epoch; ``epoch`` as an integer, every other value as ``repr(float)`` (exact)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (int(v) if k == "epoch" else repr(float(v))) for k, v in row.items()})


def read_history(path: str | Path) -> list[dict[str, float]]:
    """The rows of :func:`write_history` as floats (empty cells left out)."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: missing (run the train stage for this variant and seed first)")
    rows: list[dict[str, float]] = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "epoch" not in reader.fieldnames:
            raise RunFileError(f"{path}: expected a CSV with an 'epoch' column")
        for line, row in enumerate(reader, start=2):
            parsed: dict[str, float] = {}
            for key, text in row.items():
                if key is None or text is None or text == "":
                    continue
                try:
                    parsed[key] = float(text)
                except ValueError:
                    raise RunFileError(f"{path} line {line}: {key!r} is not a number: {text!r}") from None
            if "epoch" not in parsed:
                raise RunFileError(f"{path} line {line}: no epoch")
            rows.append(parsed)
    return rows


def write_val_correct(path: str | Path, clips: Sequence[str], rows: Sequence[Sequence[int]]) -> None:
    """One row per validated epoch: ``epoch``, then 1 or 0 per validation clip, whether its top-1 was
    right, under a header of the clips' names (just ``epoch`` for a run without validation). What the
    late gain's sampling sd reads (``dsts/report/verdicts.py``)."""
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch", *clips])
        for epoch, *bits in rows:
            if len(bits) != len(clips):
                raise ValueError(f"epoch {epoch}: {len(bits)} results for {len(clips)} validation clips")
            writer.writerow([int(epoch), *(int(bool(b)) for b in bits)])


def read_val_correct(path: str | Path) -> dict[int, list[int]]:
    """Per epoch, the 1 or 0 of each validation clip written by :func:`write_val_correct`."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: missing (run the train stage for this variant and seed first)")
    out: dict[int, list[int]] = {}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0] != "epoch":
            raise RunFileError(
                f"{path}: expected a CSV whose header is 'epoch' and one name per validation clip"
            )
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise RunFileError(f"{path} line {line}: {len(row)} fields, but the header has {len(header)}")
            if not (row[0].isascii() and row[0].isdigit()) or any(b not in ("0", "1") for b in row[1:]):
                raise RunFileError(f"{path} line {line}: expected an epoch number, then 0 or 1 per clip")
            if int(row[0]) in out:
                raise RunFileError(f"{path} line {line}: epoch {int(row[0])} is written twice")
            out[int(row[0])] = [int(b) for b in row[1:]]
    return out


def write_metrics(path: str | Path, metrics: Mapping[str, float]) -> None:
    write_json(path, dict(metrics))


def read_metrics(path: str | Path, required: Sequence[str] = ()) -> dict[str, float]:
    """A JSON object of numbers; each key of ``required`` must be there and finite."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: missing (run the stage that writes it for this variant and seed first)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunFileError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: expected a JSON object of names to numbers")
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RunFileError(f"{path}: {key!r} is not a number: {value!r}")
        out[str(key)] = float(value)
    for key in required:
        if key not in out or not math.isfinite(out[key]):
            raise RunFileError(f"{path}: no finite {key!r}")
    return out


def write_per_class(
    path: str | Path,
    names: Sequence[str],
    cues: Sequence[str | None],
    support: Sequence[int],
    accuracy: Sequence[float],
) -> None:
    """One row per class: label, name, cue (empty when none), test support and accuracy (empty
    when the class has no test sample)."""
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "name", "cue", "support", "accuracy"])
        for k, (name, cue, n, acc) in enumerate(zip(names, cues, support, accuracy, strict=True)):
            writer.writerow([k, name, cue or "", int(n), "" if acc != acc else repr(float(acc))])


def write_predictions(path: str | Path, actual: Sequence[str], predicted: Sequence[str]) -> None:
    """One row per test clip, ``actual,predicted`` class names: what DVC's confusion template reads."""
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(actual, predicted, strict=True))
