"""Stage ``prepare``: write the generated fine-grained benchmark in Diving48's on-disk format.

Writes ``data/generated`` (``--out`` elsewhere): ``rgb/<vid_name>.mp4``, ``Diving48_V2_train.json``,
``Diving48_V2_test.json``, ``Diving48_vocab.json``, ``Diving48_attributes.json`` (which cue,
spatial or temporal, separates each class), ``generated.json`` (what was generated) and
``contact_sheet.png`` (one clip per class; docs/benchmark.md describes the benchmark). The size comes
from ``data.generate``; a seed gives the same bytes. The benchmark is generated into a temporary
folder beside the target and swapped in at the end, so a failure leaves no half-written data and an
older complete folder is replaced only once the new one is complete. A folder that this stage did not
make (no ``generated.json``: a real data set, say) is never replaced. Real data sets are not this
stage's business: train and evaluate read them at ``data.root``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dsts.config import GENERATED_ROOT
from dsts.data import contact_sheet
from dsts.data.generate import MARKER_FILE, default_jobs, generate_benchmark
from dsts.errors import DataError
from dsts.files import staged_folder
from pipeline._cli import add_config_args, config_from_args, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.prepare", description=__doc__)
    add_config_args(parser, variant=False, seed=False)
    parser.add_argument(
        "--out", default=GENERATED_ROOT, help=f"where to write the benchmark (default: {GENERATED_ROOT})"
    )
    parser.add_argument("--jobs", type=int, default=None, help="encoding processes (default: up to 4)")
    args = parser.parse_args()
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    cfg = config_from_args(args)

    target = Path(args.out).resolve()
    if target.exists() and any(target.iterdir()) and not (target / MARKER_FILE).is_file():
        raise DataError(
            f"{target}: not a generated benchmark (no {MARKER_FILE}); prepare replaces only a folder it made"
        )
    with staged_folder(target, replace=True) as staging:
        summary = generate_benchmark(
            staging, **dataclasses.asdict(cfg.data.generate), jobs=args.jobs or default_jobs()
        )
        contact_sheet(staging, staging / "contact_sheet.png")
    print(
        f"prepare: {summary['classes']} classes, {summary['train']} train, {summary['val']} validation and "
        f"{summary['test']} test clips "
        f"({summary['frames']} frames at {summary['size']}x{summary['size']}) -> {target} "
        f"in {summary['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    run(main)
