"""Run a model on tensors that are not its parameters, and leave it exactly as it was.

:func:`torch.func.functional_call` with fresh copies of the buffers (BatchNorm running statistics
stay where they are), a submodule's output substituted for its computation, the random generators
saved and put back, and the tensors a forward records on the modules (``DSTS.last_selection``)
restored: the machinery of UDL's simulated passes (``dsts/metagrad.py``), which never touch the
real model, its ``.grad`` or an optimizer. Also the derivative of a module's output along its
parameters (forward mode), from the activations of a forward already run where the module is a plain
chain of convolutions, BatchNorm and ReLU (:func:`taped`, :func:`tangent`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

RngState = tuple[Tensor, list[Tensor], list[Tensor]]


class Generators:
    """Save and restore every generator the model's draws can come from: the global CPU RNG, the
    CUDA RNG of each device the model lives on, and any ``generator`` attribute of a submodule."""

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

    def get(self) -> RngState:
        return (
            torch.get_rng_state(),
            [torch.cuda.get_rng_state(i) for i in self.cuda],
            [g.get_state() for g in self.own],
        )

    def set(self, state: RngState) -> None:
        cpu, cuda, own = state
        torch.set_rng_state(cpu)
        for index, s in zip(self.cuda, cuda):
            torch.cuda.set_rng_state(s, index)
        for gen, s in zip(self.own, own):
            gen.set_state(s)


@contextlib.contextmanager
def substituted_output(module: nn.Module | None, output: Tensor | None) -> Iterator[None]:
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


def _recorded(module: nn.Module) -> dict[str, Any]:
    """The plain tensor attributes (or ``None``) that a forward may record on ``module``."""
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and (v is None or isinstance(v, Tensor))
    }


@contextlib.contextmanager
def recorded_attributes_kept(model: nn.Module) -> Iterator[None]:
    """On exit, every module's recorded tensor attributes are the objects they were on entry; one
    that a forward added in between is removed."""
    saved = [(m, _recorded(m)) for m in model.modules()]
    try:
        yield
    finally:
        for module, attrs in saved:
            for key in [k for k, v in _recorded(module).items() if v is not None and k not in attrs]:
                delattr(module, key)
            for key, value in attrs.items():
                setattr(module, key, value)


def call(module: nn.Module, tensors: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``module(x)`` with ``tensors`` (keyed by ``module``'s own parameter names) in place of those
    parameters, the other parameters detached, and fresh copies of every buffer."""
    state = {n: p.detach() for n, p in module.named_parameters()}
    state.update(tensors)
    state.update({n: b.clone() for n, b in module.named_buffers()})
    return functional_call(module, state, (x,))


