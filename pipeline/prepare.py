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
import os
import shutil
import tempfile
from pathlib import Path

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

    from dsts.data import contact_sheet
    from dsts.data.generate import default_jobs, generate_benchmark

    if cfg.data.dataset != "generated" and args.out is None:
        from dsts.data import read_diving48, read_finegym

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
    target.parent.mkdir(parents=True, exist_ok=True)
    gen = cfg.data.generate
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        summary = generate_benchmark(
            staging,
            classes=gen.classes,
            clips_per_class_train=gen.clips_per_class_train,
            clips_per_class_test=gen.clips_per_class_test,
            frames=gen.frames,
            size=gen.size,
            seed=gen.seed,
            jobs=args.jobs or default_jobs(),
        )
        contact_sheet(staging, staging / "contact_sheet.png")
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except OSError:
            if old is not None:  # put the complete older folder back
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(
        f"prepare: {summary['classes']} classes, {summary['train']} train and {summary['test']} test clips "
        f"({summary['frames']} frames at {summary['size']}x{summary['size']}) -> {target} "
        f"in {summary['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    run(main)
