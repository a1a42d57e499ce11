"""Upstream-Downstream Learning (UDL): the meta-gradient of the decisions and the three-step iteration.

Upstream parameters ``u`` make the DSTS decisions (every layer's ``score_weight`` and ``gate``);
downstream parameters ``d`` process the input (everything else). One UDL iteration, on two
mini-batches ``D_train`` and ``D_val`` drawn from the training data (DESIGN section 1):

1. simulated update  ``d_hat = d - alpha * grad_d loss(u, d; D_train)``, differentiable in ``u``;
2. meta update       ``u' = u - lr_u * grad_u loss(u_hat, d_hat; D_val)``, ``u_hat`` = ``u`` detached;
3. actual update     ``d' = d - lr_d * grad_d loss(u', d; D_train)``.

Everything is built on :func:`torch.func.functional_call` and :func:`torch.autograd.grad`: steps 1
and 2 run the model on tensors that are not its parameters and on fresh copies of its buffers, so
they leave the real model (parameters, BatchNorm running statistics, ``num_batches_tracked``,
training flags, ``requires_grad``, ``.grad``, and the ``last_selection`` it records) exactly as it
was, and never see an optimizer.

**Methods** for the meta-gradient of step 2, ``-alpha * grad_u [grad_d loss(u, d; D_train) . v]``
with ``v = grad_{d_hat} loss(u_hat, d_hat; D_val)``:

- ``"autograd"``: that mixed second derivative, exactly, by differentiating through step 1's
  gradient (``create_graph=True``). With a ``model.backbone`` in scope ``"all"``, the backbone's
  share ``v_b . g_b = (J v_b) . grad_X loss`` is taken by one forward-mode pass (``J v_b``), so the
  double backward stays in the DSTS module and the head (same value; less time and memory).
- ``"finite_difference"``: DARTS' central difference
  ``-alpha * (grad_u loss(u, d + eps v) - grad_u loss(u, d - eps v)) / (2 eps)`` on ``D_train``,
  ``eps = fd_eps / |v|``. Both passes replay step 1's Gumbel and Semhash draws, so they differ only
  by the perturbation of ``d``. It is a difference of *gradients*, so a ReLU or clamp kink crossed
  between the two passes adds a jump divided by ``2 eps``: exact only in the limit and away from
  kinks, which a large model is never far from (see the UDL report for the errors measured).
  In hard mode it estimates another quantity than autograd: the straight-through selection and
  gates are not the gradient of any function, so ``d/dd (grad_u loss) . v`` (this) and
  ``d/du (grad_d loss . v)`` (autograd) differ; a neuron that no sample selects has
  ``grad_gate loss = 0`` at every ``d`` while ``grad_d loss`` depends on its gate. The two methods
  agree only in relaxed mode.
- ``"first_order"``: a different, cheaper algorithm, not a truncation of step 2 (with ``u_hat``
  detached a truncated meta-gradient would be zero): ``grad_u loss(u, d_hat.detach(); D_val)``,
  the decisions on ``D_val`` *not* detached, no second derivative.

**Scope** (which downstream parameters take part in steps 1 and 2; step 3 always trains them all):
``"all"`` is the formula as written; ``"dsts"`` holds the backbone fixed, so steps 1 and 2 adapt only
the DSTS module and the classifier. "The backbone" is ``model.backbone`` when the model has one
(as :func:`dsts.build_model` does) and holds no DSTS layer; otherwise it is every downstream
parameter outside the DSTS modules and outside ``model.head``. With ``"dsts"`` and a
``model.backbone``, the backbone runs once per batch, without gradient, and its output is
substituted for it in every pass. Passes that need only ``grad_u`` (the two finite-difference
passes, the first-order step 2) never go back through the backbone in either scope: nothing before
the DSTS input depends on ``u``, so autograd records nothing there. The library functions default to
``scope="all"`` (the formula of DESIGN section 1); the pipeline's choice is ``UDLConfig.scope``.

:class:`UDLStep` runs the backbone's forward on ``D_train`` once, with the real parameters, at
the start of the iteration: step 1 starts from its output (scope ``"all"`` differentiates through
its graph; ``"dsts"`` uses it detached) and step 3 reuses it, graph and BatchNorm update included,
since the backbone does not depend on ``u``. That saves one backbone forward per iteration and
assumes the backbone draws no random numbers (none of :mod:`dsts.backbones` does).

**Randomness.** Every draw (Gumbel, Semhash, dropout) comes from the global RNG (CPU, and CUDA for
the model's devices) or from a ``generator`` attribute of a submodule. Whatever the method,
:func:`meta_gradient` leaves those generators exactly where one forward of the model on ``D_train``
followed by one forward on ``D_val`` would leave them: the finite-difference passes replay step 1's
draws and the state is then put back. So one seed gives one result, and the three methods consume
the same stream.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

METHODS = ("autograd", "finite_difference", "first_order")
SCOPES = ("all", "dsts")
UPSTREAM_NAMES = ("score_weight", "gate")

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]


# -- the split


def split_parameters(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """``(upstream, downstream)``, keyed by ``model.named_parameters()`` names.

    Upstream: the ``score_weight`` and ``gate`` of every :class:`dsts.layers.DSTSLayer` (they make
    the decisions); downstream: every other parameter. Only trainable parameters
    (``requires_grad``) appear; the two dicts are disjoint and together hold all of them.
    """
    from dsts.layers import DSTSLayer

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


# -- what the passes share


class _Generators:
    """Save and restore every generator the model's draws can come from."""

    def __init__(self, model: nn.Module) -> None:
        seen: set[int] = set()
        self.own: list[torch.Generator] = []
        for module in model.modules():
            gen = getattr(module, "generator", None)
            if isinstance(gen, torch.Generator) and id(gen) not in seen:
                seen.add(id(gen))
                self.own.append(gen)
        devices = {t.device for t in [*model.parameters(), *model.buffers()]}
        self.cuda = sorted(
            {
                d.index if d.index is not None else torch.cuda.current_device()
                for d in devices
                if d.type == "cuda"
            }
        )

    def get(self) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        return (
            torch.get_rng_state(),
            [torch.cuda.get_rng_state(i) for i in self.cuda],
            [g.get_state() for g in self.own],
        )

    def set(self, state: tuple[Tensor, list[Tensor], list[Tensor]]) -> None:
        cpu, cuda, own = state
        torch.set_rng_state(cpu)
        for index, s in zip(self.cuda, cuda):
            torch.cuda.set_rng_state(s, index)
        for gen, s in zip(self.own, own):
            gen.set_state(s)


