"""The passes of UDL's steps 1 and 2 and the three methods of the meta-gradient.

Each method runs the model on substitute parameters (``dsts/functional.py``) and calls the
reduction hook where the processes of a data-parallel run must agree: on step 1's gradient, so
that every process takes the same simulated step, and on ``v``, the gradient of the ``D_val`` loss
at it. One process reduces nothing. ``docs/method.md`` (the UDL section) gives the formulas, the
scopes and the randomness contract; :func:`dsts.udl.meta_gradient` is the entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from dsts.functional import (
    Generators,
    as_grad,
    call,
    detached,
    grads,
    leaves,
    substituted_output,
    tangent,
    taped,
)
from dsts.layers import DSTSLayer
from dsts.module import DSTS

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]


class Reduce(Protocol):
    """The reduction hook: the mean over the processes of a data-parallel run.

    ``values`` maps names to tensors, or to ``None`` where this process's loss did not reach them;
    ``like`` gives, for each such name, a tensor of the shape, dtype and device that ``None``
    stands for. The result has the same names: the mean over processes, a ``None`` counting as
    zeros, and ``None`` where no process had a tensor. It must be differentiable (its backward the
    same mean). Every process makes the same calls with the same names: which ones are called
    depends only on the model, the method and the scope, never on the data.
    """

    def __call__(
        self, values: Mapping[str, Tensor | None], like: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor | None]: ...


def no_reduction(values: Mapping[str, Tensor | None], like: Mapping[str, Tensor] | None = None) -> dict:
    """The reduction of one process: the values themselves, graph and all."""
    return dict(values)


@dataclass
class MetaResult:
    """The meta-gradient (keyed like ``split_parameters``' upstream) and the two losses it saw."""

    grads: dict[str, Tensor]
    train_loss: Tensor  # loss(u, d; D_train), step 1
    val_loss: Tensor  # loss(u, d_hat; D_val), step 2


def cacheable_backbone(model: nn.Module) -> nn.Module | None:
    """``model.backbone`` when the model has one that holds no DSTS layer: nothing in it depends
    on the decisions, so its output can be computed once and substituted for it."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module) or any(isinstance(m, DSTSLayer) for m in backbone.modules()):
        return None
    return backbone


def held_fixed(model: nn.Module, downstream: Mapping[str, Tensor], scope: str) -> set[str]:
    """Names of the downstream parameters that ``scope`` holds fixed in steps 1 and 2: none for
    ``"all"``; for ``"dsts"``, ``model.backbone``'s, or without one, every downstream parameter
    outside the DSTS modules and ``model.head``."""
    if scope == "all":
        return set()
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        inside = {id(p) for p in backbone.parameters()}
        return {n for n, p in downstream.items() if id(p) in inside}
    kept: set[int] = set()
    for module in model.modules():
        if isinstance(module, DSTS):
            kept.update(id(p) for p in module.parameters())
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        kept.update(id(p) for p in head.parameters())
    return {n for n, p in downstream.items() if id(p) not in kept}


class Runner:
    """Runs the real model on substitute parameters and on fresh copies of its buffers.

    ``upstream`` and ``downstream``: ``split_parameters(model)``. ``shared``: the backbone's output
    on ``D_train``, computed by :class:`dsts.udl.UDLStep` with the real parameters (and their graph)
    for its step 3; step 1 then starts from it instead of running the backbone again (scope
    ``"all"`` differentiates through its graph to the real backbone parameters; ``"dsts"`` uses it
    detached), and ``tape`` what that forward left for the backbone's tangent (:func:`dsts.functional.taped`).
    ``reduce``: the reduction hook (:class:`Reduce`).
    """

    def __init__(
        self,
        model: nn.Module,
        upstream: dict[str, nn.Parameter],
        downstream: dict[str, nn.Parameter],
        loss_fn: LossFn,
        scope: str,
        shared: Tensor | None = None,
        reduce: Reduce = no_reduction,
        tape: list[tuple] | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.upstream = upstream
        self.downstream = downstream
        self.reduce = reduce
        self.backbone = cacheable_backbone(model)
        fixed = held_fixed(model, downstream, scope)
        self.inner = [n for n in downstream if n not in fixed]
        inside = set() if self.backbone is None else {id(p) for p in self.backbone.parameters()}
        # in the model's order, the same on every process (a set's order follows the hash seed)
        self.backbone_names = [n for n in self.inner if id(downstream[n]) in inside]
        if shared is not None and self.backbone is None:
            raise ValueError("UDL: shared backbone features need a model.backbone without DSTS layers")
        self.shared = shared
        self.tape = tape if shared is not None else None
        # scope "all" starting from ``shared``: step 3 goes back through its graph afterwards
        self.retain = shared is not None and bool(self.backbone_names)

    def features(self, x: Tensor) -> Tensor | None:
        """The backbone's output on ``x``, once, without gradient, where steps 1 and 2 hold the
        backbone fixed (scope ``"dsts"``, or a frozen backbone) and it can be substituted."""
        if self.backbone is None or self.backbone_names:
            return None
        with torch.no_grad():
            return call(self.backbone, {}, x)

    def step1(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
        """``(d, features for step 1, features for the passes at another d)`` on ``D_train``.
        ``d`` are fresh leaves, except the backbone's real parameters when step 1 differentiates
        through ``shared``'s graph (then the passes at another ``d`` run the backbone)."""
        if self.shared is not None and self.backbone_names:
            d = leaves({n: self.downstream[n] for n in self.inner if n not in self.backbone_names})
            d.update({n: self.downstream[n] for n in self.backbone_names})
            return d, self.shared, None
        features = self.features(x) if self.shared is None else self.shared.detach()
        return leaves({n: self.downstream[n] for n in self.inner}), features, features

    def loss(self, tensors: Mapping[str, Tensor], batch: Batch, features: Tensor | None) -> Tensor:
        """The loss on ``batch`` with ``tensors`` (model names) for those parameters, the backbone's
        output replaced by ``features`` unless that is ``None``."""
        x, y = batch
        with substituted_output(self.backbone, features):
            out = call(self.model, tensors, x)
        return self.loss_fn(out, y)

    def backbone_local(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``tensors`` keyed by model names, re-keyed by the backbone's own parameter names."""
        assert self.backbone is not None
        local = {id(p): n for n, p in self.backbone.named_parameters()}
        return {local[id(self.downstream[n])]: t for n, t in tensors.items()}


def autograd(run: Runner, train_batch: Batch, val_batch: Batch, alpha: float) -> MetaResult:
    """The mixed second derivative, exactly, by differentiating through step 1's gradient. Under
    data parallelism the reduction of step 1's gradient is differentiated too: its backward takes
    the mean of the ranks' ``v``, so each rank's backward gives ``-alpha grad_u [g_k . v]``."""
    if run.backbone is not None and run.backbone_names:
        return autograd_split(run, train_batch, val_batch, alpha)
    u = leaves(run.upstream)
    d, features, _ = run.step1(train_batch[0])
    # step 1, kept differentiable in u (and d)
    train_loss = run.loss({**u, **d}, train_batch, features)
    g = run.reduce(grads(train_loss, d, create_graph=True))
    d_hat = {n: d[n] - alpha * g[n] for n in d}
    # step 2: the decisions on D_val use u_hat = u detached; u is reached only through d_hat
    val_loss = run.loss({**detached(run.upstream), **d_hat}, val_batch, run.features(val_batch[0]))
    meta = {n: as_grad(t, u[n]) for n, t in grads(val_loss, u).items()}
    return MetaResult(meta, train_loss.detach(), val_loss.detach())


def autograd_split(run: Runner, train_batch: Batch, val_batch: Batch, alpha: float) -> MetaResult:
    """The same mixed second derivative, with the backbone's part taken by forward mode.

    The backbone's gradient is ``g_b = J^T dX`` (``J``: the Jacobian of its output ``X`` in its
    parameters, which does not depend on ``u``; ``dX = grad_X loss``, which does). So
    ``v_b . g_b = (J v_b) . dX``: the tangent ``J v_b`` of the backbone's forward on ``D_train``
    (from the activations that forward left, :func:`dsts.functional.tangent`, else one forward-mode
    pass), and the double backward runs through the DSTS module and the head only, instead of through
    the backbone's backward (conv and BatchNorm double backward, the costly part on the default
    model)."""
    rng = Generators(run.model)
    x = train_batch[0]
    start = rng.get()
    u = leaves(run.upstream)
    rest = leaves({n: run.downstream[n] for n in run.inner if n not in run.backbone_names})
    if run.shared is not None:
        backbone = {n: run.downstream[n] for n in run.backbone_names}
        features, tape = run.shared, run.tape
    else:
        backbone = leaves({n: run.downstream[n] for n in run.backbone_names})
        assert run.backbone is not None
        with taped(run.backbone) as tape:
            features = call(run.backbone, run.backbone_local(backbone), x)
    # step 1: the DSTS and head part kept differentiable in u, the backbone's part by dX
    train_loss = run.loss({**u, **rest}, train_batch, features)
    names = list(rest)
    got = torch.autograd.grad(
        train_loss, [rest[n] for n in names] + [features], create_graph=True, allow_unused=True
    )
    g = {n: t for n, t in zip(names, got[:-1]) if t is not None}
    d_x = got[-1]
    if d_x is None:
        d_x = torch.zeros_like(features)
    g_b = grads(features, backbone, retain_graph=run.shared is not None, grad_outputs=d_x.detach())
    # the simulated step, the same on every process: a parameter that no process reached stays
    mean = run.reduce({**{n: g.get(n) for n in rest}, **g_b}, {**rest, **backbone})
    d_hat = {n: rest[n].detach() if mean[n] is None else (rest[n] - alpha * mean[n]).detach() for n in rest}
    d_hat.update({n: (backbone[n] - alpha * mean[n]).detach() for n in backbone})
    d_hat = leaves(d_hat)
    # step 2: v at d_hat, then -alpha d/du [sum v . g + (J v_b) . dX]
    val_loss = run.loss({**detached(run.upstream), **d_hat}, val_batch, None)
    v = run.reduce(grads(val_loss, d_hat))
    end = rng.get()
    rng.set(start)  # a forward-mode pass replays step 1's draws, if the backbone made any
    assert run.backbone is not None
    t = tangent(run.backbone, run.backbone_local({n: v[n] for n in backbone}), x, tape)
    del tape
    rng.set(end)
    outputs = [g[n] for n in g if g[n].requires_grad] + ([d_x] if d_x.requires_grad else [])
    weights = [v[n] for n in g if g[n].requires_grad] + ([t] if d_x.requires_grad else [])
    if outputs:
        hv = torch.autograd.grad(outputs, list(u.values()), grad_outputs=weights, allow_unused=True)
    else:
        hv = (None,) * len(u)
    meta = {n: torch.zeros_like(u[n]) if t is None else as_grad(-alpha * t, u[n]) for n, t in zip(u, hv)}
    return MetaResult(meta, train_loss.detach(), val_loss.detach())


def simulated_step(
    run: Runner, train_batch: Batch, d: dict[str, Tensor], features: Tensor | None, alpha: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Step 1 without a graph: ``(loss(u, d; D_train), d_hat)``, ``d_hat`` the same on every process."""
    train_loss = run.loss({**detached(run.upstream), **d}, train_batch, features)
    g = run.reduce(grads(train_loss, d, retain_graph=run.retain))
    return train_loss.detach(), {n: (d[n] - alpha * g[n]).detach() for n in d}


def finite_difference(
    run: Runner, train_batch: Batch, val_batch: Batch, alpha: float, fd_eps: float
) -> MetaResult:
    """DARTS' central difference of ``grad_u loss(u, d +- eps v; D_train)``, both passes replaying
    step 1's draws; ``eps = fd_eps / |v|`` with the reduced ``v``, so every process takes the same
    branch and the same ``eps``."""
    rng = Generators(run.model)
    d, features, later = run.step1(train_batch[0])
    start = rng.get()
    train_loss, d_hat = simulated_step(run, train_batch, d, features, alpha)
    d_hat = leaves(d_hat)
    val_loss = run.loss({**detached(run.upstream), **d_hat}, val_batch, run.features(val_batch[0]))
    v = run.reduce(grads(val_loss, d_hat))
    end = rng.get()
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))
    if not norm > 0:  # v = 0: the mixed product is exactly zero (and a NaN norm propagates)
        meta = {n: torch.zeros_like(p) * norm.to(p.dtype) for n, p in run.upstream.items()}
        return MetaResult(meta, train_loss, val_loss.detach())
    eps = fd_eps / norm.item()
    sides = []
    for sign in (1.0, -1.0):
        rng.set(start)  # both passes replay step 1's draws
        u = leaves(run.upstream)
        d_side = {n: run.downstream[n].detach() + (sign * eps) * v[n] for n in run.inner}
        sides.append(grads(run.loss({**u, **d_side}, train_batch, later), u))
    rng.set(end)
    plus, minus = sides
    meta = {n: (-alpha / (2 * eps)) * (plus[n] - minus[n]) for n in run.upstream}
    return MetaResult(meta, train_loss, val_loss.detach())


def first_order(run: Runner, train_batch: Batch, val_batch: Batch, alpha: float) -> MetaResult:
    """``grad_u loss(u, d_hat.detach(); D_val)``, the decisions on ``D_val`` not detached."""
    d, features, _ = run.step1(train_batch[0])
    train_loss, d_hat = simulated_step(run, train_batch, d, features, alpha)
    u = leaves(run.upstream)
    val_loss = run.loss({**u, **d_hat}, val_batch, run.features(val_batch[0]))
    meta = {n: as_grad(t, u[n]) for n, t in grads(val_loss, u).items()}
    return MetaResult(meta, train_loss, val_loss.detach())
