"""Upstream-Downstream Learning (UDL): the meta-gradient of the decisions and the three-step iteration.

Upstream parameters ``u`` make the DSTS decisions (every layer's ``score_weight`` and ``gate``);
downstream parameters ``d`` process the input (everything else). One iteration on two mini-batches
``D_train`` and ``D_val``: (1) a simulated step of ``d`` on ``D_train``, differentiable in ``u``;
(2) the meta update of ``u`` by the gradient of the ``D_val`` loss at it; (3) the actual update of
``d`` on ``D_train`` with the new ``u``. ``docs/method.md`` (the UDL section) gives the formulas,
the three meta-gradient methods, the scopes, the shared backbone forward and the randomness
contract; ``dsts/metagrad.py`` implements the passes. One process and data parallelism run the same
code: the ``reduce`` hook is the identity for one process and the mean over ranks under torchrun
(:func:`dsts.distributed.all_reduce_mean`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsts import metagrad
from dsts.functional import as_grad, recorded_attributes_kept, substituted_output, taped
from dsts.layers import DSTSLayer
from dsts.metagrad import Batch, LossFn, MetaResult, Reduce, Runner, cacheable_backbone, no_reduction

METHODS = ("autograd", "finite_difference", "first_order")
SCOPES = ("all", "dsts")
UPSTREAM_NAMES = ("score_weight", "gate")

__all__ = ["METHODS", "SCOPES", "MetaGradient", "MetaResult", "UDLStep", "meta_gradient", "split_parameters"]


def split_parameters(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """``(upstream, downstream)``, keyed by ``model.named_parameters()`` names.

    Upstream: the ``score_weight`` and ``gate`` of every :class:`dsts.layers.DSTSLayer` (they make
    the decisions); downstream: every other parameter. Only trainable parameters
    (``requires_grad``) appear; the two dicts are disjoint and together hold all of them.
    """
    upstream_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, DSTSLayer):
            for name in UPSTREAM_NAMES:
                param = module._parameters.get(name)
                if param is not None:
                    upstream_ids.add(id(param))
    upstream: dict[str, nn.Parameter] = {}
    downstream: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            (upstream if id(param) in upstream_ids else downstream)[name] = param
    return upstream, downstream


def _split_with_decisions(
    model: nn.Module, who: str
) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    upstream, downstream = split_parameters(model)
    if not upstream:
        raise ValueError(
            f"{who}: the model has no upstream parameters (no DSTS layer with a trainable score_weight or gate)"
        )
    return upstream, downstream


def _check_batch(batch: Any, name: str) -> Batch:
    if not (
        isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)
    ):
        raise ValueError(f"UDL {name}: expected an (x, y) pair of tensors, got {type(batch).__name__}")
    return batch[0], batch[1]


@dataclass(frozen=True)
class MetaGradient:
    """Step 2's meta-gradient with its settings: ``MetaGradient(inner_lr, ...)(model, train_batch,
    val_batch)`` gives a :class:`MetaResult`, the gradient for every upstream parameter and the
    step-1 and step-2 losses (what :class:`UDLStep` logs), each reduced over processes by
    ``reduce`` (``None``: one process). See :func:`meta_gradient` for the arguments."""

    inner_lr: float
    loss_fn: LossFn = F.cross_entropy
    method: str = "autograd"
    fd_eps: float = 0.01
    scope: str = "all"
    reduce: Reduce | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"UDL method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.scope not in SCOPES:
            raise ValueError(f"UDL scope: {self.scope!r} is not one of {', '.join(SCOPES)}")
        if not (math.isfinite(self.inner_lr) and self.inner_lr >= 0):
            raise ValueError(f"UDL inner_lr: {self.inner_lr!r} is impossible (must be finite and >= 0)")
        if not (math.isfinite(self.fd_eps) and self.fd_eps > 0):
            raise ValueError(f"UDL fd_eps: {self.fd_eps!r} is impossible (must be finite and > 0)")

    def __call__(
        self,
        model: nn.Module,
        train_batch: Batch,
        val_batch: Batch,
        shared: Tensor | None = None,
        tape: list[tuple] | None = None,
    ) -> MetaResult:
        """``shared`` is the backbone's output on ``D_train`` computed by the caller with the real
        parameters, ``tape`` what that forward left (see :class:`UDLStep`); neither changes the
        result beyond rounding."""
        train_batch = _check_batch(train_batch, "train_batch")
        val_batch = _check_batch(val_batch, "val_batch")
        upstream, downstream = _split_with_decisions(model, "UDL")
        reduce = self.reduce or no_reduction
        run = Runner(model, upstream, downstream, self.loss_fn, self.scope, shared, reduce, tape)
        alpha = self.inner_lr
        with recorded_attributes_kept(model), torch.enable_grad():
            if self.method == "autograd":
                result = metagrad.autograd(run, train_batch, val_batch, alpha)
            elif self.method == "finite_difference":
                result = metagrad.finite_difference(run, train_batch, val_batch, alpha, self.fd_eps)
            else:
                result = metagrad.first_order(run, train_batch, val_batch, alpha)
            losses = reduce({"train": result.train_loss, "val": result.val_loss})
            return MetaResult(reduce(result.grads), losses["train"], losses["val"])


def meta_gradient(
    model: nn.Module,
    train_batch: Batch,
    val_batch: Batch,
    inner_lr: float,
    loss_fn: LossFn = F.cross_entropy,
    method: str = "autograd",
    fd_eps: float = 0.01,
    scope: str = "all",
    reduce: Reduce | None = None,
) -> dict[str, Tensor]:
    """The gradient of step 2 for every upstream parameter, keyed by :func:`split_parameters`' names
    (an exact zero for one that the loss does not reach).

    ``train_batch`` and ``val_batch`` are ``(x, y)``; ``model(x)`` gives what ``loss_fn(out, y)``
    scores; ``inner_lr`` is step 1's ``alpha``; ``method`` one of :data:`METHODS`, ``fd_eps`` the
    finite-difference step, ``scope`` one of :data:`SCOPES`. ``reduce``: the reduction hook
    (:class:`dsts.metagrad.Reduce`), ``None`` for one process; with
    :func:`dsts.distributed.all_reduce_mean` every rank gets the meta-gradient of the global batch.
    The model runs in the mode it is in (training or evaluation, relaxed or not) and is left
    exactly as it was; its random generators advance as by one forward on ``D_train`` and one on
    ``D_val``.
    """
    return MetaGradient(inner_lr, loss_fn, method, fd_eps, scope, reduce)(model, train_batch, val_batch).grads


class UDLStep:
    """One whole UDL iteration on a model with two optimizers: ``step(train_batch, val_batch)``.

    ``upstream_optimizer`` must hold exactly the upstream parameters and ``downstream_optimizer``
    exactly the downstream ones (as :func:`split_parameters` gives them): step 2 is
    ``upstream_optimizer.step()`` with the meta-gradient as ``.grad``, step 3 is
    ``downstream_optimizer.step()`` with ``grad_d loss(u', d; D_train)`` as ``.grad`` (an ordinary
    forward and backward of the real model, which updates BatchNorm running statistics as any
    training step does; a downstream parameter that the loss does not reach, on any process, gets
    ``.grad = None`` and is skipped, as after ``zero_grad(set_to_none=True)`` and ``backward``).
    Each gradient is clipped to norm ``grad_clip`` on its own when ``grad_clip > 0``. The
    optimizers' learning rates, momentum and weight decay are theirs; ``inner_lr`` is step 1's
    ``alpha``; ``reduce`` as in :func:`meta_gradient` (it averages step 3's gradients too). The
    model's mode is left as it is. Step 3 draws fresh Gumbel and Semhash noise, after the
    meta-gradient's draws.

    The backbone's forward on ``D_train`` runs once, first, with the real parameters: step 1 starts
    from its output and step 3 reuses it, graph and BatchNorm update included (the backbone does not
    depend on ``u``, and draws no random numbers).
    """

    def __init__(
        self,
        model: nn.Module,
        upstream_optimizer: torch.optim.Optimizer,
        downstream_optimizer: torch.optim.Optimizer,
        inner_lr: float,
        method: str = "autograd",
        fd_eps: float = 0.01,
        scope: str = "all",
        loss_fn: LossFn = F.cross_entropy,
        grad_clip: float = 0.0,
        reduce: Reduce | None = None,
    ) -> None:
        self.meta = MetaGradient(inner_lr, loss_fn, method, fd_eps, scope, reduce)
        if not (math.isfinite(grad_clip) and grad_clip >= 0):
            raise ValueError(f"UDL grad_clip: {grad_clip!r} is impossible (must be finite and >= 0)")
        self.upstream, self.downstream = _split_with_decisions(model, "UDLStep")
        _check_optimizer(upstream_optimizer, self.upstream, "upstream_optimizer", "upstream")
        _check_optimizer(downstream_optimizer, self.downstream, "downstream_optimizer", "downstream")
        self.model = model
        self.upstream_optimizer = upstream_optimizer
        self.downstream_optimizer = downstream_optimizer
        self.grad_clip = grad_clip
        self.reduce = reduce or no_reduction
        self.backbone = cacheable_backbone(model)

    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        """Steps 1 to 3; returns ``loss`` (step 3's training loss, at ``u'``), ``meta_loss``
        (the ``D_val`` loss at ``d_hat``) and ``train_loss_sim`` (step 1's loss, at ``u``), each
        the mean over processes."""
        x, y = _check_batch(train_batch, "train_batch")
        with torch.enable_grad():
            # Step 3's backbone forward on D_train, run first: the backbone does not depend on u,
            # so its output (and graph) serves step 1 as well as step 3, one backbone forward fewer;
            # its activations serve the autograd method's backbone tangent too (no forward again).
            with taped(self.backbone) as tape:
                shared = None if self.backbone is None else self.backbone(x)
            meta = self.meta(self.model, (x, y), val_batch, shared, tape)
            del tape
            # step 2: u' = u - lr_u * meta-gradient, by the upstream optimizer
            for name, param in self.upstream.items():
                param.grad = meta.grads[name]
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(list(self.upstream.values()), self.grad_clip)
            self.upstream_optimizer.step()
            # step 3: an ordinary training step of d with u' (frozen: it gets no gradient here)
            with substituted_output(self.backbone, shared):
                loss = self.meta.loss_fn(self.model(x), y)
            names = list(self.downstream)
            got = torch.autograd.grad(loss, [self.downstream[n] for n in names], allow_unused=True)
            for name, g in self.reduce(dict(zip(names, got)), self.downstream).items():
                param = self.downstream[name]
                param.grad = None if g is None else as_grad(g, param)
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(
                    [p for p in self.downstream.values() if p.grad is not None], self.grad_clip
                )
            self.downstream_optimizer.step()
        return {
            "loss": self.reduce({"loss": loss.detach()})["loss"].item(),
            "meta_loss": meta.val_loss.item(),
            "train_loss_sim": meta.train_loss.item(),
        }


def _check_optimizer(
    optimizer: torch.optim.Optimizer, params: dict[str, nn.Parameter], name: str, kind: str
) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"UDLStep {name}: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    want = {id(p) for p in params.values()}
    if held != want:
        missing = [n for n, p in params.items() if id(p) not in held]
        detail = (
            f"it lacks {missing[0]}"
            if missing
            else f"it holds {len(held - want)} parameter(s) that are not {kind}"
        )
        raise ValueError(
            f"UDLStep {name}: must hold exactly the {kind} parameters of split_parameters ({detail})"
        )
