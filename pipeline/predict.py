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

import pandas as pd
import torch

from dsts.checkpoint import load_model
from dsts.data.dataset import VideoDataset
from dsts.engine import resolve_device
from dsts.runs import RunFolder, run_folder
from pipeline._cli import add_config_args, config_from_args, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("video", help="an mp4 (or any file PyAV decodes)")
    add_config_args(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<variant>/seed<S>)")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    args = parser.parse_args()
    cfg = config_from_args(args)

    out = RunFolder(Path(args.out)) if args.out else run_folder(cfg.variant, cfg.train.seed)
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
    d = cfg.data
    clip, _ = VideoDataset(
        table,
        num_classes=len(names),
        class_names=names,
        class_cues=[None] * len(names),
        num_frames=d.num_frames,
        train=False,
        sampling=d.sampling,
        dense_stride=d.dense_stride,
        resize=d.resize,
        crop=d.crop,
        flip=False,
        test_clips=d.test_clips,
        test_crops=d.test_crops,
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
