"""Tiny random DSTS models, the modes they run in, and oracles written from UDL's formulas with plain
autograd on copies of the model: what tests/test_udl.py, tests/test_metagrad.py and
tests/test_functional.py share.

Every property runs on small random real models (``dsts.DSTS`` between a one-conv backbone and a
linear head), in float64, in relaxed mode (deterministic and piecewise smooth, so finite
differences are an oracle) and in hard mode (real Gumbel and Semhash draws).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

import dsts
from dsts.udl import split_parameters


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The models here are tiny: threads cost more than they give (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- tiny models


class Tiny(nn.Module):
    """A one-conv backbone, a DSTS module and a linear head: the shape of ``build_model``'s model."""

    def __init__(self, in_ch: int, channels: int, layers: int, neurons: int, classes: int, **dsts_kwargs):
        super().__init__()
        # pinned here, so that these properties do not move with the library's defaults
        dsts_kwargs = {"tau": 1.0, "score_init_std": 0.1, **dsts_kwargs}
        # ends at BatchNorm, as every backbone of the library does: the DSTS input is centred
        self.backbone = nn.Sequential(
            nn.Conv3d(in_ch, channels, 3, padding=1, bias=False), nn.BatchNorm3d(channels)
        )
        self.dsts = dsts.DSTS(channels, layers, neurons, **dsts_kwargs)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dsts(self.backbone(x)).mean(dim=(2, 3, 4)))


class Stemmed(nn.Module):
    """The same network with its backbone under another name, and no ``backbone`` attribute."""

    def __init__(self, tiny: Tiny):
        super().__init__()
        self.stem = tiny.backbone
        self.dsts = tiny.dsts
        self.head = tiny.head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dsts(self.stem(x)).mean(dim=(2, 3, 4)))


@st.composite
def problems(draw, max_layers: int = 2, routings=("dense", "sparse"), specializations=("st",)):
    """A random tiny float64 model (random decisions, non-trivial running statistics) and two batches."""
    seed = draw(st.integers(0, 2**31 - 1))
    channels = draw(st.integers(2, 3))
    layers = draw(st.integers(1, max_layers))
    neurons = draw(st.integers(2, 3))
    classes = draw(st.integers(2, 4))
    routing = draw(st.sampled_from(routings))
    specialization = draw(st.sampled_from(specializations))
    b_train, b_val = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    t, hw = draw(st.integers(2, 3)), draw(st.integers(2, 3))
    score_std = draw(st.floats(0.05, 0.5))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Tiny(2, channels, layers, neurons, classes, routing=routing, specialization=specialization)
    model = model.double()
    with torch.no_grad():
        for layer in model.dsts.layers:
            layer.score_weight.copy_(
                torch.randn(layer.score_weight.shape, generator=gen, dtype=torch.float64) * score_std
            )
            if specialization == "st":
                layer.gate.copy_(torch.randn(layer.gate.shape, generator=gen, dtype=torch.float64))
            for name, param in layer.named_parameters():
                # BatchNorm affine away from (1, 0): a path that a gate shuts exactly (hard bits)
                # would otherwise sit exactly on its ReLU's kink
                if name.startswith("bn") and name.endswith("_bias"):
                    param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=torch.float64))
                elif name.startswith("bn") and name.endswith("_weight"):
                    param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen, dtype=torch.float64))
            for name, buf in layer.named_buffers():
                if name.endswith("_mean"):
                    buf.copy_(0.3 * torch.randn(buf.shape, generator=gen, dtype=torch.float64))
                elif name.endswith("_var"):
                    buf.copy_(0.5 + torch.rand(buf.shape, generator=gen, dtype=torch.float64))
        bn = model.backbone[1]
        bn.bias.copy_(0.3 * torch.randn(bn.bias.shape, generator=gen, dtype=torch.float64))
        bn.running_mean.copy_(0.3 * torch.randn(bn.running_mean.shape, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen, dtype=torch.float64))

    def batch(b: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(b, 2, t, hw, hw, generator=gen, dtype=torch.float64)
        return x, torch.randint(0, classes, (b,), generator=gen)

    return model, batch(b_train), batch(b_val), seed


MODES = ("relaxed-eval", "relaxed-train", "hard-train", "hard-eval")


class mode:  # noqa: N801 - used as a context manager, like dsts.relaxed
    """Put ``model`` in one of ``MODES`` for the ``with`` block; flags come back on exit."""

    def __init__(self, model: nn.Module, name: str):
        self.model, self.name = model, name

    def __enter__(self) -> nn.Module:
        self.was_training = self.model.training
        self.model.train(self.name.endswith("train"))
        self.relax = dsts.relaxed(self.model) if self.name.startswith("relaxed") else None
        if self.relax is not None:
            self.relax.__enter__()
        return self.model

    def __exit__(self, *exc) -> None:
        if self.relax is not None:
            self.relax.__exit__(*exc)
        self.model.train(self.was_training)


# -- oracles, written from the formulas with plain autograd on copies of the model


def inner_names(model: nn.Module, scope: str) -> list[str]:
    _, down = split_parameters(model)
    if scope == "all":
        return list(down)
    return [n for n in down if not n.startswith("backbone.")]


def simulated(model: nn.Module, u: dict[str, Tensor], scope: str, alpha: float, train) -> nn.Module:
    """A copy of ``model`` with upstream ``u`` and, in scope, ``d - alpha * grad_d loss(u, d; D_train)``;
    its buffers are the original ones (the simulated step touches no running statistic)."""
    sim = copy.deepcopy(model)
    params = dict(sim.named_parameters())
    with torch.no_grad():
        for n, t in u.items():
            params[n].copy_(t)
    names = inner_names(model, scope)
    loss = F.cross_entropy(sim(train[0]), train[1])
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    with torch.no_grad():
        for n, g in zip(names, grads):
            if g is not None:
                params[n].sub_(alpha * g)
        for (_, b), (_, b0) in zip(sim.named_buffers(), model.named_buffers()):
            b.copy_(b0)
    return sim


def meta_objective(model, u, u0, scope, alpha, train, val) -> float:
    """``F(u) = loss(u0, d - alpha * grad_d loss(u, d; D_train); D_val)``."""
    sim = simulated(model, u, scope, alpha, train)
    params = dict(sim.named_parameters())
    with torch.no_grad():
        for n, t in u0.items():
            params[n].copy_(t)
        return F.cross_entropy(sim(val[0]), val[1]).item()


def norm(tensors: dict[str, Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors.values()))


def difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return norm({n: a[n] - b[n] for n in a})


def upstream_values(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in split_parameters(model)[0].items()}


class Counter:
    """Counts the backbone's computations, and how many of them autograd records."""

    def __init__(self, model: Tiny):
        self.computed = 0
        self.recorded = 0
        model.backbone[0].register_forward_hook(self.hook)

    def hook(self, module, args, out):
        self.computed += 1
        self.recorded += int(out.requires_grad)
