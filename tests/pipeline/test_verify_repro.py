"""verify-repro's comparison: one line per run, match or DIFFER naming the files, both fingerprints."""

from __future__ import annotations

import copy

from pipeline.verify_repro import compare

FP = {"cpu": "Xeon", "cpu_capability": "AVX2", "threads": "2"}
REFERENCE = {
    "runs": {
        "baseline/seed0": {
            "metrics.json": "a",
            "history.csv": "b",
            "per_class.csv": "c",
            "state_dict": "d",
            "fingerprint": FP,
        },
        "dsts/seed0": {
            "metrics.json": "e",
            "history.csv": "f",
            "per_class.csv": "g",
            "state_dict": "h",
            "fingerprint": FP,
        },
    },
    "summary.json": "s",
}


def test_everything_equal_is_all_match():
    lines = compare(REFERENCE, copy.deepcopy(REFERENCE))
    assert [line.split()[0] for line in lines] == ["match", "match", "match"]
    assert "reference [cpu Xeon" in lines[0] and "here [cpu Xeon" in lines[0]


def test_one_changed_file_or_run_is_a_difference():
    here = copy.deepcopy(REFERENCE)
    here["runs"]["dsts/seed0"]["state_dict"] = "other"
    here["runs"]["dsts/seed0"]["fingerprint"] = dict(FP, cpu_capability="AVX512")
    del here["runs"]["baseline/seed0"]
    here["summary.json"] = "t"
    lines = compare(REFERENCE, here)
    assert lines[0] == "DIFFER baseline/seed0: not run here"
    assert lines[1].startswith("DIFFER dsts/seed0 (state_dict): reference [cpu Xeon, cpu_id ?")
    assert "cpu_capability AVX512" in lines[1]
    assert lines[2] == "DIFFER reports/summary.json"
