"""Stage ``report``: the ablation report over every (variant, seed) listed in params.yaml.

Reads only the run files under ``runs/<variant>/seed<S>/`` (``metrics.json``, ``history.csv``,
and where present ``timing.json`` and ``cost.json``) and writes ``reports/``: ``ablation.csv`` and
``ablation.md`` (first, whether the positive control shows that the study can detect an effect;
then per variant the seed mean, sd and 95% CI, the cues learned, convergence, specialization,
parameters, FLOPs and CPU latency per clip; the paired tests of the pairs listed under
``report.comparisons`` in the params, with their smallest detectable differences), ``runs.csv``,
``comparisons.csv``, ``specialization.csv``, ``curves.csv``, ``summary.json`` (for ``dvc metrics``;
no timings) and the figures ``top1_ci.png``, ``mca_ci.png``, ``learning_curves.png``,
``routing.png`` and ``specialization.png``. A missing or malformed run file is one error line
(exit 2) and nothing is written.

Then, unless ``tracking.enabled`` is false or no run folder names an MLflow run, it creates or
updates the MLflow study run of this params state (dsts/tracking/study.py): the summary's numbers
as metrics, these files as artifacts, and a ``study`` tag on every run it summarizes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dsts.report import ALPHA, OUTPUTS, POWER, make_report, summary
from dsts.tracking.study import log_study
from pipeline._cli import run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="params file with `variants`, `seeds` and `report.comparisons` (pairs [first, second])",
    )
    parser.add_argument("--runs", default="runs", help="folder of the run outputs (default: runs)")
    parser.add_argument("--out", default="reports", help="output folder (default: reports)")
    parser.add_argument(
        "--alpha", type=float, default=ALPHA, help=f"test level; CIs at 1 - alpha (default: {ALPHA})"
    )
    parser.add_argument(
        "--power",
        type=float,
        default=POWER,
        help=f"power of the smallest detectable difference (default: {POWER})",
    )
    args = parser.parse_args()
    report = make_report(args.runs, args.params, args.out, args.alpha, args.power)
    print(f"report: {len(report.variants)} variants x {len(report.seeds)} seeds -> {args.out}/ablation.md")
    pairs = ",".join(f"{first}_vs_{second}" for first, second in report.pairs)
    settings = {"comparisons": pairs, "alpha": args.alpha, "power": args.power}
    outputs = [Path(args.out) / name for name in OUTPUTS]
    study = log_study(
        args.params, report.variants, report.seeds, settings, summary(report), outputs, args.runs
    )
    if study is not None:
        missing = f"; not in this store: {', '.join(study.missing)}" if study.missing else ""
        print(
            f"MLflow study {study.key} ({study.name}): run {study.run_id}, {len(study.linked)} runs{missing}"
        )
    return 0


if __name__ == "__main__":
    run(main)
