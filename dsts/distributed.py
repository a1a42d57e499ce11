"""Data parallelism under ``torchrun``: gradient averaging and UDL's meta-gradient across ranks.

DDP's hooks do not see :func:`torch.func.functional_call`, so the trainer averages gradients with
``torch.distributed`` collectives itself (for the joint step too, so both paths share one rule).

The meta-gradient of a global batch is *not* the mean of per-rank meta-gradients: what one process
computes on the concatenated batch is ``-alpha * grad_u[(mean_k g_k) . v]`` with ``g_k`` rank k's
step-1 gradient and ``v`` the gradient of the validation loss at the *global* ``d_hat``. So
:func:`distributed_meta_gradient` all-reduces ``g`` (every rank gets the same ``d_hat``), then
``v``, lets each rank take its local mixed product ``-alpha * grad_u[g_k . v]`` and averages that.
With equal shards and mean losses this equals the single-process meta-gradient on the
concatenated batch, for every method (tested in relaxed evaluation mode with two gloo processes).

BatchNorm: each rank keeps per-rank statistics (as DDP does by default). ``SyncBatchNorm`` would
not cover DSTS's per-neuron statistics of the routed samples, which live in the layers' own
buffers; with per-rank batches of 8 or more clips this is the usual practice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dsts.udl import (
    LossFn,
    MetaResult,
    _as_grad,
    _check_args,
    _check_batch,
    _detached,
    _Generators,
    _grads,
    _leaves,
    _recorded_attributes,
    _restore_attributes,
    _Runner,
)


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


def all_reduce_mean(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The mean over ranks of every tensor, in one flat buffer per dtype (a no-op for one process)."""
    if world()[1] == 1 or not tensors:
        return {n: t.detach() for n, t in tensors.items()}
    names = list(tensors)
    flat = torch.cat([tensors[n].detach().reshape(-1).double() for n in names])
    dist.all_reduce(flat)
    flat /= world()[1]
    out, start = {}, 0
    for n in names:
        t = tensors[n]
        out[n] = flat[start : start + t.numel()].view_as(t).to(t.dtype)
        start += t.numel()
    return out


