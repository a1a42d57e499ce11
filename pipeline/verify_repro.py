"""Check that the smoke grid reproduces byte for byte on this machine: ``make verify-repro``.

Reruns the whole DVC graph on the smoke profile (``smoke.yaml``) in a temporary copy of the
workspace and compares its byte-identical set with the committed reference, ``reference/smoke.json``:
per (variant, seed) ``metrics.json``, ``history.csv``, ``per_class.csv`` and the trained model's
``state_dict``, and the report's ``summary.json``. Prints one line per run, ``match`` or ``DIFFER``,
with the fingerprint of both sides (the reference's and this machine's), and exits 1 on any
difference. Nothing is compared with a tolerance: a difference is a difference.

    python -m pipeline.verify_repro            # compare with the reference
    python -m pipeline.verify_repro --update   # write the reference from this machine
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from dsts.checkpoint import safe_load, state_dict_digest
from dsts.config import read_yaml
from dsts.files import write_json
from dsts.runs import run_folder
from pipeline._cli import run
from pipeline.smoke import ROOT, reproduce

REFERENCE = ROOT / "reference" / "smoke.json"
FILES = ("metrics.json", "history.csv", "per_class.csv")
# what identifies a floating-point path in one line
SHORT = ("cpu", "cpu_id", "cpu_features", "cpu_capability", "threads", "torch", "mkl", "onednn")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def digests(workspace: Path) -> dict:
    """The byte-identical set of a workspace that has run the graph, as sha256 digests, with the
    fingerprint each run recorded."""
    params = read_yaml(workspace / "params.yaml")
    runs = {}
    for variant in params["variants"]:
        for seed in params["seeds"]:
            folder = run_folder(variant, seed, workspace / "runs")
            entry = {name: _sha(folder.path / name) for name in FILES}
            entry["state_dict"] = (
                state_dict_digest(safe_load(folder.model)["model"]) if folder.model.is_file() else "missing"
            )
            env = json.loads(folder.environment.read_text()) if folder.environment.is_file() else {}
            entry["fingerprint"] = {k: env.get(k, "?") for k in SHORT}
            runs[f"{variant}/seed{seed}"] = entry
    return {"runs": runs, "summary.json": _sha(workspace / "reports" / "summary.json")}


def _short(fingerprint: dict) -> str:
    return ", ".join(f"{k} {fingerprint.get(k, '?')}" for k in SHORT)


def compare(reference: dict, here: dict) -> list[str]:
    """One line per run and one for the report; a line starts with ``match`` or ``DIFFER``."""
    lines = []
    for name in sorted(set(reference["runs"]) | set(here["runs"])):
        ref, got = reference["runs"].get(name), here["runs"].get(name)
        if ref is None or got is None:
            lines.append(f"DIFFER {name}: {'not in the reference' if ref is None else 'not run here'}")
            continue
        differ = [k for k in (*FILES, "state_dict") if ref[k] != got[k]]
        verdict = "match " if not differ else "DIFFER"
        what = "" if not differ else f" ({', '.join(differ)})"
        lines.append(
            f"{verdict} {name}{what}: reference [{_short(ref['fingerprint'])}], here [{_short(got['fingerprint'])}]"
        )
    verdict = "match " if reference["summary.json"] == here["summary.json"] else "DIFFER"
    lines.append(f"{verdict} reports/summary.json")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.verify_repro",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--update", action="store_true", help="write the reference from this machine")
    parser.add_argument("--reference", default=str(REFERENCE), help="the reference file")
    args = parser.parse_args()
    reference_file = Path(args.reference)
    if not args.update and not reference_file.is_file():
        print(f"error: {reference_file}: no reference (run with --update to make one)")
        return 2
    dest = Path(tempfile.mkdtemp(prefix="dsts-verify-"))
    try:
        code = reproduce(dest / "repo", quiet=True)
        if code != 0:
            print(f"error: dvc repro of the smoke grid failed (exit {code})")
            return 1
        here = digests(dest / "repo")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if args.update:
        write_json(reference_file, here)
        print(f"verify-repro: wrote {reference_file} ({len(here['runs'])} runs)")
        return 0
    lines = compare(json.loads(reference_file.read_text()), here)
    print("\n".join(lines))
    failed = sum(line.startswith("DIFFER") for line in lines)
    print(f"verify-repro: {len(lines) - failed} of {len(lines)} match")
    return 1 if failed else 0


if __name__ == "__main__":
    run(main)
