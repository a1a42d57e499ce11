"""Fixtures for the data tests: a tiny generated benchmark and helpers that write videos and lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from dsts.config import DataConfig, GenerateConfig
from dsts.data.generate import generate_benchmark

TINY = {
    "classes": 4,
    "clips_per_class_train": 3,
    "clips_per_class_test": 2,
    "frames": 8,
    "size": 32,
    "seed": 0,
}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny generated benchmark (4 classes, 12 train and 8 test clips of 8 frames at 32x32).
    Read-only: tests that change files copy it first (``tiny_copy``)."""
    root = tmp_path_factory.mktemp("tiny") / "generated"
    generate_benchmark(root, **TINY)
    return root


@pytest.fixture
def tiny_copy(tiny_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    return root


def tiny_config(root: Path, **changes) -> DataConfig:
    """A DataConfig for the tiny benchmark; ``changes`` override its fields."""
    fields = {
        "dataset": "generated",
        "root": str(root),
        "num_frames": 4,
        "resize": 32,
        "crop": 28,
        "val_fraction": 0.0,  # the tiny benchmark has no val list; tests that need one set it
        "generate": GenerateConfig(**TINY),
    }
    fields.update(changes)
    return DataConfig(**fields)


def write_lossless(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """Frames ``(T, H, W, 3)`` uint8 into an mp4 that decodes back exactly (libx264rgb, crf 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.options = {"crf": "0", "threads": "1", "g": "12"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def numbered_frames(count: int, height: int = 16, width: int = 24) -> np.ndarray:
    """Frames whose pixels encode their own index (frame i is filled with 3 * i + channel)."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i] = (np.array([3 * i, 3 * i + 1, 3 * i + 2]) % 256).astype(np.uint8)
    return frames


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
