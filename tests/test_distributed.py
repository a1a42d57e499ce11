"""Data-parallel UDL: K ranks give the gradients of one process on the concatenated batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dsts
from dsts.distributed import all_reduce_grads, distributed_meta_gradient
from dsts.udl import meta_gradient, split_parameters
from tests.helpers import expensive

METHODS = ["autograd", "finite_difference", "first_order"]


class Tiny(nn.Module):
    def __init__(self, channels: int = 3, layers: int = 1, neurons: int = 2, classes: int = 3):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv3d(3, channels, 3, padding=1, bias=False), nn.BatchNorm3d(channels), nn.ReLU()
        )
        self.dsts = dsts.DSTS(channels, layers, neurons, tau=1.0, score_init_std=0.3)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(self.dsts(self.backbone(x)).mean(dim=(2, 3, 4)))


def make(seed: int, batch: int = 4):
    torch.manual_seed(seed)
    model = Tiny().double().eval()
    for p in model.parameters():  # non-trivial gates and BatchNorm affine parameters
        p.data.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2 * batch, 3, 2, 3, 3, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (2 * batch,), generator=g)
    return model, (x[:batch], y[:batch]), (x[batch:], y[batch:])


@settings(max_examples=expensive(20, 5))
@given(seed=st.integers(0, 10_000), method=st.sampled_from(METHODS), scope=st.sampled_from(["all", "dsts"]))
def test_one_process_equals_meta_gradient(seed, method, scope):
    model, train, val = make(seed)
    with dsts.relaxed(model):
        want = meta_gradient(model, train, val, 0.1, method=method, scope=scope, fd_eps=1e-4)
        got = distributed_meta_gradient(model, train, val, 0.1, method=method, scope=scope, fd_eps=1e-4).grads
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-7, atol=1e-10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, seed: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, (xt, yt), (xv, yv) = make(seed)
        shard = slice(rank * len(xt) // world, (rank + 1) * len(xt) // world)
        out = {}
        with dsts.relaxed(model):
            for method in METHODS:
                meta = distributed_meta_gradient(
                    model, (xt[shard], yt[shard]), (xv[shard], yv[shard]), 0.1, method=method, fd_eps=1e-4
                )
                out[method] = {n: g.clone() for n, g in meta.grads.items()}
            model.zero_grad()
            F.cross_entropy(model(xt[shard]), yt[shard]).backward()
            all_reduce_grads(model)
            out["joint"] = {n: p.grad.clone() for n, p in model.named_parameters()}
        # numpy arrays travel by value (tensors would travel as shared-memory handles that die with us)
        queue.put((rank, {k: {n: t.numpy() for n, t in grads.items()} for k, grads in out.items()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch():
    seed = 7
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, seed, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    model, train, val = make(seed)
    with dsts.relaxed(model):
        single = {m: meta_gradient(model, train, val, 0.1, method=m, fd_eps=1e-4) for m in METHODS}
        model.zero_grad()
        F.cross_entropy(model(train[0]), train[1]).backward()
        single["joint"] = {n: p.grad.clone() for n, p in model.named_parameters()}
    upstream, _ = split_parameters(model)
    assert upstream
    for rank in (0, 1):
        for key, want in single.items():
            got = {n: torch.from_numpy(a) for n, a in results[rank][key].items()}
            for name in want:
                # finite differences of a global v: exact up to the step's own error, so looser
                tol = 1e-5 if key == "finite_difference" else 1e-9
                torch.testing.assert_close(got[name], want[name], rtol=tol, atol=tol)
    # the naive alternative, the mean of per-rank meta-gradients, is a different quantity
    with dsts.relaxed(model):
        halves = [slice(0, 2), slice(2, 4)]
        naive = [
            meta_gradient(model, (train[0][h], train[1][h]), (val[0][h], val[1][h]), 0.1) for h in halves
        ]
    assert any(not torch.allclose((naive[0][n] + naive[1][n]) / 2, single["autograd"][n]) for n in upstream)