def jvp(module: nn.Module, tangents: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """The derivative of ``module(x)`` along ``tangents`` (keyed by its parameter names), by one
    forward-mode pass; zero where the output does not depend on them."""
    params = dict(module.named_parameters())
    with torch.no_grad(), fwAD.dual_level(), warnings.catch_warnings():
        # the first dual tensor loads torch's own scripted jvp decompositions, which warn that
        # torch.jit.script is deprecated: torch's business, not the caller's
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
        duals = {n: fwAD.make_dual(params[n].detach(), t) for n, t in tangents.items()}
        out = fwAD.unpack_dual(call(module, duals, x))
    return torch.zeros_like(out.primal) if out.tangent is None else out.tangent


_CONVS: dict[type, Callable[..., Tensor]] = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def chain(module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``(name prefix, leaf)`` of every leaf module in the order ``module``'s forward runs them,
    when that forward is nothing but their chain: nested ``nn.Sequential`` (forward not overridden)
    of zero-padded convolutions, BatchNorm, ReLU and Identity (exactly these classes). None otherwise."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        leaves_: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            inner = chain(child)
            if inner is None:
                return None
            leaves_ += [(f"{name}.{n}" if n else name, m) for n, m in inner]
        return leaves_
    kind = type(module)
    if kind in (nn.ReLU, nn.Identity, *_NORMS) or (kind in _CONVS and module.padding_mode == "zeros"):
        return [("", module)]
    return None


@contextlib.contextmanager
def taped(module: nn.Module | None) -> Iterator[list[tuple] | None]:
    """While open, a forward of ``module`` leaves on the tape each leaf's input, output and the
    parameters and buffers it ran with (references: the forward's graph holds the same tensors).
    The tape is None where ``module`` is not a :func:`chain`."""
    leaves_ = None if module is None else chain(module)
    if leaves_ is None:
        yield None
        return
    tape: list[tuple] = []

    def hook(leaf: nn.Module, args: tuple, out: Tensor) -> None:
        state = {k: getattr(leaf, k, None) for k in ("weight", "running_mean", "running_var")}
        used = out if isinstance(leaf, nn.ReLU) else args[0]  # what its tangent reads
        # one dtype throughout, else the link ran in another precision (autocast): not replayable
        dtypes = {args[0].dtype, out.dtype} | {t.dtype for t in state.values() if t is not None}
        tape.append((leaf, args[0], out, used._version if len(dtypes) == 1 else -1, leaf.training, state))

    handles = [leaf.register_forward_hook(hook) for _, leaf in leaves_]
    try:
        yield tape
    finally:
        for handle in handles:
            handle.remove()


def tangent(module: nn.Module, tangents: Mapping[str, Tensor], x: Tensor, tape: list[tuple] | None) -> Tensor:
    """:func:`jvp` of ``module`` at ``x``, from the ``tape`` of the one forward that computed
    ``module(x)`` (:func:`taped`) when there is one: the tangent of each link, without running the
    forward again (the conv's tangent is ``conv(dx, W) + conv(x, dW)``, BatchNorm's its linearisation,
    ReLU's the mask of its output). Without a tape, or when the tape does not match the chain and
    ``x``, a link ran in another precision or a taped tensor has changed since, :func:`jvp` (forward
    mode, which runs the forward again). The two agree up to rounding (they sum in other orders)."""
    links = chain(module)
    if (
        tape is None
        or links is None
        or len(tape) != len(links)
        or tape[0][1] is not x
        or any(rec[0] is not leaf for rec, (_, leaf) in zip(tape, links))
        or any((rec[2] if isinstance(rec[0], nn.ReLU) else rec[1])._version != rec[3] for rec in tape)
    ):
        return jvp(module, tangents, x)
    dx: Tensor | None = None
    with torch.no_grad():
        for (prefix, _), (leaf, inp, out, _, training, state) in zip(links, tape):
            dw, db = tangents.get(f"{prefix}.weight"), tangents.get(f"{prefix}.bias")
            if isinstance(leaf, nn.ReLU):
                dx = None if dx is None else dx.masked_fill(out <= 0, 0.0)
            elif isinstance(leaf, _NORMS):
                dx = _norm_tangent(leaf, inp, dx, dw, db, training, state)
            elif not isinstance(leaf, nn.Identity):
                conv = _CONVS[type(leaf)]
                args = (leaf.stride, leaf.padding, leaf.dilation, leaf.groups)
                parts = [conv(dx, state["weight"].detach(), None, *args)] if dx is not None else []
                parts += [conv(inp, dw, None, *args)] if dw is not None else []
                dx = parts[0].add_(parts[1]) if len(parts) == 2 else (parts[0] if parts else None)
                if db is not None:
                    bias = db.view(1, -1, *[1] * (out.dim() - 2))
                    dx = bias.expand_as(out).clone() if dx is None else dx + bias
    return torch.zeros_like(tape[-1][2]) if dx is None else dx


def _norm_tangent(
    leaf: nn.Module,
    inp: Tensor,
    dx: Tensor | None,
    dw: Tensor | None,
    db: Tensor | None,
    training: bool,
    state: dict[str, Tensor | None],
) -> Tensor | None:
    """BatchNorm's tangent ``w * d(xhat) + dw * xhat + db``. With batch statistics (as
    ``F.batch_norm`` uses them) ``d(xhat)`` is the normalisation's Jacobian times ``dx``; that
    Jacobian is symmetric, so it is its vector-Jacobian product, BatchNorm's own backward kernel."""
    mean, var = state["running_mean"], state["running_var"]
    shape = (1, -1, *[1] * (inp.dim() - 2))
    weight = state["weight"]
    if training or mean is None:
        leaf_in = inp.detach().requires_grad_()
        with torch.enable_grad():
            xhat = F.batch_norm(leaf_in, None, None, training=True, eps=leaf.eps)
        d_xhat = None if dx is None else torch.autograd.grad(xhat, leaf_in, dx)[0]
        xhat = xhat.detach()
    else:
        xhat = F.batch_norm(inp, mean, var, training=False, eps=leaf.eps)
        d_xhat = (
            None
            if dx is None
            else F.batch_norm(dx, torch.zeros_like(mean), var, training=False, eps=leaf.eps)
        )
    out = None if d_xhat is None else (d_xhat if weight is None else d_xhat * weight.detach().view(shape))
    if dw is not None:
        out = xhat * dw.view(shape) if out is None else out.addcmul_(xhat, dw.view(shape))
    if db is not None:
        out = db.view(shape).expand_as(xhat).clone() if out is None else out.add_(db.view(shape))
    return out


def grads(
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


def as_grad(g: Tensor, param: Tensor) -> Tensor:
    """``g`` as a ``.grad`` may be: a tensor of its own with the parameter's layout. Autograd can
    return a broadcast view (the gradient of ``score_weight.sum(1)`` is an ``expand``), on which
    in-place work such as clipping fails; copy those, as ``backward`` would."""
    g = g.detach()
    if g.stride() == param.stride() or g.is_contiguous():
        return g
    return torch.empty_like(param).copy_(g)


def leaves(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Fresh leaves that require grad, with the values of ``params``."""
    return {n: p.detach().requires_grad_() for n, p in params.items()}


def detached(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in params.items()}
