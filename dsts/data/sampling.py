"""Sampling: which clips a batch takes (:class:`SeededSampler`) and which frames a clip takes
(TSN segment sampling or dense sampling at a stride).

Every order and every draw is a pure function of integers (the seed, a stream, the epoch), so a
run resumed at epoch ``k`` sees what the original saw, with any number of loader workers.

Frame indices are relative to the clip's first frame and lie in ``[0, length)``; they are sorted.

- **Segment** (TSN): the clip is cut into ``T`` segments ``[floor(k L / T), floor((k+1) L / T))``.
  Training takes one uniformly random frame per segment; testing takes, for view ``c`` of ``n``,
  the frame at fraction ``(2c + 1) / 2n`` of each segment (``n = 1``: the segment's centre).
- **Dense**: ``T`` frames ``stride`` apart, a window of ``(T - 1) * stride + 1`` frames. Training
  places the window uniformly at random; view ``c`` of ``n`` places it at fraction ``(2c + 1) / 2n``
  of the free room (``n = 1``: centred).

**Padding rule** for a clip shorter than the request: in segment mode a clip of ``L < T`` frames is
stretched in time, frame ``floor(k L / T)`` for ``k = 0 .. T-1``, so every frame repeats about
``T / L`` times in order; in dense mode the window starts at 0 and the indices past the end repeat
the last frame.
"""

from __future__ import annotations

import numpy as np
import torch

from dsts.seeding import stream_seed


class SeededSampler(torch.utils.data.Sampler[int]):
    """Indices in a permutation seeded by ``(seed, stream, epoch)``: the whole state is the epoch.

    ``stream`` (a name of :data:`dsts.seeding.STREAMS`) separates independent orders over the same
    data (the training batches and the UDL ``D_val`` batches). ``rank``/``world_size`` shard each permutation for data parallelism;
    the shards are disjoint and equally long. A ``DataLoader`` with ``batch_size`` and
    ``drop_last=True`` turns it into the batches of :meth:`batches`.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        stream: str = "batches",
        rank: int = 0,
        world_size: int = 1,
    ):
        self.size, self.batch_size, self.seed, self.stream = size, batch_size, seed, stream
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(stream_seed(self.seed, self.stream, self.epoch))
        order = torch.randperm(self.size, generator=g).tolist()
        usable = (len(order) // self.world_size) * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def batches(self) -> list[list[int]]:
        order = self.indices()
        return [
            order[i : i + self.batch_size]
            for i in range(0, self.num_batches() * self.batch_size, self.batch_size)
        ]

    def num_batches(self) -> int:
        return (self.size // self.world_size) // self.batch_size

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return self.size // self.world_size


def _uniform(high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in ``[0, high)``."""
    return int(torch.randint(high, (1,), generator=generator).item())


def segment_bounds(length: int, num_frames: int) -> np.ndarray:
    """The ``T + 1`` segment boundaries ``floor(k L / T)``."""
    return (np.arange(num_frames + 1, dtype=np.int64) * length) // num_frames


def segment_indices(
    length: int,
    num_frames: int,
    train: bool,
    generator: torch.Generator | None = None,
    view: int = 0,
    num_views: int = 1,
) -> np.ndarray:
    """TSN segment sampling: ``num_frames`` sorted indices in ``[0, length)``, one per segment."""
    if length < 1 or num_frames < 1:
        raise ValueError(
            f"segment sampling needs length >= 1 and num_frames >= 1, got {length}, {num_frames}"
        )
    if not 0 <= view < num_views:
        raise ValueError(f"view {view} is not in [0, {num_views})")
    bounds = segment_bounds(length, num_frames)
    if length < num_frames:
        return bounds[:-1].copy()
    sizes = np.diff(bounds)
    if train:
        offsets = np.array([_uniform(int(n), generator) for n in sizes], dtype=np.int64)
    else:
        offsets = (sizes * (2 * view + 1)) // (2 * num_views)
    return bounds[:-1] + offsets


def dense_indices(
    length: int,
    num_frames: int,
    stride: int,
    train: bool,
    generator: torch.Generator | None = None,
    view: int = 0,
    num_views: int = 1,
) -> np.ndarray:
    """Dense sampling: ``num_frames`` indices ``stride`` apart, inside ``[0, length)``."""
    if length < 1 or num_frames < 1 or stride < 1:
        raise ValueError(
            f"dense sampling needs length, num_frames, stride >= 1, got {length}, {num_frames}, {stride}"
        )
    if not 0 <= view < num_views:
        raise ValueError(f"view {view} is not in [0, {num_views})")
    span = (num_frames - 1) * stride + 1
    room = length - span
    if room < 0:
        start = 0
    elif train:
        start = _uniform(room + 1, generator)
    else:
        start = (room * (2 * view + 1)) // (2 * num_views)
    return np.minimum(start + np.arange(num_frames, dtype=np.int64) * stride, length - 1)


def sample_indices(
    mode: str,
    length: int,
    num_frames: int,
    train: bool,
    generator: torch.Generator | None = None,
    stride: int = 1,
    view: int = 0,
    num_views: int = 1,
) -> np.ndarray:
    if mode == "segment":
        return segment_indices(length, num_frames, train, generator, view, num_views)
    if mode == "dense":
        return dense_indices(length, num_frames, stride, train, generator, view, num_views)
    raise ValueError(f"sampling must be segment or dense, got {mode!r}")
