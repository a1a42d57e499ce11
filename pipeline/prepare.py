"""Stage ``prepare``: write the generated fine-grained benchmark in Diving48's on-disk format.

Writes ``data.root`` (``data/generated`` by default; ``--out`` elsewhere): ``rgb/<vid_name>.mp4``,
``Diving48_V2_train.json``, ``Diving48_V2_test.json``, ``Diving48_vocab.json``,
``Diving48_attributes.json`` (which cue, spatial or temporal, separates each class) and
``contact_sheet.png`` (one clip per class; docs/benchmark.md describes the benchmark). The size comes
from ``data.generate``; a seed gives the same bytes. The benchmark is generated into a temporary
folder beside the target and renamed into place at the end, so a failure leaves no half-written
data and an older complete folder is replaced only once the new one is complete. With
``data.dataset`` set to a real data set, the annotation files under ``data.root`` are checked and
nothing is written unless ``--out`` asks for the generated benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dsts.data import contact_sheet, read_diving48, read_finegym
from dsts.data.generate import default_jobs, generate_benchmark
from dsts.files import staged_folder
from pipeline._cli import add_config_args, config_from_args, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.prepare", description=__doc__)
    add_config_args(parser, variant=False, seed=False)
    parser.add_argument("--out", default=None, help="where to write the benchmark (default: data.root)")
    parser.add_argument("--jobs", type=int, default=None, help="encoding processes (default: up to 4)")
    args = parser.parse_args()
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    cfg = config_from_args(args)

    if cfg.data.dataset != "generated" and args.out is None:
        root = Path(cfg.data.root)
        if cfg.data.dataset == "diving48":
            sizes = {split: len(read_diving48(root, split)) for split in ("train", "test")}
        else:
            sizes = {
                "train": len(read_finegym(root / cfg.data.finegym_train_list, root)),
                "test": len(read_finegym(root / cfg.data.finegym_test_list, root)),
            }
        print(f"prepare: {cfg.data.dataset} at {root}: {sizes['train']} train and {sizes['test']} test clips")
        return 0

    target = Path(args.out or cfg.data.root).resolve()
    with staged_folder(target, replace=True) as staging:
        summary = generate_benchmark(
            staging, **dataclasses.asdict(cfg.data.generate), jobs=args.jobs or default_jobs()
        )
        contact_sheet(staging, staging / "contact_sheet.png")
    print(
        f"prepare: {summary['classes']} classes, {summary['train']} train and {summary['test']} test clips "
        f"({summary['frames']} frames at {summary['size']}x{summary['size']}) -> {target} "
        f"in {summary['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    run(main)
