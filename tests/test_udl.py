"""Upstream-Downstream Learning: the meta-gradient against float64 finite differences, the other two
methods against it, the model left untouched, and whole UDL iterations against a manual one.

Every property runs on small random real models (``dsts.DSTS`` between a one-conv backbone and a
linear head), in float64, in relaxed mode (deterministic and piecewise smooth, so finite
differences are an oracle) and in hard mode (real Gumbel and Semhash draws).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import dsts
from dsts.layers import DSTSLayer
from dsts.udl import METHODS, UDLStep, compute_meta, meta_gradient, split_parameters
from tests.helpers import expensive


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models here are tiny: threads cost more than they give (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tiny models


class Tiny(nn.Module):
    """A one-conv backbone, a DSTS module and a linear head: the shape of ``build_model``'s model."""

    def __init__(self, in_ch: int, channels: int, layers: int, neurons: int, classes: int, **dsts_kwargs):
        super().__init__()
        # pinned here, so that these properties do not move with the library's defaults
        dsts_kwargs = {"tau": 1.0, "score_init_std": 0.1, **dsts_kwargs}
        self.backbone = nn.Sequential(
            nn.Conv3d(in_ch, channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(channels),
            nn.ReLU(inplace=True),
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


# -- split_parameters


@given(problems(specializations=("st", "3d")), st.booleans())
def test_split_parameters_is_the_decisions_and_the_rest(problem, freeze_head):
    model = problem[0]
    if freeze_head:
        model.head.weight.requires_grad_(False)
    up, down = split_parameters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(up).isdisjoint(down) and set(up) | set(down) == trainable
    want_up = {
        f"dsts.layers.{i}.{name}"
        for i, layer in enumerate(model.dsts.layers)
        for name in ("score_weight", "gate")
        if hasattr(layer, name)
    }
    assert set(up) == want_up
    params = dict(model.named_parameters())
    assert all(up[n] is params[n] for n in up) and all(down[n] is params[n] for n in down)
    assert ("head.weight" in down) is not freeze_head


def test_split_parameters_goes_by_the_layer_class_not_the_name():
    class Impostor(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Parameter(torch.zeros(3))
            self.score_weight = nn.Parameter(torch.zeros(3))

    model = nn.Sequential(Impostor(), DSTSLayer(3, 2))
    up, down = split_parameters(model)
    assert set(up) == {"1.score_weight", "1.gate"}
    assert {"0.gate", "0.score_weight"} <= set(down)


# -- the exact meta-gradient


def richardson(f, h: float) -> tuple[float, float, float]:
    """``f'(0)`` by central differences at ``h, h/2, h/4`` with Richardson extrapolation (error
    ``O(h^4)`` where ``f`` is smooth): ``(estimate, the same from the two larger steps, max |f|)``.
    Where the two extrapolations disagree beyond rounding, a kink lies within ``h``."""
    values = {k: (f(h / 2**k), f(-h / 2**k)) for k in range(3)}
    central = [(values[k][0] - values[k][1]) / (2 * h / 2**k) for k in range(3)]
    coarse = (4 * central[1] - central[0]) / 3
    fine = (4 * central[2] - central[1]) / 3
    return fine, coarse, max(abs(v) for pair in values.values() for v in pair)


@settings(max_examples=expensive(30, 8))
@given(
    problems(),
    st.sampled_from(("relaxed-eval", "relaxed-train")),
    st.sampled_from(("all", "dsts")),
    st.floats(0.05, 1.0),
)
def test_autograd_matches_finite_differences_of_the_meta_objective(problem, mode_name, scope, alpha):
    """Directional derivatives of ``F(u) = loss(u0, d - alpha grad_d loss(u, d; D_train); D_val)``
    along random directions, by Richardson-extrapolated central differences in float64."""
    model, train, val, seed = problem
    h = 4e-5
    with mode(model, mode_name):
        grads = meta_gradient(model, train, val, alpha, scope=scope)
        u0 = upstream_values(model)
        gen = torch.Generator().manual_seed(seed)
        got, want, rounding = [], [], 0.0
        for _ in range(3):
            w = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in u0.items()}

            def F_at(step, w=w):
                return meta_objective(
                    model, {n: u0[n] + step * w[n] for n in u0}, u0, scope, alpha, train, val
                )

            fine, coarse, size = richardson(F_at, h)
            # the rounding of one extrapolated difference: a few ulps of F over the smallest step
            rounding = max(rounding, 8 * torch.finfo(torch.float64).eps * max(size, 1.0) / (h / 4))
            # F is only piecewise smooth (ReLU, the clamp): skip points with a kink within h
            assume(abs(coarse - fine) <= 1e-7 * abs(fine) + 4 * rounding)
            want.append(fine)
            got.append(sum(float((grads[n] * w[n]).sum()) for n in u0))
    scale = math.sqrt(sum(x * x for x in want))
    assume(rounding <= 1e-7 * scale)  # the oracle resolves a relative error of 1e-6
    err = math.sqrt(sum((a - b) ** 2 for a, b in zip(got, want)))
    assert err <= 1e-6 * scale, (got, want)


@settings(max_examples=expensive(30, 8))
@given(
    problems(),
    st.sampled_from(("relaxed-eval", "relaxed-train")),
    st.sampled_from(("all", "dsts")),
    st.floats(0.05, 1.0),
)
def test_finite_difference_method_agrees_with_autograd(problem, mode_name, scope, alpha):
    model, train, val, _ = problem
    with mode(model, mode_name):
        exact = meta_gradient(model, train, val, alpha, method="autograd", scope=scope)
        approx = meta_gradient(model, train, val, alpha, method="finite_difference", fd_eps=1e-6, scope=scope)
    scale = norm(exact)
    assume(scale > 1e-8)
    assert difference(approx, exact) <= 1e-4 * scale


@settings(max_examples=expensive(30, 8))
@given(problems(), st.sampled_from(("all", "dsts")), st.floats(0.05, 1.0))
def test_finite_difference_passes_share_their_draws_in_hard_mode(problem, scope, alpha):
    """With real Gumbel and Semhash draws the estimate converges as ``fd_eps`` shrinks: the two
    passes differ only by the perturbation of ``d`` (different draws would give O(1 / eps))."""
    model, train, val, seed = problem
    with mode(model, "hard-train"):
        estimates = []
        for fd_eps in (1e-5, 1e-6):
            torch.manual_seed(seed)
            estimates.append(
                meta_gradient(
                    model, train, val, alpha, method="finite_difference", fd_eps=fd_eps, scope=scope
                )
            )
    scale = norm(estimates[1])
    assume(scale > 1e-8)
    assert difference(*estimates) <= 1e-4 * scale


def test_straight_through_makes_the_mixed_partials_differ_in_hard_mode():
    """The straight-through selection is not the gradient of a function, so in hard mode
    ``d/du (grad_d loss . v)`` (autograd) and ``d/dd (grad_u loss) . v`` (finite difference) are
    different quantities. A neuron that no sample selects shows it: its selection weight is exactly 0
    in the forward, so ``grad_gate loss`` is 0 at every ``d`` (the finite difference sees 0), while
    ``grad_d loss`` depends on its gate through the weight's straight-through derivative."""
    torch.manual_seed(3)
    model = Tiny(2, 2, 1, 2, 2, routing="dense").double().train()
    with torch.no_grad():
        model.dsts.layers[0].score_weight.copy_(
            torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[-1.0, -1.0], [-1.0, -1.0]]]) * 0.1
        )
    x = torch.rand(3, 2, 2, 2, 2, dtype=torch.float64)
    train = (x, torch.tensor([0, 1, 0]))
    torch.manual_seed(0)
    exact = meta_gradient(model, train, train, 1.0, method="autograd")
    torch.manual_seed(0)
    approx = meta_gradient(model, train, train, 1.0, method="finite_difference", fd_eps=1e-6)
    torch.manual_seed(0)
    model(x)  # step 1's draws: every sample selected neuron 0, yet neuron 1's soft weight is not small
    assert bool((model.dsts.last_selection == 0).all())
    soft = torch.softmax(model.dsts.layers[0].spikes(model.backbone(x)), dim=-1).detach()
    assert float(soft[:, 1].min()) > 0.01
    assert bool((approx["dsts.layers.0.gate"][1] == 0).all())
    assert float(exact["dsts.layers.0.gate"][1].abs().max()) > 1e-4