@contextlib.contextmanager
def _substituted_output(module: nn.Module | None, output: Tensor | None) -> Iterator[None]:
    """While open, ``module(...)`` returns ``output`` without computing anything (``None``: no change)."""
    if module is None or output is None:
        yield
        return
    had_own = "forward" in vars(module)
    previous = vars(module).get("forward")
    module.forward = lambda *args, **kwargs: output  # type: ignore[method-assign]
    try:
        yield
    finally:
        if had_own:
            module.forward = previous  # type: ignore[method-assign]
        else:
            del module.forward


def _recorded_attributes(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Plain tensor attributes a forward may record on a module (``DSTS.last_selection``)."""
    return [
        (
            m,
            {
                k: v
                for k, v in vars(m).items()
                if not k.startswith("_") and (v is None or isinstance(v, Tensor))
            },
        )
        for m in model.modules()
    ]


def _restore_attributes(saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for module, attrs in saved:
        for key in [
            k
            for k, v in vars(module).items()
            if not k.startswith("_") and isinstance(v, Tensor) and k not in attrs
        ]:
            delattr(module, key)
        for key, value in attrs.items():
            setattr(module, key, value)


class _Runner:
    """Runs the real model on substitute parameters and on fresh copies of its buffers.

    ``shared``: the backbone's output on ``D_train``, computed by :class:`UDLStep` with the real
    parameters (and their graph) for its step 3; step 1 then starts from it instead of running the
    backbone again (scope ``"all"`` differentiates through its graph to the real backbone
    parameters; ``"dsts"`` uses it detached).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, scope: str, shared: Tensor | None = None) -> None:
        upstream, downstream = split_parameters(model)
        if not upstream:
            raise ValueError(
                "UDL: the model has no upstream parameters (no DSTS layer with a trainable score_weight or gate)"
            )
        self.model = model
        self.loss_fn = loss_fn
        self.scope = scope
        self.upstream = upstream
        self.downstream = downstream
        self.base = {n: p.detach() for n, p in model.named_parameters()}
        self.buffers = dict(model.named_buffers())
        self.backbone = cacheable_backbone(model)
        fixed = _fixed(model, upstream, downstream, scope)
        self.inner = [n for n in downstream if n not in fixed]
        inside = set() if self.backbone is None else {id(p) for p in self.backbone.parameters()}
        # in the model's order: a set's order would change with the string hash seed of each process
        self.backbone_names = [n for n in self.inner if id(downstream[n]) in inside]
        if shared is not None and self.backbone is None:
            raise ValueError("UDL: shared backbone features need a model.backbone without DSTS layers")
        self.shared = shared
        # scope "all" starting from ``shared``: step 3 goes back through its graph afterwards
        self.retain = shared is not None and bool(self.backbone_names)

    def features(self, x: Tensor) -> Tensor | None:
        """The backbone's output on ``x``, once, without gradient, where steps 1 and 2 hold the
        backbone fixed (scope ``"dsts"``, or a frozen backbone) and it can be substituted."""
        if self.backbone is None or self.backbone_names:
            return None
        state = {n: p.detach() for n, p in self.backbone.named_parameters()}
        state.update({n: b.clone() for n, b in self.backbone.named_buffers()})
        with torch.no_grad():
            return functional_call(self.backbone, state, (x,))

    def step1(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
        """``(d, features for step 1, features for the passes at another d)`` on ``D_train``.
        ``d`` are fresh leaves, except the backbone's real parameters when step 1 differentiates
        through ``shared``'s graph (then the passes at another ``d`` run the backbone)."""
        if self.shared is not None and self.backbone_names:
            d = _leaves({n: self.downstream[n] for n in self.inner if n not in self.backbone_names})
            d.update({n: self.downstream[n] for n in self.backbone_names})
            return d, self.shared, None
        features = self.features(x) if self.shared is None else self.shared.detach()
        return _leaves({n: self.downstream[n] for n in self.inner}), features, features

    def loss(self, tensors: Mapping[str, Tensor], batch: Batch, features: Tensor | None) -> Tensor:
        x, y = batch
        state = dict(self.base)
        state.update(tensors)
        state.update({n: b.clone() for n, b in self.buffers.items()})
        with _substituted_output(self.backbone, features):
            out = functional_call(self.model, state, (x,))
        return self.loss_fn(out, y)


def cacheable_backbone(model: nn.Module) -> nn.Module | None:
    """``model.backbone`` when the model has one that holds no DSTS layer: nothing in it depends
    on the decisions, so its output can be computed once and substituted for it."""
    from dsts.layers import DSTSLayer

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module) or any(isinstance(m, DSTSLayer) for m in backbone.modules()):
        return None
    return backbone


