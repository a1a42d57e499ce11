"""The meta-gradient's three methods (``dsts/metagrad.py``): autograd against float64 finite
differences of the meta-objective, the other two methods against it and against their own
formulas, and the scopes with the backbone's shortcuts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from dsts.udl import METHODS, UDLStep, meta_gradient, split_parameters
from tests.helpers import expensive
from tests.udl_models import (
    MODES,
    Counter,
    Stemmed,
    Tiny,
    difference,
    meta_objective,
    mode,
    norm,
    one_thread,
    problems,
    simulated,
    upstream_values,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


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
        model.backbone[1].bias.fill_(2.0)  # positive features: neuron 0's kernel points their way
    x = torch.rand(3, 2, 2, 2, 2, dtype=torch.float64)
    train = (x, torch.tensor([0, 1, 0]))
    torch.manual_seed(0)
    exact = meta_gradient(model, train, train, 1.0, method="autograd")
    torch.manual_seed(0)
    approx = meta_gradient(model, train, train, 1.0, method="finite_difference", fd_eps=1e-6)
    torch.manual_seed(0)
    model(x)  # step 1's draws: every sample selected neuron 0, yet neuron 1's soft weight is not small
    assert bool((model.dsts.last_selection == 0).all())
    soft = model.dsts.layers[0].selection_probs(model.backbone(x)).detach()
    assert float(soft[:, 1].min()) > 0.01
    assert bool((approx["dsts.layers.0.gate"][1] == 0).all())
    # small here, but far from float64 rounding: the finite difference is exactly zero, autograd is not
    assert float(exact["dsts.layers.0.gate"][1].abs().max()) > 1e-8


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


class Wrapped(nn.Module):
    """A backbone behind a forward of its own: not a chain (``dsts.functional.chain``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@settings(max_examples=expensive(20, 6))
@given(problems(), st.sampled_from(MODES))
def test_the_taped_tangent_and_forward_mode_give_one_meta_gradient(problem, mode_name):
    """Scope "all" with autograd takes the backbone's tangent from step 1's activations when the
    backbone is a chain of convs, BatchNorm and ReLU, by a forward-mode pass otherwise: same draws,
    same meta-gradient, and the forward-mode pass is the one extra backbone forward."""
    model, train, val, seed = problem
    chained = model.backbone
    calls: list[int] = []
    handle = chained[0].register_forward_hook(lambda *_: calls.append(1))
    got, computed = {}, {}
    with mode(model, mode_name):
        for name, backbone in (("taped", chained), ("forward mode", Wrapped(chained))):
            model.backbone = backbone
            before = len(calls)
            torch.manual_seed(seed)
            got[name] = meta_gradient(model, train, val, 0.4, method="autograd", scope="all")
            computed[name] = len(calls) - before
    model.backbone = chained
    handle.remove()
    assert computed == {"taped": 2, "forward mode": 3}
    for n, g in got["taped"].items():
        torch.testing.assert_close(got["forward mode"][n], g, rtol=1e-9, atol=1e-12)


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


@pytest.mark.parametrize(
    ("method", "scope", "computed", "recorded"),
    [
        # scope "all": step 1 and v need grad_d (through the backbone); grad_u-only passes do not;
        # autograd's tangent J v_b comes from step 1's activations (a chain backbone: no third pass)
        ("autograd", "all", 2, 2),
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
