"""Check that the smoke grid reproduces byte for byte on this machine: ``make verify-repro``.

Reruns the whole DVC graph on the smoke profile (``smoke.yaml``) in a temporary copy of the
workspace and compares its byte-identical set with the committed references, ``reference/smoke*.json``:
per (variant, seed) ``metrics.json``, ``history.csv``, ``per_class.csv`` and the trained model's
``state_dict``, and the report's ``summary.json``. Nothing is compared with a tolerance: a difference
is a difference.

There is one reference per machine class (:data:`CLASS`: the CPU model, the dispatch, the threads and
the library versions) whose bytes differ from every other's; docs/reproducibility.md lists them and
why they differ. This machine must reproduce the reference of its own class, or, when its class has
none, one of the others. Prints one line per run, ``match`` or ``DIFFER``, with the fingerprint of
both sides, and exits 1 when no reference matches.

    python -m pipeline.verify_repro            # compare with the references
    python -m pipeline.verify_repro --update   # write this machine's class's reference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from dsts.checkpoint import safe_load, state_dict_digest
from dsts.config import read_yaml
from dsts.errors import DSTSError
from dsts.files import write_json
from dsts.runs import run_folder
from pipeline._cli import run
from pipeline.smoke import ROOT, reproduce

REFERENCES = ROOT / "reference"
FILES = ("metrics.json", "history.csv", "per_class.csv")
# what identifies a floating-point path in one line
SHORT = ("cpu", "cpu_id", "cpu_features", "cpu_capability", "threads", "torch", "mkl", "onednn")
# what makes two machines one class: the same CPU model, dispatch, threads and libraries
CLASS = ("cpu", "cpu_id", "cpu_capability", "threads", "torch", "mkl", "onednn")


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


def machine_class(digest: dict) -> tuple[str, ...]:
    """The machine class of a reference or of this machine's digests (its runs' fingerprints)."""
    classes = {tuple(run["fingerprint"].get(k, "?") for k in CLASS) for run in digest["runs"].values()}
    return classes.pop() if len(classes) == 1 else ("mixed",)


def reference_name(digest: dict) -> str:
    """``smoke-<cpu vendor and model>.json``: the file of a machine class's reference."""
    fields = dict(zip(CLASS, machine_class(digest)))
    cpu = fields.get("cpu", "?").replace("(R)", "").replace("(TM)", "")
    words = f"{cpu} {fields.get('cpu_id', '')} threads {fields.get('threads', '?')}"
    slug = "-".join("".join(c if c.isalnum() else " " for c in words.lower()).split())
    return f"smoke-{slug}.json"


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


def verdict(references: dict[str, dict], here: dict) -> tuple[bool, list[str]]:
    """Compare ``here`` with the reference of its own machine class, or, when its class has none,
    with every reference; it passes when one of them matches in full. Returns the verdict and the
    lines to print: a heading per reference compared, then :func:`compare`'s lines."""
    here_class = machine_class(here)
    mine = {name: ref for name, ref in references.items() if machine_class(ref) == here_class}
    out = []
    if not mine:
        out.append(f"verify-repro: no reference of this machine's class [{', '.join(here_class)}]")
    passed = False
    for name, ref in sorted((mine or references).items()):
        lines = compare(ref, here)
        matches = sum(line.startswith("match") for line in lines)
        passed = passed or matches == len(lines)
        out.append(f"against {name}: {matches} of {len(lines)} match")
        out.extend(lines)
    return passed, out


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.verify_repro",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--update", action="store_true", help="write this machine's class's reference")
    parser.add_argument("--reference", default=None, help="compare with this file only")
    args = parser.parse_args()
    files = [Path(args.reference)] if args.reference else sorted(REFERENCES.glob("smoke*.json"))
    if not args.update and (not files or not all(f.is_file() for f in files)):
        where = args.reference or REFERENCES / "smoke*.json"
        raise DSTSError(f"{where}: no reference (run with --update to make one)")
    dest = Path(tempfile.mkdtemp(prefix="dsts-verify-"))
    try:
        code = reproduce(dest / "repo", quiet=True)
        if code != 0:
            print(f"error: dvc repro of the smoke grid failed (exit {code})", file=sys.stderr)
            return 1
        here = digests(dest / "repo")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if args.update:
        target = Path(args.reference) if args.reference else REFERENCES / reference_name(here)
        write_json(target, here)
        print(f"verify-repro: wrote {target} ({len(here['runs'])} runs)")
        return 0
    passed, lines = verdict({f.name: json.loads(f.read_text()) for f in files}, here)
    print("\n".join(lines))
    print(f"verify-repro: {'a reference matches' if passed else 'no reference matches'}")
    return 0 if passed else 1


if __name__ == "__main__":
    run(main)