def _fixed(
    model: nn.Module, upstream: Mapping[str, Tensor], downstream: Mapping[str, Tensor], scope: str
) -> set[str]:
    """Names of the downstream parameters that scope ``"dsts"`` holds fixed in steps 1 and 2."""
    if scope == "all":
        return set()
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        inside = {id(p) for p in backbone.parameters()}
        return {n for n, p in downstream.items() if id(p) in inside}
    from dsts.module import DSTS

    kept: set[int] = set()
    for module in model.modules():
        if isinstance(module, DSTS):
            kept.update(id(p) for p in module.parameters())
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        kept.update(id(p) for p in head.parameters())
    return {n for n, p in downstream.items() if id(p) not in kept}


def _grads(
    loss: Tensor,
    inputs: Mapping[str, Tensor],
    create_graph: bool = False,
    retain_graph: bool = False,
    grad_outputs: Tensor | None = None,
) -> dict[str, Tensor]:
    """``d loss / d inputs`` (a vector-Jacobian product with ``grad_outputs``); an input the loss
    does not reach gets an exact zero."""
    names = list(inputs)
    got = torch.autograd.grad(
        loss,
        [inputs[n] for n in names],
        grad_outputs=grad_outputs,
        create_graph=create_graph,
        retain_graph=retain_graph or None,
        allow_unused=True,
    )
    return {n: torch.zeros_like(inputs[n]) if g is None else g for n, g in zip(names, got)}


