"""Clip loading throughput at the default data config (16-frame 64x64 clips, T = 8 at 32x32; read from params.yaml).

Run ``python -m pytest tests/benchmarks/test_bench_data.py --benchmark-only``: each timing is one full
pass over a 64-clip generated set (divide 64 by the time for clips per second). The normal suite runs
each body once (``--benchmark-disable``) and checks what it loaded.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from dsts.config import load_config
from dsts.data import build_dataset, build_loader, set_epoch
from dsts.data.decode import Video
from dsts.data.generate import generate_benchmark

CLIPS_PER_CLASS = 4  # x 16 classes = 64 training clips
ROOT_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def generated_data(root: Path):
    """The default data config on a 64-clip generated set written under ``root``."""
    cfg = load_config(ROOT_PARAMS).data
    gen = cfg.generate
    generate_benchmark(root, gen.classes, CLIPS_PER_CLASS, 1, gen.frames, gen.size, seed=0, jobs=2)
    cfg.root = str(root)
    cfg.val_fraction = 0.0  # no val list here: every clip is a training clip
    return cfg


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    return generated_data(tmp_path_factory.mktemp("bench") / "generated")


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cache", [True, False])
def test_bench_training_pass(benchmark, data_config, workers, cache):
    benchmark.group = "training pass over 64 clips (decode + transform), batch 16"
    data_config.cache = cache
    dataset = build_dataset(data_config, "train", train=True, seed=0)
    loader = build_loader(dataset, 16, shuffle=True, seed=0, num_workers=workers)
    epoch = iter(range(10**6))

    def one_pass() -> list[tuple[torch.Tensor, torch.Tensor]]:
        set_epoch(loader, next(epoch))
        return [(x, y) for x, y in loader]

    batches = benchmark.pedantic(one_pass, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["clips"] = len(dataset)
    crop, frames = data_config.crop, data_config.num_frames
    assert sum(len(y) for _, y in batches) == len(dataset) == 16 * CLIPS_PER_CLASS
    assert all(x.shape[1:] == (3, frames, crop, crop) and x.dtype == torch.float32 for x, _ in batches)
    seen = sorted(torch.cat([y for _, y in batches]).tolist())
    assert seen == sorted(dataset.table["label"].tolist())
    assert all(torch.isfinite(x).all() for x, _ in batches)


def decode_per_frame(path: str) -> np.ndarray:
    """PyAV's own conversion, a new converter for every frame: the oracle for :class:`Video`."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def decode_video(path: str) -> np.ndarray:
    with Video(path) as video:
        return video.read_range(0, video.num_frames)


@pytest.mark.parametrize("decode", [decode_video, decode_per_frame], ids=["Video", "per-frame converter"])
def test_bench_decode(benchmark, data_config, decode):
    benchmark.group = "decode every frame of 64 clips to RGB"
    paths = sorted(str(p) for p in (Path(data_config.root) / "rgb").glob("*_train_*.mp4"))
    clips = benchmark.pedantic(lambda: [decode(p) for p in paths], rounds=5, iterations=1, warmup_rounds=1)
    assert len(clips) == 16 * CLIPS_PER_CLASS
    for path, clip in zip(paths[:8], clips):
        np.testing.assert_array_equal(clip, decode_per_frame(path))  # the same pixels as PyAV's conversion
