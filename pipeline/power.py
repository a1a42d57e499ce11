"""Plan a study's seeds from a finished one: ``python -m pipeline.power``.

Reads the report's paired comparisons (``reports/comparisons.csv``: the sd of each pair's top-1
difference over seeds) and each run's measured training time (``runs/<variant>/seed<S>/timing.json``),
and prints, for each number of seeds, the smallest detectable top-1 difference of every compared pair
(alpha 0.05, power 0.8, dsts/stats.py) and the projected time of a study of the variants asked for.
The sds are measured at the study's own epochs and clip size; another setting needs its own run.

    python -m pipeline.power --seeds 3 4 6 8 10 --variants baseline shuffled dsts_3d dsts dsts_udl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd

from dsts.errors import DSTSError
from dsts.stats import min_detectable_difference
from pipeline._cli import run

# Per run, beyond training: process starts, indexing the data, evaluation and MLflow (measured on
# the default study: wall time of train + evaluate minus the train seconds of timing.json).
OVERHEAD_SECONDS = 25.0


def run_seconds(runs: Path, variant: str) -> float:
    """The mean measured training time of a variant's runs, plus the per-run overhead."""
    times = [
        json.loads(f.read_text())["train_seconds"] for f in sorted((runs / variant).glob("seed*/timing.json"))
    ]
    if not times:
        raise DSTSError(f"{runs / variant}: no timing.json; train the variant first")
    return statistics.fmean(times) + OVERHEAD_SECONDS


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.power",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--report", type=Path, default=Path("reports"))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 6, 8, 10])
    parser.add_argument("--variants", nargs="+", required=True, help="the variants of the planned study")
    args = parser.parse_args()
    table = args.report / "comparisons.csv"
    if not table.is_file():
        raise DSTSError(f"{table}: no such file; run the report first")
    pairs = pd.read_csv(table)
    pairs = pairs[pairs["metric"] == "top1"]
    per_seed = sum(run_seconds(args.runs, v) for v in args.variants)
    names = [f"{a}_vs_{b}" for a, b in zip(pairs["first"], pairs["second"])]
    print("| seeds | " + " | ".join(f"{n} MDD" for n in names) + " | projected time |")
    print("|---" * (len(names) + 2) + "|")
    for n in args.seeds:
        mdd = [100 * min_detectable_difference(sd, n) for sd in pairs["diff_sd"]]
        cells = " | ".join(f"{m:.1f}" for m in mdd)
        print(f"| {n} | {cells} | {n * per_seed / 60:.0f} min |")
    print(
        f"(measured sd of the paired top-1 differences, points: {', '.join(f'{100 * s:.1f}' for s in pairs['diff_sd'])};"
    )
    print(f" per seed of the {len(args.variants)} variants: {per_seed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    run(main)