def _as_grad(g: Tensor, param: Tensor) -> Tensor:
    """``g`` as a ``.grad`` may be: a tensor of its own with the parameter's layout. Autograd can
    return a broadcast view (the gradient of ``score_weight.sum(1)`` is an ``expand``), on which
    in-place work such as clipping fails; copy those, as ``backward`` would."""
    g = g.detach()
    if g.stride() == param.stride() or g.is_contiguous():
        return g
    return torch.empty_like(param).copy_(g)


def _leaves(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: p.detach().requires_grad_() for n, p in params.items()}


def _detached(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in params.items()}


# -- the meta-gradient


@dataclass
class MetaResult:
    """The meta-gradient (keyed like ``split_parameters``' upstream) and the two losses it saw."""

    grads: dict[str, Tensor]
    train_loss: Tensor  # loss(u, d; D_train), step 1
    val_loss: Tensor  # loss(u, d_hat; D_val), step 2


def _check_args(inner_lr: float, method: str, fd_eps: float, scope: str) -> None:
    if method not in METHODS:
        raise ValueError(f"UDL method: {method!r} is not one of {', '.join(METHODS)}")
    if scope not in SCOPES:
        raise ValueError(f"UDL scope: {scope!r} is not one of {', '.join(SCOPES)}")
    if not (math.isfinite(inner_lr) and inner_lr >= 0):
        raise ValueError(f"UDL inner_lr: {inner_lr!r} is impossible (must be finite and >= 0)")
    if not (math.isfinite(fd_eps) and fd_eps > 0):
        raise ValueError(f"UDL fd_eps: {fd_eps!r} is impossible (must be finite and > 0)")


def _check_batch(batch: Any, name: str) -> Batch:
    if not (
        isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)
    ):
        raise ValueError(f"UDL {name}: expected an (x, y) pair of tensors, got {type(batch).__name__}")
    return batch[0], batch[1]


def compute_meta(
    model: nn.Module,
    train_batch: Batch,
    val_batch: Batch,
    inner_lr: float,
    loss_fn: LossFn = F.cross_entropy,
    method: str = "autograd",
    fd_eps: float = 0.01,
    scope: str = "all",
    shared: Tensor | None = None,
) -> MetaResult:
    """:func:`meta_gradient` together with the step-1 and step-2 losses (what :class:`UDLStep` logs).
    ``shared`` is the backbone's output on ``D_train`` computed by the caller with the real
    parameters (see :class:`UDLStep`); it changes nothing of the result."""
    _check_args(inner_lr, method, fd_eps, scope)
    train_batch = _check_batch(train_batch, "train_batch")
    val_batch = _check_batch(val_batch, "val_batch")
    run = _Runner(model, loss_fn, scope, shared)
    recorded = _recorded_attributes(model)
    try:
        with torch.enable_grad():
            if method == "autograd":
                return _autograd(run, train_batch, val_batch, inner_lr)
            if method == "finite_difference":
                return _finite_difference(run, train_batch, val_batch, inner_lr, fd_eps)
            return _first_order(run, train_batch, val_batch, inner_lr)
    finally:
        _restore_attributes(recorded)


