"""The engine's pieces: seeded batch order, the schedule, checkpoints and RNG state."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dsts.checkpoint import FORMAT, atomic_save, rng_state, safe_load, set_rng_state
from dsts.config import load_config
from dsts.engine import SeededSampler, load_checkpoint, lr_factor
from dsts.errors import DSTSError
from dsts.seeding import mix_seed


@given(
    size=st.integers(1, 60),
    batch=st.integers(1, 9),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
)
def test_batches_partition_one_permutation(size, batch, seed, epoch):
    sampler = SeededSampler(size, batch, seed, stream=0)
    sampler.set_epoch(epoch)
    assert sorted(sampler) == list(range(size))
    batches = sampler.batches()
    flat = [i for b in batches for i in b]
    assert len(batches) == sampler.num_batches() == size // batch
    assert all(len(b) == batch for b in batches) and len(set(flat)) == len(flat)
    again = SeededSampler(size, batch, seed, stream=0)
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
    a = SeededSampler(100, 10, seed=0, stream=0)
    b = SeededSampler(100, 10, seed=0, stream=1)
    assert a.indices() != b.indices()
    first = a.indices()
    a.set_epoch(1)
    assert a.indices() != first
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) != mix_seed(1, 2, 4)


@given(step=st.integers(0, 199), warmup=st.sampled_from([0.0, 0.5, 2.0]))
def test_schedule_warmup_then_cosine(step, warmup):
    cfg = load_config(
        "params.yaml", overrides=["train.epochs=4", "train.schedule=cosine", f"train.warmup_epochs={warmup}"]
    )
    per_epoch = 50
    w = int(round(warmup * per_epoch))
    f = lr_factor(cfg, step, per_epoch)
    if step < w:
        assert f == pytest.approx((step + 1) / w)
    else:
        expected = 0.5 * (1 + math.cos(math.pi * (step - w) / (200 - w)))
        assert f == pytest.approx(expected)
    assert 0.0 <= f <= 1.0


def test_step_schedule():
    cfg = load_config(
        "params.yaml", overrides=["train.schedule=step", "train.step_size=2", "train.gamma=0.5"]
    )
    assert [lr_factor(cfg, e * 10, 10) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    atomic_save({"format": FORMAT, "rng": rng_state({"g": g})}, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    g.manual_seed(9)
    set_rng_state(safe_load(tmp_path / "s.pt")["rng"], {"g": g})
    got = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_atomic_save_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    atomic_save({"format": FORMAT, "x": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"format": FORMAT, "x": Boom()}, path)
    assert safe_load(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DSTSError, match="not a readable checkpoint"):
        safe_load(garbage)
    with pytest.raises(DSTSError, match="no such checkpoint"):
        safe_load(tmp_path / "absent.pt")
    cfg = load_config("params.yaml", variant="dsts", seed=0)
    other = load_config("params.yaml", variant="dsts", seed=1)
    atomic_save({"format": FORMAT, "config_hash": other.hash()}, tmp_path / "other.pt")
    with pytest.raises(DSTSError, match="checkpoint of another config") as info:
        load_checkpoint(tmp_path / "other.pt", cfg)
    assert "\n" not in str(info.value)


def test_weights_only_refuses_arbitrary_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"format": FORMAT, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DSTSError):
        safe_load(tmp_path / "evil.pt")
