"""Run a model on tensors that are not its parameters, and leave it exactly as it was.

:func:`torch.func.functional_call` with fresh copies of the buffers (BatchNorm running statistics
stay where they are), a submodule's output substituted for its computation, the random generators
saved and put back, and the tensors a forward records on the modules (``DSTS.last_selection``)
restored: the machinery of UDL's simulated passes (``dsts/metagrad.py``), which never touch the
real model, its ``.grad`` or an optimizer.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
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