def _autograd(run: _Runner, train_batch: Batch, val_batch: Batch, alpha: float) -> MetaResult:
    if run.backbone is not None and run.backbone_names:
        return _autograd_split(run, train_batch, val_batch, alpha)
    u = _leaves(run.upstream)
    d, features, _ = run.step1(train_batch[0])
    # step 1, kept differentiable in u (and d)
    train_loss = run.loss({**u, **d}, train_batch, features)
    g = _grads(train_loss, d, create_graph=True)
    d_hat = {n: d[n] - alpha * g[n] for n in d}
    # step 2: the decisions on D_val use u_hat = u detached; u is reached only through d_hat
    val_loss = run.loss({**_detached(run.upstream), **d_hat}, val_batch, run.features(val_batch[0]))
    grads = {n: _as_grad(t, u[n]) for n, t in _grads(val_loss, u).items()}
    return MetaResult(grads, train_loss.detach(), val_loss.detach())


def _autograd_split(run: _Runner, train_batch: Batch, val_batch: Batch, alpha: float) -> MetaResult:
    """The same mixed second derivative, with the backbone's part taken by forward mode.

    The backbone's gradient is ``g_b = J^T dX`` (``J``: the Jacobian of its output ``X`` in its
    parameters, which does not depend on ``u``; ``dX = grad_X loss``, which does). So
    ``v_b . g_b = (J v_b) . dX``: one forward-mode pass gives ``J v_b``, and the double backward
    runs through the DSTS module and the head only, instead of through the backbone's backward
    (conv and BatchNorm double backward, the costly part on the default model)."""
    rng = _Generators(run.model)
    x = train_batch[0]
    start = rng.get()
    u = _leaves(run.upstream)
    rest = _leaves({n: run.downstream[n] for n in run.inner if n not in run.backbone_names})
    if run.shared is not None:
        backbone = {n: run.downstream[n] for n in run.backbone_names}
        features = run.shared
    else:
        backbone = _leaves({n: run.downstream[n] for n in run.backbone_names})
        features = _backbone_call(run, backbone, x)
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
    g_b = _grads(features, backbone, retain_graph=run.shared is not None, grad_outputs=d_x.detach())
    d_hat = {n: (rest[n] - alpha * g[n]).detach() if n in g else rest[n].detach() for n in rest}
    d_hat.update({n: (backbone[n] - alpha * g_b[n]).detach() for n in backbone})
    d_hat = _leaves(d_hat)
    # step 2: v at d_hat, then -alpha d/du [sum v . g + (J v_b) . dX]
    val_loss = run.loss({**_detached(run.upstream), **d_hat}, val_batch, None)
    v = _grads(val_loss, d_hat)
    end = rng.get()
    rng.set(start)  # the tangent pass replays step 1's draws, if the backbone made any
    tangent = _backbone_jvp(run, x, {n: v[n] for n in backbone})
    rng.set(end)
    outputs = [g[n] for n in g if g[n].requires_grad] + ([d_x] if d_x.requires_grad else [])
    weights = [v[n] for n in g if g[n].requires_grad] + ([tangent] if d_x.requires_grad else [])
    if outputs:
        hv = torch.autograd.grad(outputs, list(u.values()), grad_outputs=weights, allow_unused=True)
    else:
        hv = (None,) * len(u)
    grads = {n: torch.zeros_like(u[n]) if t is None else _as_grad(-alpha * t, u[n]) for n, t in zip(u, hv)}
    return MetaResult(grads, train_loss.detach(), val_loss.detach())