@settings(max_examples=expensive(30, 8))
@given(problems(), st.sampled_from(MODES), st.sampled_from(("all", "dsts")), st.floats(0.0, 1.0))
def test_first_order_is_the_direct_gradient_at_the_detached_simulated_step(problem, mode_name, scope, alpha):
    model, train, val, seed = problem
    with mode(model, mode_name):
        torch.manual_seed(seed)
        got = meta_gradient(model, train, val, alpha, method="first_order", scope=scope)
        # oracle: the same draws, the simulated step on a copy, then grad_u on D_val with u live
        torch.manual_seed(seed)
        sim = simulated(model, upstream_values(model), scope, alpha, train)
        up, _ = split_parameters(sim)
        loss = F.cross_entropy(sim(val[0]), val[1])
        want = dict(zip(up, torch.autograd.grad(loss, list(up.values()), allow_unused=True)))
    for n in got:
        expected = torch.zeros_like(got[n]) if want[n] is None else want[n]
        torch.testing.assert_close(got[n], expected, rtol=1e-10, atol=1e-13)


@settings(max_examples=expensive(30, 8))
@given(problems(), st.sampled_from(MODES), st.sampled_from(("all", "dsts")))
def test_autograd_meta_gradient_is_exactly_zero_without_a_simulated_step(problem, mode_name, scope):
    model, train, val, _ = problem
    with mode(model, mode_name):
        for method in ("autograd", "finite_difference"):
            grads = meta_gradient(model, train, val, 0.0, method=method, scope=scope)
            assert grads.keys() == split_parameters(model)[0].keys()
            assert all(bool((g == 0).all()) for g in grads.values()), method


