"""Running the model on substitute parameters leaves it as it was (``dsts/functional.py``): the
meta-gradient leaves the model, its ``.grad`` and the optimizer untouched, and the random
generators where two forwards leave them; and each piece of the machinery on its own.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dsts
from dsts.functional import (
    Generators,
    as_grad,
    call,
    chain,
    grads,
    jvp,
    recorded_attributes_kept,
    substituted_output,
    tangent,
    taped,
)
from dsts.layers import DSTSLayer
from dsts.udl import METHODS, meta_gradient, split_parameters
from tests.helpers import expensive
from tests.udl_models import MODES, Tiny, difference, mode, norm, one_thread, problems


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


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


# -- the pieces


def test_generators_put_back_every_generator_the_draws_come_from():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].generator = torch.Generator().manual_seed(3)
    model[0].generator = model[1].generator  # the same one twice is saved once
    rng = Generators(model)
    assert len(rng.own) == 1
    state = rng.get()
    want = torch.rand(2), torch.rand(2, generator=model[1].generator)
    torch.rand(5), torch.rand(5, generator=model[1].generator)
    rng.set(state)
    got = torch.rand(2), torch.rand(2, generator=model[1].generator)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_substituted_output_replaces_the_computation_and_puts_forward_back():
    module = nn.Linear(2, 2)
    x, out = torch.randn(3, 2), torch.zeros(3, 2)
    with substituted_output(module, out):
        assert module(x) is out
    assert "forward" not in vars(module) and not torch.equal(module(x), out)
    own = module.forward
    module.forward = own  # an instance attribute of its own, kept
    with substituted_output(module, out):
        assert module(x) is out
    assert vars(module)["forward"] is own
    with substituted_output(module, None):  # None: no change
        assert module(x) is not out


def test_recorded_attributes_come_back_and_new_ones_go():
    model = dsts.DSTS(2, 1, 2)
    x = torch.randn(2, 2, 2, 3, 3)
    model(x)
    kept = model.last_selection
    assert isinstance(kept, torch.Tensor)
    with recorded_attributes_kept(model):
        model(x * 2)
        model.layers[0].scratch = torch.ones(1)
        assert model.last_selection is not kept
    assert model.last_selection is kept and not hasattr(model.layers[0], "scratch")


def test_call_uses_the_substitutes_and_leaves_the_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    weight = torch.randn(2, 2, requires_grad=True)
    x = torch.randn(4, 2)
    before = {n: b.clone() for n, b in model.named_buffers()}
    out = call(model, {"0.weight": weight}, x)
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
    grad = torch.autograd.grad(out[:, 0].sum() + out[:, 1].pow(2).sum(), weight)[0]
    assert grad.abs().sum() > 0 and model[0].weight.grad is None
    with torch.no_grad():
        model[0].weight.copy_(weight)
    torch.testing.assert_close(out, model(x))


def test_jvp_is_the_directional_derivative():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    tangent = {"0.weight": torch.randn(4, 3, dtype=torch.float64)}
    h = 1e-6
    plus = call(model, {"0.weight": model[0].weight.detach() + h * tangent["0.weight"]}, x)
    minus = call(model, {"0.weight": model[0].weight.detach() - h * tangent["0.weight"]}, x)
    torch.testing.assert_close(jvp(model, tangent, x), (plus - minus) / (2 * h), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(jvp(model, {}, x), torch.zeros(5, 2, dtype=torch.float64))


@st.composite
def chains(draw):
    """A random float64 chain of 3D convs, BatchNorm, ReLU and Identity (nested Sequentials), in
    training or evaluation mode, its input, and tangents for a random subset of its parameters."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    channels, blocks = 2, []
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 3))
        kernel, bias = draw(st.sampled_from((1, 3))), draw(st.booleans())
        block = [nn.Conv3d(channels, out, kernel, padding="same", bias=bias)]
        if draw(st.booleans()):
            block.append(
                nn.BatchNorm3d(out, affine=draw(st.booleans()), track_running_stats=draw(st.booleans()))
            )
        block.append(draw(st.sampled_from((nn.ReLU(inplace=True), nn.ReLU(), nn.Identity()))))
        blocks += [nn.Sequential(*block)] if draw(st.booleans()) else block
        channels = out
    module = nn.Sequential(*blocks).double().train(draw(st.booleans()))

    def draw_like(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=torch.float64)

    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point():
                t.copy_(draw_like(t).abs() + 0.5 if name.endswith("running_var") else draw_like(t))
    params = dict(module.named_parameters())
    chosen = draw(st.lists(st.sampled_from(sorted(params)), unique=True))
    return module, draw_like(torch.empty(3, 2, 2, 3, 3)), {n: draw_like(params[n]) for n in chosen}


@given(chains())
def test_the_taped_tangent_is_forward_mode_without_the_forward(case):
    module, x, tangents = case
    assert chain(module) is not None
    with taped(module) as tape:
        out = module(x)
    assert tape is not None and len(tape) == len(chain(module))
    runs = []
    module.register_forward_pre_hook(lambda *_: runs.append(1))
    got = tangent(module, tangents, x, tape)
    assert not runs, "the taped tangent ran the forward again"
    want = jvp(module, tangents, x)
    assert got.shape == out.shape
    # atol: a BatchNorm after a one-channel conv cancels the tangent to rounding noise
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-8)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 1)

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize(
    "module",
    [
        Residual(),  # a forward of its own
        nn.Sequential(nn.Conv3d(2, 2, 1), nn.Tanh()),  # a link without a tangent rule
        nn.Sequential(nn.Conv3d(2, 2, 3, padding=1, padding_mode="reflect")),
    ],
)
def test_a_module_that_is_not_a_chain_has_no_tape_and_takes_forward_mode(module):
    torch.manual_seed(0)
    module = module.double()
    x = torch.randn(3, 2, 2, 3, 3, dtype=torch.float64)
    assert chain(module) is None
    with taped(module) as tape:
        module(x)
    assert tape is None
    tangents = {n: torch.randn_like(p) for n, p in module.named_parameters()}
    torch.testing.assert_close(tangent(module, tangents, x, tape), jvp(module, tangents, x))


def test_a_tape_whose_tensors_changed_since_is_not_used():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv3d(2, 2, 1), nn.ReLU()).double()
    x = torch.randn(3, 2, 2, 3, 3, dtype=torch.float64)
    with taped(module) as tape:
        module(x)
    x.mul_(-2)
    tangents = {"0.weight": torch.randn(2, 2, 1, 1, 1, dtype=torch.float64)}
    now = jvp(module, tangents, x)
    torch.testing.assert_close(tangent(module, tangents, x, tape), now)
    assert not torch.allclose(now, jvp(module, tangents, x / -2))


def test_grads_are_exact_zeros_where_the_loss_does_not_reach():
    a, b = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    got = grads((a * 2).sum(), {"a": a, "b": b})
    assert torch.equal(got["a"], torch.full((3,), 2.0)) and torch.equal(got["b"], torch.zeros(2))


def test_as_grad_copies_a_broadcast_view_into_the_parameters_layout():
    param = nn.Parameter(torch.randn(2, 3))
    view = torch.ones(2, 1).expand(2, 3)
    g = as_grad(view, param)
    assert g.stride() == param.stride() and torch.equal(g, view)
    plain = torch.randn(2, 3)
    assert as_grad(plain, param) is not plain and torch.equal(as_grad(plain, param), plain)
