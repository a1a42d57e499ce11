"""Classify one video with a trained (variant, seed): the top-5 classes with their probabilities,
and the neuron each DSTS layer chose.

Reads ``runs/<variant>/seed<S>/model.pt`` (``--out`` elsewhere); the clip is sampled and cropped as
in evaluation (``data.num_frames``, ``data.crop``, ``data.test_clips`` x ``data.test_crops`` views,
probabilities averaged over the views). A missing or unreadable video is one error line (exit 2).

    python -m pipeline.predict VIDEO --variant dsts_udl --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline._cli import parse_run_stage, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("video", help="an mp4 (or any file PyAV decodes)")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    args, cfg, out = parse_run_stage(parser)  # applies the kernel pins: torch must not be loaded yet
    # Imported after the pins, on purpose: torch reads them once, when it loads (dsts/portable.py).
    import pandas as pd
    import torch

    from dsts.checkpoint import load_model
    from dsts.data.dataset import VideoDataset
    from dsts.engine import resolve_device
    from dsts.portable import pin_torch

    pin_torch(cfg.train.portable, cfg.train.threads)
    device = resolve_device(cfg.train.device)
    model, saved = load_model(out.model, cfg, device)
    names = list(saved["class_names"])
    table = pd.DataFrame(
        {
            "video_id": [Path(args.video).stem],
            "path": [str(Path(args.video))],
            "label": [0],
            "start_frame": [0],
        }
    )
    table["end_frame"] = pd.array([pd.NA], dtype="Int64")
    clip, _ = VideoDataset(
        table,
        cfg.data,
        train=False,
        num_classes=len(names),
        class_names=names,
        class_cues=[None] * len(names),
    )[0]
    with torch.no_grad():
        probs = model(clip.to(device)).float().softmax(-1).mean(0)
    top = probs.topk(min(args.top, len(names)))
    print(f"{args.video}: {cfg.variant} seed {cfg.train.seed}")
    for p, k in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {p:7.2%}  {k:3d}  {names[k]}")
    if model.dsts is not None:
        chosen = model.dsts.last_selection[0].tolist()
        print("  neurons (first view): " + ", ".join(f"layer {j}: {n}" for j, n in enumerate(chosen)))
    return 0


if __name__ == "__main__":
    run(main)