def _backbone_state(run: _Runner, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The backbone's own names -> ``params`` (model names) or its detached parameters, and fresh
    copies of its buffers."""
    assert run.backbone is not None
    local = {id(p): n for n, p in run.backbone.named_parameters()}
    state = {n: p.detach() for n, p in run.backbone.named_parameters()}
    state.update({local[id(run.downstream[n])]: t for n, t in params.items()})
    state.update({n: b.clone() for n, b in run.backbone.named_buffers()})
    return state


def _backbone_call(run: _Runner, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    assert run.backbone is not None
    return functional_call(run.backbone, _backbone_state(run, params), (x,))


def _backbone_jvp(run: _Runner, x: Tensor, tangents: Mapping[str, Tensor]) -> Tensor:
    """``J v``: the derivative of the backbone's output on ``x`` along ``tangents`` (forward mode)."""
    assert run.backbone is not None
    with torch.no_grad(), fwAD.dual_level(), warnings.catch_warnings():
        # the first dual tensor loads torch's own scripted jvp decompositions, which warn that
        # torch.jit.script is deprecated: torch's business, not the caller's
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
        duals = {n: fwAD.make_dual(run.downstream[n].detach(), t) for n, t in tangents.items()}
        out = fwAD.unpack_dual(_backbone_call(run, duals, x))
    return torch.zeros_like(out.primal) if out.tangent is None else out.tangent


def _simulated_step(
    run: _Runner, train_batch: Batch, d: dict[str, Tensor], features: Tensor | None, alpha: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Step 1 without a graph: ``(loss(u, d; D_train), d_hat)``."""
    train_loss = run.loss({**_detached(run.upstream), **d}, train_batch, features)
    g = _grads(train_loss, d, retain_graph=run.retain)
    return train_loss.detach(), {n: (d[n] - alpha * g[n]).detach() for n in d}


def _finite_difference(
    run: _Runner, train_batch: Batch, val_batch: Batch, alpha: float, fd_eps: float
) -> MetaResult:
    rng = _Generators(run.model)
    d, features, later = run.step1(train_batch[0])
    start = rng.get()
    train_loss, d_hat = _simulated_step(run, train_batch, d, features, alpha)
    d_hat = _leaves(d_hat)
    val_loss = run.loss({**_detached(run.upstream), **d_hat}, val_batch, run.features(val_batch[0]))
    v = _grads(val_loss, d_hat)
    end = rng.get()
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))
    if not norm > 0:  # v = 0: the mixed product is exactly zero (and a NaN norm propagates)
        grads = {n: torch.zeros_like(p) * norm.to(p.dtype) for n, p in run.upstream.items()}
        return MetaResult(grads, train_loss, val_loss.detach())
    eps = fd_eps / norm.item()
    sides = []
    for sign in (1.0, -1.0):
        rng.set(start)  # both passes replay step 1's draws
        u = _leaves(run.upstream)
        d_side = {n: run.downstream[n].detach() + (sign * eps) * v[n] for n in run.inner}
        sides.append(_grads(run.loss({**u, **d_side}, train_batch, later), u))
    rng.set(end)
    plus, minus = sides
    grads = {n: (-alpha / (2 * eps)) * (plus[n] - minus[n]) for n in run.upstream}
    return MetaResult(grads, train_loss, val_loss.detach())


def _first_order(run: _Runner, train_batch: Batch, val_batch: Batch, alpha: float) -> MetaResult:
    d, features, _ = run.step1(train_batch[0])
    train_loss, d_hat = _simulated_step(run, train_batch, d, features, alpha)
    u = _leaves(run.upstream)
    val_loss = run.loss({**u, **d_hat}, val_batch, run.features(val_batch[0]))
    grads = {n: _as_grad(t, u[n]) for n, t in _grads(val_loss, u).items()}
    return MetaResult(grads, train_loss, val_loss.detach())


def meta_gradient(
    model: nn.Module,
    train_batch: Batch,
    val_batch: Batch,
    inner_lr: float,
    loss_fn: LossFn = F.cross_entropy,
    method: str = "autograd",
    fd_eps: float = 0.01,
    scope: str = "all",
) -> dict[str, Tensor]:
    """The gradient of step 2 for every upstream parameter, keyed by :func:`split_parameters`' names.

    ``train_batch`` and ``val_batch`` are ``(x, y)``; ``model(x)`` gives what ``loss_fn(out, y)``
    scores; ``inner_lr`` is step 1's ``alpha``. The model runs in the mode it is in (training or
    evaluation, relaxed or not) and is left exactly as it was; see the module docstring for the
    methods, the scopes and the random draws.
    """
    return compute_meta(model, train_batch, val_batch, inner_lr, loss_fn, method, fd_eps, scope).grads


# -- the iteration


class UDLStep:
    """One whole UDL iteration on a model with two optimizers: ``step(train_batch, val_batch)``.

    ``upstream_optimizer`` must hold exactly the upstream parameters and ``downstream_optimizer``
    exactly the downstream ones (as :func:`split_parameters` gives them): step 2 is
    ``upstream_optimizer.step()`` with the meta-gradient as ``.grad``, step 3 is
    ``downstream_optimizer.step()`` with ``grad_d loss(u', d; D_train)`` as ``.grad`` (an ordinary
    forward and backward of the real model, which updates BatchNorm running statistics as any
    training step does; a downstream parameter that the loss does not reach gets ``.grad = None``
    and is skipped, as after ``zero_grad(set_to_none=True)`` and ``backward``). Each gradient is
    clipped to norm ``grad_clip`` on its own when ``grad_clip > 0``. The optimizers' learning rates,
    momentum and weight decay are theirs; ``inner_lr`` is step 1's ``alpha``. The model's mode is
    left as it is. Step 3 draws fresh Gumbel and Semhash noise, after the meta-gradient's draws.
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
    ) -> None:
        _check_args(inner_lr, method, fd_eps, scope)
        if not (math.isfinite(grad_clip) and grad_clip >= 0):
            raise ValueError(f"UDL grad_clip: {grad_clip!r} is impossible (must be finite and >= 0)")
        upstream, downstream = split_parameters(model)
        if not upstream:
            raise ValueError(
                "UDLStep: the model has no upstream parameters (no DSTS layer with a trainable score_weight or gate)"
            )
        _check_optimizer(upstream_optimizer, upstream, "upstream_optimizer", "upstream")
        _check_optimizer(downstream_optimizer, downstream, "downstream_optimizer", "downstream")
        self.model = model
        self.upstream_optimizer = upstream_optimizer
        self.downstream_optimizer = downstream_optimizer
        self.inner_lr = inner_lr
        self.method = method
        self.fd_eps = fd_eps
        self.scope = scope
        self.loss_fn = loss_fn
        self.grad_clip = grad_clip
        self.upstream = upstream
        self.downstream = downstream
        self.backbone = cacheable_backbone(model)

    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        """Steps 1 to 3; returns ``loss`` (step 3's training loss, at ``u'``), ``meta_loss``
        (the ``D_val`` loss at ``d_hat``) and ``train_loss_sim`` (step 1's loss, at ``u``)."""
        x, y = _check_batch(train_batch, "train_batch")
        with torch.enable_grad():
            # Step 3's backbone forward on D_train, run first: the backbone does not depend on u,
            # so its output (and graph) serves step 1 as well as step 3, one backbone forward fewer.
            shared = None if self.backbone is None else self.backbone(x)
            meta = compute_meta(
                self.model,
                (x, y),
                val_batch,
                self.inner_lr,
                self.loss_fn,
                self.method,
                self.fd_eps,
                self.scope,
                shared,
            )
            # step 2: u' = u - lr_u * meta-gradient, by the upstream optimizer
            for name, param in self.upstream.items():
                param.grad = meta.grads[name]
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(list(self.upstream.values()), self.grad_clip)
            self.upstream_optimizer.step()
            # step 3: an ordinary training step of d with u' (frozen: it gets no gradient here)
            with _substituted_output(self.backbone, shared):
                loss = self.loss_fn(self.model(x), y)
            names = list(self.downstream)
            got = torch.autograd.grad(loss, [self.downstream[n] for n in names], allow_unused=True)
            for name, g in zip(names, got):
                param = self.downstream[name]
                param.grad = None if g is None else _as_grad(g, param)
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(
                    [p for p in self.downstream.values() if p.grad is not None], self.grad_clip
                )
            self.downstream_optimizer.step()
        return {
            "loss": loss.item(),
            "meta_loss": meta.val_loss.item(),
            "train_loss_sim": meta.train_loss.item(),
        }


def _check_optimizer(
    optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter], name: str, kind: str
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
