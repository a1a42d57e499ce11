"""Annotation readers: Diving48 V2 lists, FineGym element lists and the class vocabulary.

Each reader returns one tidy table with the columns ``video_id, path, label, start_frame, end_frame``.
The table's index is the entry's place in its annotation file (the JSON entry, counted from 0, or the
list line, counted from 1), and ``table.attrs`` names the file, so a later check (a label out of
range, an unreadable video) can point at the entry.

Frame ranges are half-open: a clip is the frames ``start_frame <= i < end_frame``. An ``end_frame``
past the video's last frame is clamped to it (so an inclusive end, or a frame count, reads the same),
and ``start_frame == end_frame`` is read as the single frame ``start_frame``. FineGym's element clips
are already trimmed: ``start_frame`` is 0 and ``end_frame`` is missing (``pd.NA``), the whole clip.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from dsts.errors import DataError

COLUMNS = ["video_id", "path", "label", "start_frame", "end_frame"]
DIVING48_SPLITS = ("train", "val", "test")  # val: only where the data set has a list for it
VOCAB_FILE = "Diving48_vocab.json"
ATTRIBUTES_FILE = "Diving48_attributes.json"
CUES = ("spatial", "temporal")

# {ytid}_E_{start}_{end}_A_{start}_{end} {label}; YouTube ids use letters, digits, '-' and '_'.
_FINEGYM_LINE = re.compile(
    r"^(?P<name>(?P<ytid>[A-Za-z0-9_-]+)_E_(?P<es>\d+)_(?P<ee>\d+)_A_(?P<as>\d+)_(?P<ae>\d+))\s+(?P<label>[+-]?\d+)$"
)


def _inside(root: str, name: str, suffix: str) -> str:
    """``root/name+suffix`` as an absolute path, or raise ValueError if ``name`` could leave ``root``
    (an absolute path, a ``..`` part, a drive or a NUL), whether or not the file exists."""
    if not name or "\x00" in name or name != name.strip():
        raise ValueError("is empty or has stray characters")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError("is an absolute path, outside the data root")
    parts = re.split(r"[/\\]", name)
    if any(p in ("..", "") for p in parts):
        raise ValueError("escapes the data root")
    base = os.path.abspath(root)
    path = os.path.abspath(os.path.join(base, name + suffix))
    if os.path.commonpath([base, path]) != base:
        raise ValueError("escapes the data root")
    return path


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: no such annotation file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _int_field(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: {key} must be an integer, got {value!r}")
    return value


def _table(rows: list[dict[str, Any]], index: list[int], source: Path, unit: str) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=COLUMNS, index=pd.Index(index, name=unit))
    table = table.astype({"video_id": "string", "path": "string", "label": "int64", "start_frame": "int64"})
    table["end_frame"] = pd.array(table["end_frame"].tolist(), dtype="Int64")
    table.attrs["annotation"] = str(source)
    table.attrs["unit"] = unit
    return table


def entry_name(table: pd.DataFrame, key: Any) -> str:
    """``"<annotation file>: entry 3"`` (or ``line 4``) for the row with index ``key``."""
    return f"{table.attrs.get('annotation', '<table>')}: {table.attrs.get('unit', 'entry')} {key}"


def read_diving48(root: str | Path, split: str) -> pd.DataFrame:
    """``{root}/Diving48_V2_{split}.json`` (a list of ``{vid_name, label, start_frame, end_frame}``)
    as a table; the videos are ``{root}/rgb/{vid_name}.mp4``. Labels are checked against the vocab
    when ``Diving48_vocab.json`` is there. Diving48 itself has train and test lists; the generated
    benchmark adds a val list."""
    if split not in DIVING48_SPLITS:
        raise DataError(f"diving48: split must be one of {', '.join(DIVING48_SPLITS)}, got {split!r}")
    root = Path(root)
    source = root / f"Diving48_V2_{split}.json"
    data = _load_json(source)
    if not isinstance(data, list):
        raise DataError(f"{source}: expected a list of entries, got {type(data).__name__}")
    vocab = read_vocab(root)
    limit = len(vocab) if vocab is not None else None
    rgb = str(root / "rgb")
    rows, index = [], []
    for i, entry in enumerate(data):
        where = f"{source}: entry {i}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
        for key in ("vid_name", "label", "start_frame", "end_frame"):
            if key not in entry:
                raise DataError(f"{where}: missing key {key!r}")
        name = entry["vid_name"]
        if not isinstance(name, str):
            raise DataError(f"{where}: vid_name must be a string, got {name!r}")
        try:
            path = _inside(rgb, name, ".mp4")
        except ValueError as exc:
            raise DataError(f"{where}: vid_name {name!r} {exc}") from None
        label = _int_field(entry, "label", where)
        start = _int_field(entry, "start_frame", where)
        end = _int_field(entry, "end_frame", where)
        if label < 0:
            raise DataError(f"{where}: label {label} is negative")
        if limit is not None and label >= limit:
            raise DataError(f"{where}: label {label} is out of range (the vocab has {limit} classes)")
        if start < 0:
            raise DataError(f"{where}: start_frame {start} is negative")
        if start > end:
            raise DataError(f"{where}: start_frame {start} > end_frame {end}")
        rows.append({"video_id": name, "path": path, "label": label, "start_frame": start, "end_frame": end})
        index.append(i)
    return _table(rows, index, source, "entry")


def read_finegym(list_file: str | Path, root: str | Path) -> pd.DataFrame:
    """A FineGym element list (lines ``{ytid}_E_{s}_{e}_A_{s}_{e} {label}``) as a table; the trimmed
    clips are ``{root}/{name}.mp4``. The numbers in the name are times in the source video, so
    ``start_frame`` is 0 and ``end_frame`` is missing (the whole clip). Blank lines are skipped."""
    source = Path(list_file)
    if not source.is_file():
        raise DataError(f"{source}: no such annotation file")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{source}: not UTF-8 text") from None
    base = str(root)
    rows, index = [], []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{source}: line {number}"
        name = line.split()[0]
        try:
            path = _inside(base, name, ".mp4")
        except ValueError as exc:
            raise DataError(f"{where}: clip name {name!r} {exc}") from None
        match = _FINEGYM_LINE.match(line)
        if match is None:
            raise DataError(
                f"{where}: malformed line {line[:80]!r} (expected '<ytid>_E_<s>_<e>_A_<s>_<e> <label>')"
            )
        if int(match["es"]) > int(match["ee"]):
            raise DataError(f"{where}: event start {match['es']} > event end {match['ee']}")
        if int(match["as"]) > int(match["ae"]):
            raise DataError(f"{where}: action start {match['as']} > action end {match['ae']}")
        label = int(match["label"])
        if label < 0:
            raise DataError(f"{where}: label {label} is negative")
        rows.append(
            {"video_id": match["name"], "path": path, "label": label, "start_frame": 0, "end_frame": pd.NA}
        )
        index.append(number)
    return _table(rows, index, source, "line")


def read_vocab(root: str | Path) -> pd.DataFrame | None:
    """``{root}/Diving48_vocab.json`` as a table ``label, name, cue``, or None when there is none.

    Diving48's vocab is a list with one attribute list per class (``[["Back", "15som", "05Twis",
    "FREE"], ...]``): the name is the attributes joined by spaces. The cue (``"spatial"``,
    ``"temporal"`` or missing) comes from ``Diving48_attributes.json`` beside it, which the generated
    benchmark writes; a real download has none, so its cues are missing.
    """
    root = Path(root)
    source = root / VOCAB_FILE
    if not source.is_file():
        return None
    data = _load_json(source)
    if not isinstance(data, list) or not data:
        raise DataError(f"{source}: expected a non-empty list of classes")
    names = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, list) and item and all(isinstance(a, str) for a in item):
            names.append(" ".join(item))
        else:
            raise DataError(f"{source}: entry {i}: expected a list of attribute names, got {item!r}")
    cues: list[Any] = [pd.NA] * len(names)
    extra = root / ATTRIBUTES_FILE
    if extra.is_file():
        doc = _load_json(extra)
        classes = doc.get("classes") if isinstance(doc, dict) else None
        if not isinstance(classes, list):
            raise DataError(f"{extra}: expected an object with a 'classes' list")
        for i, item in enumerate(classes):
            where = f"{extra}: entry {i}"
            if not isinstance(item, dict) or "label" not in item or "cue" not in item:
                raise DataError(f"{where}: expected an object with 'label' and 'cue'")
            label, cue = item["label"], item["cue"]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(names):
                raise DataError(
                    f"{where}: label {label!r} is out of range (the vocab has {len(names)} classes)"
                )
            if cue is not None and cue not in CUES:
                raise DataError(f"{where}: cue {cue!r} is not one of {', '.join(CUES)} or null")
            cues[label] = pd.NA if cue is None else cue
    table = pd.DataFrame({"label": range(len(names)), "name": names, "cue": pd.array(cues, dtype="string")})
    table.attrs["annotation"] = str(source)
    return table


def read_attributes(root: str | Path) -> dict[str, Any] | None:
    """The whole ``Diving48_attributes.json`` (attributes and per-class cues), or None."""
    path = Path(root) / ATTRIBUTES_FILE
    return _load_json(path) if path.is_file() else None
