"""Data-parallel UDL: K ranks give what one process gives on the concatenated batch.

UDL has one code path (``dsts/udl.py``); under torchrun its reduction hook is
:func:`dsts.distributed.all_reduce_mean`. Two gloo processes on the CPU, each with half of every
batch, are compared with one process on the whole batches: the meta-gradients of the three methods
in both scopes, a whole UDL iteration with AdamW, the joint step's gradient averaging, and the rule
for parameters that the loss does not reach (``None`` where no rank reached them, the mean with
zeros where some did).
"""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import dsts
from dsts.distributed import all_reduce_grads, all_reduce_mean
from dsts.udl import METHODS, SCOPES, UDLStep, meta_gradient, split_parameters

WORLD = 2


class Tiny(nn.Module):
    """A backbone, a DSTS module, a head, and ``unused``, a layer that no forward reaches.
    ``extra`` joins the output only while ``use_extra`` is set (on some ranks and not others)."""

    def __init__(self, channels: int = 3, layers: int = 1, neurons: int = 2, classes: int = 3):
        super().__init__()
        # ends at BatchNorm, as every backbone of the library does: the DSTS input is centred
        self.backbone = nn.Sequential(
            nn.Conv3d(3, channels, 3, padding=1, bias=False), nn.BatchNorm3d(channels)
        )
        self.dsts = dsts.DSTS(channels, layers, neurons, tau=1.0, score_init_std=0.3)
        self.head = nn.Linear(channels, classes)
        self.unused = nn.Linear(2, 2)
        self.extra = nn.Parameter(torch.zeros(classes))
        self.use_extra = False

    def forward(self, x):
        out = self.head(self.dsts(self.backbone(x)).mean(dim=(2, 3, 4)))
        return out + self.extra if self.use_extra else out


def make(seed: int, batch: int = 4):
    torch.manual_seed(seed)
    model = Tiny().double().eval()
    for p in model.parameters():  # non-trivial gates and BatchNorm affine parameters
        p.data.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2 * batch, 3, 2, 3, 3, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (2 * batch,), generator=g)
    return model, (x[:batch], y[:batch]), (x[batch:], y[batch:])


def udl_iteration(model, train, val, method, scope, reduce=None):
    """One UDLStep with AdamW (weight decay on): ``(parameters after, .grad after, losses)``."""
    model = copy.deepcopy(model)
    up, down = split_parameters(model)
    step = UDLStep(
        model,
        torch.optim.AdamW(up.values(), lr=1e-2, weight_decay=0.1),
        torch.optim.AdamW(down.values(), lr=1e-2, weight_decay=0.1),
        0.1,
        method=method,
        scope=scope,
        fd_eps=1e-4,
        reduce=reduce,
    )
    losses = step.step(train, val)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return params, grads, losses