# -- the model is left exactly as it was


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "recorded": [
            (m.last_selection, m.last_gates) for m in model.modules() if isinstance(m, (DSTSLayer, dsts.DSTS))
        ],
        "relaxed": [m.relaxed for m in model.modules() if isinstance(m, DSTSLayer)],
        "own": [dict(vars(m)).get("forward") for m in model.modules()],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        w = after["state"][k]
        assert v.dtype == w.dtype and v.shape == w.shape and torch.equal(v, w), k
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for g, h in zip(before["grad"], after["grad"]):
        assert (g is None and h is None) or (g is not None and h is not None and torch.equal(g, h))
    for (s, g), (s2, g2) in zip(before["recorded"], after["recorded"]):
        assert s is s2 and g is g2
    assert before["relaxed"] == after["relaxed"]
    assert before["own"] == after["own"]


@settings(max_examples=expensive(60, 12))
@given(
    problems(specializations=("st", "3d")),
    st.sampled_from(MODES),
    st.sampled_from(METHODS),
    st.sampled_from(("all", "dsts")),
    st.booleans(),
)
def test_meta_gradient_leaves_the_model_and_optimizer_untouched(
    problem, mode_name, method, scope, with_grads
):
    model, train, val, seed = problem
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with mode(model, mode_name):
        model(train[0])  # something recorded (last_selection) to keep
        if with_grads:
            F.cross_entropy(model(train[0]), train[1]).backward()
            optimizer.step()
        opt_state = copy.deepcopy(optimizer.state_dict())
        before = snapshot(model)
        grads = meta_gradient(model, train, val, 0.3, method=method, scope=scope)
        after = snapshot(model)
    assert_same(before, after)
    assert str(optimizer.state_dict()) == str(opt_state)
    assert all(torch.isfinite(g).all() for g in grads.values())
    for n, p in split_parameters(model)[0].items():
        assert grads[n].shape == p.shape and grads[n].dtype == p.dtype and not grads[n].requires_grad