def all_reduce_grads(model: nn.Module) -> None:
    """Average ``.grad`` over ranks for every trainable parameter. A parameter that the loss did not
    reach on this rank counts as a zero gradient, so every rank sends the same buffer."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in params.items()}
    for name, g in all_reduce_mean(grads).items():
        if params[name].grad is None:
            params[name].grad = g.clone()
        else:
            params[name].grad.copy_(g)


def distributed_meta_gradient(
    model: nn.Module,
    train_batch: tuple[Tensor, Tensor],
    val_batch: tuple[Tensor, Tensor],
    inner_lr: float,
    loss_fn: LossFn = F.cross_entropy,
    method: str = "autograd",
    fd_eps: float = 0.01,
    scope: str = "all",
) -> MetaResult:
    """The meta-gradient of the global batch (every rank's shard), on every rank; with one process,
    the same as :func:`dsts.udl.meta_gradient`. Leaves the model untouched, as that does."""
    _check_args(inner_lr, method, fd_eps, scope)
    train_batch = _check_batch(train_batch, "train_batch")
    val_batch = _check_batch(val_batch, "val_batch")
    run = _Runner(model, loss_fn, scope)
    recorded = _recorded_attributes(model)
    rng = _Generators(model)
    alpha = inner_lr
    try:
        with torch.enable_grad():
            u = _leaves(run.upstream)
            d, features, later = run.step1(train_batch[0])
            start = rng.get()
            train_loss = run.loss({**u, **d}, train_batch, features)
            g = _grads(train_loss, d, create_graph=method == "autograd")
            g_mean = all_reduce_mean(g)  # 1. every rank takes the same simulated step
            d_hat = {n: (d[n].detach() - alpha * g_mean[n]).requires_grad_() for n in d}
            if method == "first_order":
                # the decisions on D_val are not detached: grad_u loss(u, d_hat; D_val), no v needed
                u_val = _leaves(run.upstream)
                val_loss = run.loss({**u_val, **_detached(d_hat)}, val_batch, run.features(val_batch[0]))
                local = _grads(val_loss, u_val)
            else:
                val_loss = run.loss(
                    {**_detached(run.upstream), **d_hat}, val_batch, run.features(val_batch[0])
                )
                v = all_reduce_mean(_grads(val_loss, d_hat))  # 2. the global v
                if method == "autograd":
                    # 3. the local mixed product -alpha * grad_u[g_k . v]
                    dot = sum((g[n] * v[n]).sum() for n in d)
                    local = {n: -alpha * t for n, t in _grads(dot, u).items()}
                else:
                    end = rng.get()
                    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))
                    if not norm > 0:
                        local = {n: torch.zeros_like(p) for n, p in run.upstream.items()}
                    else:
                        eps = fd_eps / norm.item()
                        sides = []
                        for sign in (1.0, -1.0):
                            rng.set(start)
                            u_side = _leaves(run.upstream)
                            d_side = {n: run.downstream[n].detach() + (sign * eps) * v[n] for n in run.inner}
                            sides.append(_grads(run.loss({**u_side, **d_side}, train_batch, later), u_side))
                        local = {n: (-alpha / (2 * eps)) * (sides[0][n] - sides[1][n]) for n in run.upstream}
                    rng.set(end)
            grads = all_reduce_mean(local)  # 4. the average of the local products
            grads = {n: _as_grad(t, run.upstream[n]) for n, t in grads.items()}
            losses = all_reduce_mean({"train": train_loss.detach(), "val": val_loss.detach()})
            return MetaResult(grads, losses["train"], losses["val"])
    finally:
        _restore_attributes(recorded)


class DistributedUDLStep:
    """:class:`dsts.udl.UDLStep` across ranks: the global meta-gradient (above), then step 3 with
    gradients averaged over ranks. Same interface: ``step(train_batch, val_batch) -> losses``."""

    def __init__(
        self,
        model,
        upstream_optimizer,
        downstream_optimizer,
        inner_lr,
        method="autograd",
        fd_eps=0.01,
        scope="all",
        loss_fn: LossFn = F.cross_entropy,
        grad_clip: float = 0.0,
    ):
        from dsts.udl import split_parameters

        _check_args(inner_lr, method, fd_eps, scope)
        self.model, self.loss_fn, self.grad_clip = model, loss_fn, grad_clip
        self.upstream_optimizer, self.downstream_optimizer = upstream_optimizer, downstream_optimizer
        self.inner_lr, self.method, self.fd_eps, self.scope = inner_lr, method, fd_eps, scope
        self.upstream, self.downstream = split_parameters(model)

    def step(self, train_batch, val_batch) -> dict[str, float]:
        x, y = _check_batch(train_batch, "train_batch")
        meta = distributed_meta_gradient(
            self.model, (x, y), val_batch, self.inner_lr, self.loss_fn, self.method, self.fd_eps, self.scope
        )
        for name, param in self.upstream.items():
            param.grad = meta.grads[name]
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(list(self.upstream.values()), self.grad_clip)
        self.upstream_optimizer.step()
        with torch.enable_grad():
            loss = self.loss_fn(self.model(x), y)
        names = list(self.downstream)
        got = torch.autograd.grad(loss, [self.downstream[n] for n in names], allow_unused=True)
        grads = {n: torch.zeros_like(self.downstream[n]) if g is None else g for n, g in zip(names, got)}
        for name, g in all_reduce_mean(grads).items():
            self.downstream[name].grad = _as_grad(g, self.downstream[name])
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(list(self.downstream.values()), self.grad_clip)
        self.downstream_optimizer.step()
        mean_loss = all_reduce_mean({"loss": loss.detach()})["loss"]
        return {
            "loss": mean_loss.item(),
            "meta_loss": meta.val_loss.item(),
            "train_loss_sim": meta.train_loss.item(),
        }