def joint_grads(model, x, y, use_extra: bool, reduce: bool) -> dict:
    model = copy.deepcopy(model)
    model.use_extra = use_extra
    F.cross_entropy(model(x), y).backward()
    if reduce:
        all_reduce_grads(model)
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def rank_results(rank: int, seed: int) -> dict:
    """Everything one rank computes on its shard of ``make(seed)``'s batches."""
    model, (xt, yt), (xv, yv) = make(seed)
    shard = slice(rank * len(xt) // WORLD, (rank + 1) * len(xt) // WORLD)
    train, val = (xt[shard], yt[shard]), (xv[shard], yv[shard])
    out: dict = {}
    with dsts.relaxed(model):
        for method in METHODS:
            for scope in SCOPES:
                grads = meta_gradient(
                    model, train, val, 0.1, method=method, scope=scope, fd_eps=1e-4, reduce=all_reduce_mean
                )
                out["meta", method, scope] = grads
                out["step", method, scope] = udl_iteration(model, train, val, method, scope, all_reduce_mean)
        out["joint"] = joint_grads(model, *train, use_extra=False, reduce=True)
        # ``extra`` reached on rank 0 only: the mean over ranks with rank 1's zeros
        out["partial"] = joint_grads(model, *train, use_extra=rank == 0, reduce=True)
        out["partial-local"] = joint_grads(model, *train, use_extra=rank == 0, reduce=False)
    # the hook on its own: names reached on no rank, on one rank, on both; and its backward
    t = torch.arange(3.0) + rank
    got = all_reduce_mean(
        {"none": None, "one": t if rank == 0 else None, "both": t}, {n: t for n in ("none", "one")}
    )
    x = torch.ones(2, requires_grad=True)
    (all_reduce_mean({"x": x})["x"] * (rank + 1)).sum().backward()
    out["hook"] = {**got, "backward": x.grad}
    return out


def _numpy(obj):
    """Tensors as numpy arrays, which travel by value (tensors would travel as shared-memory
    handles that die with the process)."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _numpy(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_numpy(v) for v in obj)
    return obj


def _tensors(obj):
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_tensors(v) for v in obj)
    return obj if obj is None or isinstance(obj, float) else torch.from_numpy(obj)


def _worker(rank: int, port: int, seed: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        queue.put((rank, _numpy(rank_results(rank, seed))))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SEED = 7


@pytest.fixture(scope="module")
def ranks() -> dict[int, dict]:
    """Both ranks' results, from one run of two gloo processes."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, SEED, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return {rank: _tensors(out) for rank, out in results.items()}


def assert_same_grads(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        assert (g is None) == (w is None), name
        if w is not None:
            torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=name)


def test_outside_a_process_group_the_reduction_is_the_identity():
    t = torch.ones(2, requires_grad=True) * 2
    got = all_reduce_mean({"a": t, "b": None})
    assert got["a"] is t and got["b"] is None


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", SCOPES)
def test_two_ranks_give_the_meta_gradient_of_the_concatenated_batch(ranks, method, scope):
    model, train, val = make(SEED)
    with dsts.relaxed(model):
        want = meta_gradient(model, train, val, 0.1, method=method, scope=scope, fd_eps=1e-4)
    # finite differences of a global v: exact up to the step's own error, so looser
    tol = 1e-5 if method == "finite_difference" else 1e-9
    for rank in ranks:
        assert_same_grads(ranks[rank]["meta", method, scope], want, tol)


@pytest.mark.slow
def test_the_mean_of_per_rank_meta_gradients_would_be_another_quantity():
    """What the two ranks must not compute: each its own meta-gradient, then the mean."""
    model, train, val = make(SEED)
    upstream, _ = split_parameters(model)
    with dsts.relaxed(model):
        want = meta_gradient(model, train, val, 0.1)
        halves = [slice(0, 2), slice(2, 4)]
        naive = [
            meta_gradient(model, (train[0][h], train[1][h]), (val[0][h], val[1][h]), 0.1) for h in halves
        ]
    assert any(not torch.allclose((naive[0][n] + naive[1][n]) / 2, want[n]) for n in upstream)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", SCOPES)
def test_two_ranks_take_the_udl_step_of_the_concatenated_batch(ranks, method, scope):
    """Same parameters, same ``.grad`` (``None`` included: ``unused``, reached on no rank, is
    skipped by AdamW and not weight-decayed, on every rank as on one process) and same losses."""
    model, train, val = make(SEED)
    with dsts.relaxed(model):
        params, grads, losses = udl_iteration(model, train, val, method, scope)
    assert grads["unused.weight"] is None and torch.equal(params["unused.weight"], model.unused.weight)
    tol = 1e-5 if method == "finite_difference" else 1e-9
    for rank in ranks:
        got_params, got_grads, got_losses = ranks[rank]["step", method, scope]
        assert_same_grads(got_grads, grads, tol)
        assert_same_grads(got_params, params, tol)
        assert got_losses == pytest.approx(losses, rel=1e-9)


@pytest.mark.slow
def test_two_ranks_average_the_joint_step_like_one_process(ranks):
    model, train, _ = make(SEED)
    with dsts.relaxed(model):
        want = joint_grads(model, *train, use_extra=False, reduce=False)
    assert want["unused.weight"] is None and want["extra"] is None
    for rank in ranks:
        assert_same_grads(ranks[rank]["joint"], want, 1e-9)


@pytest.mark.slow
def test_a_parameter_reached_on_some_ranks_gets_the_mean_with_zeros(ranks):
    reached = ranks[0]["partial-local"]["extra"]
    assert reached is not None and ranks[1]["partial-local"]["extra"] is None
    for rank in ranks:
        torch.testing.assert_close(ranks[rank]["partial"]["extra"], reached / WORLD, rtol=1e-12, atol=0)
        assert ranks[rank]["partial"]["unused.weight"] is None


@pytest.mark.slow
def test_the_hook_reduces_the_flags_and_differentiates_as_a_mean(ranks):
    for rank in ranks:
        hook = ranks[rank]["hook"]
        assert hook["none"] is None
        torch.testing.assert_close(hook["one"], torch.arange(3.0) / WORLD)
        torch.testing.assert_close(hook["both"], torch.arange(3.0) + 0.5)
        # d/dx of (rank + 1) * mean_k(x_k), through the mean's backward: the mean of 1 and 2
        torch.testing.assert_close(hook["backward"], torch.full((2,), 1.5))
