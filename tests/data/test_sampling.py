"""Sampling: the seeded batch order (a permutation per seed, stream and epoch, sharded by rank), and
frame indices (T of them, sorted, inside [0, L), one per segment; the padding rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dsts.data import dense_indices, sample_indices, segment_indices
from dsts.data.sampling import SeededSampler, segment_bounds

lengths = st.integers(1, 400)
counts = st.integers(1, 32)
seeds = st.integers(0, 2**31 - 1)


def segments_of(indices: np.ndarray, length: int, num_frames: int) -> list[int]:
    """The segment (by the literal rule floor(k L / T) <= i < floor((k+1) L / T)) of each index."""
    out = []
    for i in indices:
        owners = [
            k for k in range(num_frames) if (k * length) // num_frames <= i < ((k + 1) * length) // num_frames
        ]
        assert len(owners) == 1
        out.append(owners[0])
    return out


@given(length=lengths, num_frames=counts, seed=seeds, train=st.booleans())
def test_segment_indices(length, num_frames, seed, train):
    idx = segment_indices(length, num_frames, train, torch.Generator().manual_seed(seed))
    assert idx.shape == (num_frames,) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < length
    assert np.all(np.diff(idx) >= 0)
    if length >= num_frames:
        assert np.all(np.diff(idx) > 0)
        assert segments_of(idx, length, num_frames) == list(range(num_frames))
    else:  # padding: the clip is stretched, every frame appears, in order
        np.testing.assert_array_equal(idx, (np.arange(num_frames) * length) // num_frames)
        assert set(idx.tolist()) == set(range(length))


@given(length=st.integers(1, 400), num_frames=counts, views=st.integers(1, 5), data=st.data())
def test_segment_test_views(length, num_frames, views, data):
    """Test view c of n takes the frame at fraction (2c + 1) / 2n of every segment: n = 1 is the centre."""
    view = data.draw(st.integers(0, views - 1))
    idx = segment_indices(length, num_frames, False, view=view, num_views=views)
    if length >= num_frames:
        for k, i in enumerate(idx):
            lo, hi = (k * length) // num_frames, ((k + 1) * length) // num_frames
            assert i == lo + ((hi - lo) * (2 * view + 1)) // (2 * views)
        if views == 1:
            lo, hi = segment_bounds(length, num_frames)[:2]
            assert idx[0] == lo + (hi - lo) // 2
    assert np.array_equal(idx, segment_indices(length, num_frames, False, view=view, num_views=views))


@given(length=lengths, num_frames=counts, stride=st.integers(1, 8), seed=seeds, train=st.booleans())
def test_dense_indices(length, num_frames, stride, seed, train):
    idx = dense_indices(length, num_frames, stride, train, torch.Generator().manual_seed(seed))
    assert idx.shape == (num_frames,)
    assert idx.min() >= 0 and idx.max() < length
    assert np.all(np.diff(idx) >= 0)
    span = (num_frames - 1) * stride + 1
    if length >= span:
        assert np.all(np.diff(idx) == stride)
    else:  # padding: the window starts at 0 and repeats the last frame
        np.testing.assert_array_equal(idx, np.minimum(np.arange(num_frames) * stride, length - 1))


@given(length=st.integers(1, 200), num_frames=counts, stride=st.integers(1, 4), views=st.integers(1, 4))
def test_dense_test_views_are_spread(length, num_frames, stride, views):
    starts = [
        dense_indices(length, num_frames, stride, False, view=c, num_views=views)[0] for c in range(views)
    ]
    assert starts == sorted(starts)
    span = (num_frames - 1) * stride + 1
    if views == 1 and length >= span:
        assert starts[0] == (length - span) // 2


@given(length=st.integers(2, 300), num_frames=st.integers(1, 16), seed=seeds)
def test_training_draws_depend_only_on_the_generator(length, num_frames, seed):
    a = segment_indices(length, num_frames, True, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed + 1)  # global state must not matter
    b = segment_indices(length, num_frames, True, torch.Generator().manual_seed(seed))
    np.testing.assert_array_equal(a, b)


def test_training_covers_each_segment_uniformly():
    """Over many draws every frame of a segment is taken, about equally often."""
    g = torch.Generator().manual_seed(0)
    draws = np.stack([segment_indices(40, 4, True, g) for _ in range(4000)])
    for k in range(4):
        counts = np.bincount(draws[:, k] - 10 * k, minlength=10)
        assert counts.min() > 300 and counts.max() < 500


def test_bad_arguments():
    with pytest.raises(ValueError):
        segment_indices(0, 4, False)
    with pytest.raises(ValueError):
        dense_indices(10, 4, 0, False)
    with pytest.raises(ValueError):
        sample_indices("random", 10, 4, False)
    with pytest.raises(ValueError):
        segment_indices(10, 4, False, view=2, num_views=2)


@given(
    size=st.integers(1, 60),
    batch=st.integers(1, 9),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
)
def test_batches_partition_one_permutation(size, batch, seed, epoch):
    sampler = SeededSampler(size, batch, seed, stream="batches")
    sampler.set_epoch(epoch)
    assert sorted(sampler) == list(range(size))
    batches = sampler.batches()
    flat = [i for b in batches for i in b]
    assert len(batches) == sampler.num_batches() == size // batch
    assert all(len(b) == batch for b in batches) and len(set(flat)) == len(flat)
    again = SeededSampler(size, batch, seed, stream="batches")
    again.set_epoch(epoch)
    assert again.batches() == batches
    # what a DataLoader makes of it
    loader = torch.utils.data.DataLoader(list(range(size)), batch_size=batch, sampler=again, drop_last=True)
    assert [b.tolist() for b in loader] == batches


@given(size=st.integers(2, 80), world=st.integers(1, 4), seed=st.integers(0, 1000))
def test_rank_shards_are_disjoint_and_cover_the_usable_permutation(size, world, seed):
    full = SeededSampler(size, 1, seed).indices()
    shards = [SeededSampler(size, 1, seed, rank=r, world_size=world).indices() for r in range(world)]
    usable = (size // world) * world
    assert sorted(i for s in shards for i in s) == sorted(full[:usable])
    assert len({len(s) for s in shards}) == 1


def test_streams_and_epochs_give_different_orders():
    a = SeededSampler(100, 10, seed=0, stream="batches")
    b = SeededSampler(100, 10, seed=0, stream="meta_batches")
    assert a.indices() != b.indices()
    first = a.indices()
    a.set_epoch(1)
    assert a.indices() != first
