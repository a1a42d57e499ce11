"""A plain reference: a 4-layer 3D CNN trained by a short loop of plain PyTorch, outside the engine.

It answers one question: does the engine handicap its models? It reads the same Diving48-format
data (train, val when there is a list for it, test), takes every ``--stride``-th frame of each clip
at ``--size`` pixels (no crop, no augmentation), and trains ``Conv3d`` blocks of 32, 64, 64 and 128
channels with AdamW and a one-cycle schedule, batch 16. The engine's ``baseline`` at the same clip
size, epochs and data should reach at least this model's top-1 minus 2 points (docs/study.md).
``--model small3d`` trains the engine's backbone (and a linear head) in the same plain loop, which
tells a weaker backbone from a handicap of the engine.

    python -m pipeline.reference --root data/generated --epochs 12 --seeds 0 1 2 --stride 2 --size 32
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dsts.portable import pin_environment
from pipeline._cli import run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", default="data/generated", help="a Diving48-format folder")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stride", type=int, default=1, help="keep every stride-th frame (default 1: all)")
    parser.add_argument(
        "--size", type=int, default=0, help="resize frames to size x size (default: as stored)"
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="the one-cycle schedule's peak learning rate")
    parser.add_argument(
        "--model",
        choices=["plain", "small3d"],
        default="plain",
        help="the plain CNN, or the engine's backbone",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    pin_environment(True, 2)  # the same kernels as the pipeline's portable runs
    # Imported after the pins, on purpose: torch reads them once, when it loads (dsts/portable.py).
    from pipeline._reference import load_data, train_reference

    data = load_data(Path(args.root), args.stride, args.size)
    results = [train_reference(data, args.epochs, seed, args.lr, args.model) for seed in args.seeds]
    for r in results:
        print(
            f"seed {r['seed']}: val top-1 {100 * r['val_top1']:.1f}%, test top-1 {100 * r['test_top1']:.1f}% "
            f"({r['seconds']:.0f} s of training)"
        )
    summary = {k: statistics.fmean(r[k] for r in results) for k in ("val_top1", "test_top1", "seconds")}
    print(
        f"mean over {len(results)} seeds: val {100 * summary['val_top1']:.1f}%, test {100 * summary['test_top1']:.1f}%"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": results, "mean": summary, "args": vars(args)}, indent=2)
        )
    return 0


if __name__ == "__main__":
    run(main)
