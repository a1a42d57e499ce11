"""Stage ``report``: the ablation report over every (variant, seed) listed in params.yaml.

Reads ``runs/<variant>/seed<S>/`` (``metrics.json``, ``history.csv``, ``timing.json``; ``model.pt``
for the cost columns) and writes ``reports/``: ``ablation.csv`` and ``ablation.md`` (one row per
variant: seed mean, sd and 95% CI, paired tests against dsts_udl and static, minimum detectable
difference, specialization, parameters, FLOPs and CPU latency per clip), ``runs.csv``,
``comparisons.csv``, ``specialization.csv``, ``summary.json`` (for ``dvc metrics``; no timings) and
the figures ``top1_ci.png``, ``mca_ci.png``, ``learning_curves.png`` and ``specialization.png``.
A missing or malformed run file is one error line (exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse

from pipeline._cli import run


def main() -> int:
    from dsts.report import ALPHA, POWER, REFERENCES

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="params file with `variants` and `seeds` (default: params.yaml)",
    )
    parser.add_argument("--runs", default="runs", help="folder of the run outputs (default: runs)")
    parser.add_argument("--out", default="reports", help="output folder (default: reports)")
    parser.add_argument(
        "--references",
        default=",".join(REFERENCES),
        help=f"comma-separated variants to compare every variant against (default: {','.join(REFERENCES)})",
    )
    parser.add_argument(
        "--alpha", type=float, default=ALPHA, help=f"test level; CIs are at 1 - alpha (default: {ALPHA})"
    )
    parser.add_argument(
        "--power",
        type=float,
        default=POWER,
        help=f"power of the minimum detectable difference (default: {POWER})",
    )
    parser.add_argument(
        "--latency-repeats",
        type=int,
        default=10,
        help="timed forwards per variant, after 3 untimed ones; the median is reported (default: 10)",
    )
    parser.add_argument(
        "--no-cost", action="store_true", help="skip building the models (no FLOPs or latency)"
    )
    args = parser.parse_args()

    from dsts.report import make_report

    references = [r.strip() for r in args.references.split(",") if r.strip()]
    report = make_report(
        args.runs,
        args.params,
        args.out,
        cost=not args.no_cost,
        references=references,
        alpha=args.alpha,
        power=args.power,
        latency_repeats=args.latency_repeats,
    )
    print(
        f"report: {len(report.variants)} variants x {len(report.seeds)} seeds -> {args.out}/ablation.md, "
        f"{args.out}/summary.json"
    )
    return 0


if __name__ == "__main__":
    run(main)
