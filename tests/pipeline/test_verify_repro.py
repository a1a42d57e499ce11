"""verify-repro's comparison: one line per run, match or DIFFER naming the files, both fingerprints;
and the choice of reference: this machine's class's own, else any that matches."""

from __future__ import annotations

import copy
import subprocess
import sys

from pipeline.verify_repro import compare, reference_name, verdict

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


def machine(digest: dict, **fingerprint: str) -> dict:
    """``digest`` as made on another machine: the same bytes, another fingerprint."""
    out = copy.deepcopy(digest)
    for run in out["runs"].values():
        run["fingerprint"] = dict(FP, **fingerprint)
    return out


def changed(digest: dict) -> dict:
    """``digest`` with other bytes for one run."""
    out = copy.deepcopy(digest)
    out["runs"]["dsts/seed0"]["history.csv"] = "other"
    return out


EPYC = {"cpu": "AMD EPYC", "cpu_id": "family 25 model 1 stepping 1"}


def test_a_machine_must_match_its_own_classs_reference():
    references = {"smoke-xeon.json": REFERENCE, "smoke-epyc.json": machine(changed(REFERENCE), **EPYC)}
    passed, lines = verdict(references, machine(changed(REFERENCE), **EPYC))
    assert passed and lines[0] == "against smoke-epyc.json: 3 of 3 match" and len(lines) == 4
    # the other class's bytes are not enough once the class has its own reference
    passed, lines = verdict(references, machine(REFERENCE, **EPYC))
    assert not passed and lines[0] == "against smoke-epyc.json: 2 of 3 match"
    assert lines[2].startswith("DIFFER dsts/seed0 (history.csv): reference [cpu AMD EPYC")


def test_a_new_class_passes_by_reproducing_any_reference():
    references = {"smoke-xeon.json": REFERENCE, "smoke-epyc.json": machine(changed(REFERENCE), **EPYC)}
    arm = {"cpu": "Neoverse", "cpu_capability": "DEFAULT"}
    passed, lines = verdict(references, machine(REFERENCE, **arm))
    assert (
        passed
        and lines[0]
        == "verify-repro: no reference of this machine's class [Neoverse, ?, DEFAULT, 2, ?, ?, ?]"
    )
    headings = [line for line in lines if line.startswith("against")]
    assert headings == ["against smoke-epyc.json: 2 of 3 match", "against smoke-xeon.json: 3 of 3 match"]
    passed, _ = verdict(references, machine(changed(REFERENCE), **arm) | {"summary.json": "u"})
    assert not passed


def test_a_reference_is_named_after_its_machine():
    xeon = machine(REFERENCE, cpu="Intel(R) Xeon(R) Processor", cpu_id="family 6 model 167 stepping 1")
    assert reference_name(xeon) == "smoke-intel-xeon-processor-family-6-model-167-stepping-1-threads-2.json"
    assert (
        reference_name(machine(REFERENCE, **EPYC))
        == "smoke-amd-epyc-family-25-model-1-stepping-1-threads-2.json"
    )


def test_a_missing_reference_is_one_line_on_stderr(tmp_path):
    missing = tmp_path / "nowhere.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.verify_repro", "--reference", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {missing}: no reference (run with --update to make one)\n"
