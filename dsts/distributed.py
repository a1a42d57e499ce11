"""Data parallelism under ``torchrun``: the process group and the reduction over ranks.

UDL runs the same code on one process and on many (``dsts/udl.py``); :func:`all_reduce_mean` is
the reduction hook that makes it data-parallel, and :func:`all_reduce_grads` the same rule for the
joint step's gradients. DDP's hooks do not see :func:`torch.func.functional_call`, so gradients are
averaged with these collectives rather than by DDP. ``docs/method.md`` (the UDL section) says
why every rank then gets what one process computes on the concatenated batch.

BatchNorm: each rank keeps per-rank statistics (as DDP does by default). ``SyncBatchNorm`` would
not cover DSTS's per-neuron statistics of the routed samples, which live in the layers' own
buffers; with per-rank batches of 8 or more clips this is the usual practice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> tuple[int, int, torch.device | None]:
    """Join the process group that ``torchrun`` describes in the environment (gloo on the CPU,
    NCCL on CUDA). Returns ``(rank, world_size, device)``; ``(0, 1, None)`` when not under torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0, 1, None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _mean_flat(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The mean over ranks of every tensor, by one all-reduce of a flat float64 buffer; each comes
    back as a tensor of its own, in its dtype."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    dist.all_reduce(flat)
    flat /= world()[1]
    return [
        part.view_as(t).to(t.dtype, copy=True)
        for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)
    ]


class _MeanOverRanks(torch.autograd.Function):
    """The mean over ranks, differentiable: the backward is the same mean of the incoming gradients.
    A rank's backward through it thus sees the mean over ranks of what comes after it, and the mean
    over ranks of the result completes the gradient of the mean loss."""

    @staticmethod
    def forward(ctx: Any, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(_mean_flat(tensors))

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(_mean_flat(grad_outputs))


def all_reduce_mean(
    values: Mapping[str, Tensor | None], like: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor | None]:
    """The reduction hook of :mod:`dsts.udl` (:class:`dsts.metagrad.Reduce`) under torchrun: the
    mean over ranks of every tensor in one collective, differentiable; the identity for one process.

    A ``None`` (this rank's loss did not reach that parameter) counts as zeros shaped like
    ``like[name]``; whether each name has a tensor is reduced in the same collective, so a name
    that no rank reached comes back ``None`` on every rank, and every rank decides alike. Every
    rank must make the same calls, with the same names (in any order).
    """
    if world()[1] == 1 or not values:
        return dict(values)
    names = sorted(values)  # the same buffer layout on every rank, whatever the dicts' order
    if like is None and any(values[n] is None for n in names):
        raise ValueError("all_reduce_mean: a None value needs `like` to give its shape")
    dense = [torch.zeros_like(like[n]) if values[n] is None else values[n] for n in names]  # type: ignore[index]
    reached = torch.tensor(
        [values[n] is not None for n in names], dtype=torch.float64, device=dense[0].device
    )
    *means, anywhere = _MeanOverRanks.apply(*dense, reached)
    reduced = {n: m if k > 0 else None for n, m, k in zip(names, means, anywhere.tolist())}
    return {n: reduced[n] for n in values}


def all_reduce_grads(model: nn.Module) -> None:
    """Average ``.grad`` over ranks for every trainable parameter, by :func:`all_reduce_mean`'s rule:
    a parameter that no rank's loss reached keeps ``.grad = None`` (the optimizer skips it), one
    reached on some ranks gets the mean with zeros from the others."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    means = all_reduce_mean({n: p.grad for n, p in params.items()}, params)
    for name, g in means.items():
        param = params[name]
        if g is None or param.grad is None:
            param.grad = g
        else:
            param.grad.copy_(g)
