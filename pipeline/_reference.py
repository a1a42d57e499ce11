"""The plain reference's model and loop (``python -m pipeline.reference``): imported after the kernel
pins, so that it runs on the same kernels as the pipeline. Deliberately plain PyTorch: nothing of the
engine, so that a handicap of the engine shows as a gap."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsts.backbones import Small3D
from dsts.data import read_diving48, read_video
from dsts.data.dataset import VAL_LIST


def plain_cnn(classes: int) -> nn.Sequential:
    """Four conv3d blocks (32, 64, 64, 128 channels; max pooling after the first three, the first in
    space only), global average pooling, a linear head."""

    def block(c_in: int, c_out: int, pool: tuple[int, int, int] | None) -> list[nn.Module]:
        layers: list[nn.Module] = [
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm3d(c_out),
            nn.ReLU(),
        ]
        return layers + ([nn.MaxPool3d(pool)] if pool else [])

    return nn.Sequential(
        *block(3, 32, (1, 2, 2)),
        *block(32, 64, (2, 2, 2)),
        *block(64, 64, (2, 2, 2)),
        *block(64, 128, None),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(128, classes),
    )


def load_split(root: Path, split: str, stride: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip of a split as float ``(n, 3, T, H, W)`` scaled to [-1, 1], and its labels."""
    table = read_diving48(root, split)
    clips = []
    for path, start, end in zip(table["path"], table["start_frame"], table["end_frame"]):
        frames = read_video(str(path), int(start), int(end))[::stride]
        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        if size:
            clip = F.interpolate(
                clip, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        clips.append(clip)
    return torch.stack(clips), torch.tensor(table["label"].to_numpy(), dtype=torch.long)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    hits = sum(int((model(x[i : i + 64]).argmax(1) == y[i : i + 64]).sum()) for i in range(0, len(x), 64))
    return hits / len(x)


def load_data(root: Path, stride: int, size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The train, val (when the data set has a list for it) and test splits, decoded once."""
    splits = ("train", "val", "test") if (root / VAL_LIST).is_file() else ("train", "test")
    return {split: load_split(root, split, stride, size) for split in splits}


def small3d_classifier(classes: int) -> nn.Sequential:
    """The engine's backbone (dsts/backbones.py), global average pooling and a linear head: the
    engine's ``baseline`` without dropout, outside the engine."""
    return nn.Sequential(
        Small3D(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(Small3D.out_channels, classes)
    )


MODELS = {"plain": plain_cnn, "small3d": small3d_classifier}


def train_reference(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
    seed: int,
    lr: float,
    model: str = "plain",
) -> dict:
    torch.manual_seed(seed)
    x, y = data["train"]
    xt, yt = data["test"]
    xv, yv = data.get("val", (xt[:0], yt[:0]))
    net = MODELS[model](int(y.max()) + 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // 16)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    started = time.perf_counter()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x) - 15, 16):
            batch = order[i : i + 16]
            loss = F.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - started
    val = accuracy(net, xv, yv) if len(xv) else float("nan")
    return {"seed": seed, "val_top1": val, "test_top1": accuracy(net, xt, yt), "seconds": seconds}