@settings(max_examples=expensive(30, 8))
@given(
    problems(),
    st.sampled_from(("hard-train", "relaxed-train")),
    st.sampled_from(METHODS),
    st.sampled_from(("all", "dsts")),
)
def test_one_seed_one_result_and_the_rng_advances_by_two_forwards(problem, mode_name, method, scope):
    """Whatever the method: the result is a function of the seed, and the global RNG ends where one
    forward on D_train then one on D_val would leave it."""
    model, train, val, seed = problem
    with mode(model, mode_name):
        torch.manual_seed(seed)
        first = meta_gradient(model, train, val, 0.3, method=method, scope=scope)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        second = meta_gradient(model, train, val, 0.3, method=method, scope=scope)
        assert all(torch.equal(first[n], second[n]) for n in first)
        torch.manual_seed(seed)
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin(train[0])
            twin(val[0])
    assert torch.equal(after, torch.get_rng_state())


def test_a_module_generator_feeds_the_draws_and_is_replayed():
    """With ``DSTS.generator`` set, the draws come from it: one generator seed, one result, the
    global RNG untouched, the generator left where two forwards leave it, and the finite-difference
    passes sharing their draws (the estimate converges)."""
    torch.manual_seed(0)
    model = Tiny(2, 3, 2, 3, 3, routing="dense").double().train()
    with torch.no_grad():  # no BatchNorm bias exactly 0 (see problems())
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.add_(0.3 * torch.randn_like(param))
    train = (torch.randn(4, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    val = (torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([2, 1, 0]))
    model.dsts.generator = torch.Generator().manual_seed(7)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin(train[0])
        twin(val[0])
    global_state = torch.get_rng_state()
    results = {}
    for method, fd_eps in (
        ("autograd", 0.01),
        ("finite_difference", 1e-5),
        ("finite_difference", 1e-6),
        ("first_order", 0.01),
    ):
        for _ in range(2):
            model.dsts.generator.manual_seed(7)
            got = meta_gradient(model, train, val, 0.5, method=method, fd_eps=fd_eps)
            assert torch.equal(model.dsts.generator.get_state(), twin.dsts.generator.get_state())
            if (method, fd_eps) in results:
                assert all(torch.equal(got[n], results[method, fd_eps][n]) for n in got)
            results[method, fd_eps] = got
    assert torch.equal(global_state, torch.get_rng_state())
    coarse, fine = results["finite_difference", 1e-5], results["finite_difference", 1e-6]
    assert difference(coarse, fine) <= 1e-4 * norm(fine) and norm(fine) > 0


# -- scope


@settings(max_examples=expensive(30, 8))
@given(problems(), st.sampled_from(MODES), st.sampled_from(METHODS), st.sampled_from(("all", "dsts")))
def test_the_backbone_shortcuts_change_nothing(problem, mode_name, method, scope):
    """With ``model.backbone`` the library takes shortcuts: scope "dsts" computes its output once
    and substitutes it; scope "all" with autograd takes the backbone's part of the mixed derivative
    by forward mode. Without the attribute (``stem``) the passes run through it and autograd
    differentiates twice through it. Same draws, same meta-gradient."""
    model, train, val, seed = problem
    stemmed = Stemmed(model)
    with mode(model, mode_name):
        torch.manual_seed(seed)
        shortcut = meta_gradient(model, train, val, 0.4, method=method, scope=scope, fd_eps=1e-3)
        torch.manual_seed(seed)
        direct = meta_gradient(stemmed, train, val, 0.4, method=method, scope=scope, fd_eps=1e-3)
    for n, g in shortcut.items():
        torch.testing.assert_close(direct[n], g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_a_frozen_backbone_is_held_fixed_in_either_scope(method):
    """Frozen backbone parameters are not downstream parameters: both scopes hold it fixed, and
    UDLStep still trains the rest."""
    torch.manual_seed(0)
    model = Tiny(2, 3, 2, 2, 3, routing="dense").double().train()  # every neuron gets a gradient
    model.backbone.requires_grad_(False)
    train = (torch.randn(4, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    val = (torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([2, 1, 0]))
    grads = {}
    for scope in ("all", "dsts"):
        torch.manual_seed(1)
        grads[scope] = meta_gradient(model, train, val, 0.3, method=method, scope=scope)
    for n, g in grads["all"].items():
        torch.testing.assert_close(grads["dsts"][n], g, rtol=1e-9, atol=1e-12)
    up, down = split_parameters(model)
    assert not any(n.startswith("backbone.") for n in down)
    step = UDLStep(
        model,
        torch.optim.SGD(up.values(), lr=0.1),
        torch.optim.SGD(down.values(), lr=0.1),
        0.3,
        method=method,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step.step(train, val)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) is n.startswith("backbone."), n


class Counter:
    """Counts the backbone's computations, and how many of them autograd records."""

    def __init__(self, model: Tiny):
        self.computed = 0
        self.recorded = 0
        model.backbone[0].register_forward_hook(self.hook)

    def hook(self, module, args, out):
        self.computed += 1
        self.recorded += int(out.requires_grad)


@pytest.mark.parametrize(
    ("method", "scope", "computed", "recorded"),
    [
        # scope "all": step 1 and v need grad_d (through the backbone); grad_u-only passes do not;
        # autograd's third is the forward-mode pass J v_b, which records nothing either
        ("autograd", "all", 3, 2),
        ("finite_difference", "all", 4, 2),
        ("first_order", "all", 2, 1),
        # scope "dsts": the backbone runs once per batch, without gradient
        ("autograd", "dsts", 2, 0),
        ("finite_difference", "dsts", 2, 0),
        ("first_order", "dsts", 2, 0),
    ],
)
def test_backbone_passes_per_method_and_scope(method, scope, computed, recorded):
    torch.manual_seed(0)
    model = Tiny(2, 3, 1, 2, 3).double().train()
    batch = (torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 1, 2]))
    count = Counter(model)
    meta_gradient(model, batch, batch, 0.1, method=method, scope=scope)
    assert (count.computed, count.recorded) == (computed, recorded)


@pytest.mark.parametrize(
    ("method", "scope", "computed"),
    [("autograd", "all", 3), ("finite_difference", "all", 4), ("first_order", "all", 2)]
    + [(m, "dsts", 2) for m in METHODS],
)
def test_udl_step_shares_the_backbone_forward_of_steps_1_and_3(method, scope, computed):
    """One backbone forward on D_train serves steps 1 and 3 (its BatchNorm statistics move once);
    the rest are the passes at other parameters or on D_val."""
    torch.manual_seed(0)
    model = Tiny(2, 3, 1, 2, 3).double().train()
    batch = (torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 1, 2]))
    count = Counter(model)
    up, down = split_parameters(model)
    step = UDLStep(
        model,
        torch.optim.SGD(up.values(), lr=0.1),
        torch.optim.SGD(down.values(), lr=0.1),
        0.1,
        method=method,
        scope=scope,
    )
    step.step(batch, batch)
    assert count.computed == computed
    assert int(model.backbone[1].num_batches_tracked) == 1


# -- whole iterations


@settings(max_examples=expensive(30, 8))
@given(
    problems(),
    st.sampled_from(("relaxed-eval", "relaxed-train")),
    st.sampled_from(METHODS),
    st.sampled_from(("all", "dsts")),
    st.floats(0.0, 1.0),
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
)
def test_udl_step_with_plain_sgd_is_the_three_steps(problem, mode_name, method, scope, alpha, lr_u, lr_d):
    model, train, val, _ = problem
    with mode(model, mode_name):
        reference = copy.deepcopy(model)
        meta = meta_gradient(reference, train, val, alpha, method=method, scope=scope)
        up, down = split_parameters(model)
        step = UDLStep(
            model,
            torch.optim.SGD(up.values(), lr=lr_u),
            torch.optim.SGD(down.values(), lr=lr_d),
            alpha,
            method=method,
            scope=scope,
        )
        out = step.step(train, val)
        training_inside = model.training
        # manual step 2, then step 3 on the reference (a real forward: running stats move as in training)
        ref_up, ref_down = split_parameters(reference)
        with torch.no_grad():
            for n, p in ref_up.items():
                p.sub_(lr_u * meta[n])
        loss = F.cross_entropy(reference(train[0]), train[1])
        grads = torch.autograd.grad(loss, list(ref_down.values()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(ref_down.values(), grads):
                if g is not None:
                    p.sub_(lr_d * g)
    for n, p in up.items():
        torch.testing.assert_close(p.detach(), ref_up[n].detach(), rtol=0, atol=1e-14)
    for n, p in down.items():
        torch.testing.assert_close(p.detach(), ref_down[n].detach(), rtol=1e-12, atol=1e-14)
    for (n, b), (_, b_ref) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, b_ref, rtol=1e-12, atol=1e-14, msg=n)
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-12)
    assert set(out) == {"loss", "meta_loss", "train_loss_sim"} and all(math.isfinite(v) for v in out.values())
    assert training_inside is mode_name.endswith("train")


def manual_iteration(model, opt_u, opt_d, train, val, alpha, method, scope, clip):
    """One UDL iteration written out: meta-gradient as .grad, opt_u.step(), step-3 gradient, opt_d.step()."""
    up, down = split_parameters(model)
    meta = meta_gradient(model, train, val, alpha, method=method, scope=scope)
    for n, p in up.items():
        p.grad = meta[n].clone()
    if clip:
        nn.utils.clip_grad_norm_(list(up.values()), clip)
    opt_u.step()
    loss = F.cross_entropy(model(train[0]), train[1])
    grads = torch.autograd.grad(loss, list(down.values()), allow_unused=True)
    for p, g in zip(down.values(), grads):
        p.grad = None if g is None else g.contiguous()
    if clip:
        nn.utils.clip_grad_norm_([p for p in down.values() if p.grad is not None], clip)
    opt_d.step()


@settings(max_examples=expensive(20, 6))
@given(
    problems(),
    st.sampled_from(METHODS),
    st.sampled_from(("all", "dsts")),
    st.sampled_from(("sgd", "adamw")),
    st.sampled_from((0.0, 0.05)),
)
def test_udl_step_with_momentum_and_adamw_over_two_hard_iterations(problem, method, scope, kind, clip):
    model, train, val, seed = problem
    model.train()
    twin = copy.deepcopy(model)

    def optimizers(m):
        up, down = split_parameters(m)
        if kind == "sgd":
            return (
                torch.optim.SGD(up.values(), lr=0.05, momentum=0.9, weight_decay=1e-3),
                torch.optim.SGD(down.values(), lr=0.02, momentum=0.9, weight_decay=1e-3),
            )
        return torch.optim.AdamW(up.values(), lr=1e-2), torch.optim.AdamW(down.values(), lr=1e-3)

    step = UDLStep(model, *optimizers(model), 0.3, method=method, scope=scope, grad_clip=clip)
    opts = optimizers(twin)
    for i in range(2):
        torch.manual_seed(seed + i)
        step.step(train, val)
        torch.manual_seed(seed + i)
        manual_iteration(twin, *opts, train, val, 0.3, method, scope, clip)
    # the same iteration up to rounding: UDLStep runs the backbone once for steps 1 and 3
    for (n, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=n)
    assert model.training


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["all", "dsts"])
def test_hard_mode_steps_are_finite_and_move_the_decisions(method, scope):
    torch.manual_seed(1)
    model = Tiny(3, 4, 2, 3, 3).train()  # float32, as in training
    x = torch.randn(6, 3, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    xv, yv = torch.randn(6, 3, 3, 4, 4), torch.tensor([2, 1, 0, 2, 1, 0])
    up, down = split_parameters(model)
    start = {n: p.detach().clone() for n, p in up.items()}
    step = UDLStep(
        model,
        torch.optim.SGD(up.values(), lr=0.5, momentum=0.9),
        torch.optim.SGD(down.values(), lr=0.05, momentum=0.9),
        inner_lr=0.1,
        method=method,
        scope=scope,
    )
    for _ in range(3):
        out = step.step((x + 0.1 * torch.randn_like(x), y), (xv, yv))
        assert all(math.isfinite(v) for v in out.values())
        assert all(torch.isfinite(p.grad).all() for p in up.values())
    assert model.training
    moved = [n for n, p in up.items() if not torch.equal(p.detach(), start[n])]
    assert any(n.endswith("score_weight") for n in moved) and any(n.endswith("gate") for n in moved)


def test_compute_meta_reports_the_losses_it_saw():
    torch.manual_seed(0)
    model = Tiny(2, 3, 1, 2, 3).double().eval()
    train = (torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 1, 2]))
    val = (torch.randn(2, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([1, 0]))
    with dsts.relaxed(model):
        result = compute_meta(model, train, val, 0.5)
        sim = simulated(model, upstream_values(model), "all", 0.5, train)
        assert result.train_loss.item() == pytest.approx(
            F.cross_entropy(model(train[0]), train[1]).item(), rel=1e-12
        )
        assert result.val_loss.item() == pytest.approx(F.cross_entropy(sim(val[0]), val[1]).item(), rel=1e-12)


# -- bad input


def test_bad_arguments_are_one_line_errors():
    torch.manual_seed(0)
    model = Tiny(2, 3, 1, 2, 3)
    batch = (torch.randn(2, 2, 2, 3, 3), torch.tensor([0, 1]))
    cases = [
        (dict(method="second_order"), "method"),
        (dict(scope="backbone"), "scope"),
        (dict(inner_lr=-1.0), "inner_lr"),
        (dict(inner_lr=float("nan")), "inner_lr"),
        (dict(fd_eps=0.0), "fd_eps"),
    ]
    for kwargs, word in cases:
        args = dict(inner_lr=0.1) | kwargs
        with pytest.raises(ValueError, match=word) as info:
            meta_gradient(model, batch, batch, **args)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="val_batch"):
        meta_gradient(model, batch, batch[0], 0.1)
    with pytest.raises(ValueError, match="no upstream parameters"):
        meta_gradient(nn.Sequential(nn.Flatten(), nn.Linear(36, 2)), batch, batch, 0.1)
    up, down = split_parameters(model)
    with pytest.raises(ValueError, match="downstream_optimizer"):
        UDLStep(
            model, torch.optim.SGD(up.values(), lr=1), torch.optim.SGD(list(down.values())[1:], lr=1), 0.1
        )
    with pytest.raises(ValueError, match="upstream_optimizer"):
        UDLStep(model, torch.optim.SGD(model.parameters(), lr=1), torch.optim.SGD(down.values(), lr=1), 0.1)
    with pytest.raises(ValueError, match="grad_clip"):
        UDLStep(
            model, torch.optim.SGD(up.values(), lr=1), torch.optim.SGD(down.values(), lr=1), 0.1, grad_clip=-1
        )
