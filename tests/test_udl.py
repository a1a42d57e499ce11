"""The UDL iteration (``dsts/udl.py``): the split of the parameters, whole UDLStep iterations against
manual ones, the shared backbone forward, the reduction hook, and the errors on bad input.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dsts
from dsts.layers import DSTSLayer
from dsts.udl import METHODS, MetaGradient, UDLStep, meta_gradient, split_parameters
from tests.helpers import expensive
from tests.udl_models import Counter, Tiny, mode, one_thread, problems, simulated, upstream_values


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


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


# -- the shared backbone forward


@pytest.mark.parametrize(
    ("method", "scope", "computed"),
    [("autograd", "all", 2), ("finite_difference", "all", 4), ("first_order", "all", 2)]
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
        torch.testing.assert_close(p.detach(), ref_up[n].detach(), rtol=1e-12, atol=1e-14)
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


def test_meta_gradient_object_reports_the_losses_it_saw():
    torch.manual_seed(0)
    model = Tiny(2, 3, 1, 2, 3).double().eval()
    train = (torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 1, 2]))
    val = (torch.randn(2, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([1, 0]))
    with dsts.relaxed(model):
        result = MetaGradient(0.5)(model, train, val)
        sim = simulated(model, upstream_values(model), "all", 0.5, train)
        assert result.train_loss.item() == pytest.approx(
            F.cross_entropy(model(train[0]), train[1]).item(), rel=1e-12
        )
        assert result.val_loss.item() == pytest.approx(F.cross_entropy(sim(val[0]), val[1]).item(), rel=1e-12)
    assert result.grads.keys() == split_parameters(model)[0].keys()


# -- the reduction hook


class Recording:
    """A reduction hook for one process that changes nothing and records its calls: the names of
    each, and which of them are ``None``."""

    def __init__(self):
        self.calls: list[tuple[list[str], list[str]]] = []

    def __call__(self, values, like=None):
        self.calls.append((list(values), [n for n, v in values.items() if v is None]))
        if any(v is None for v in values.values()):
            assert like is not None and {n for n, v in values.items() if v is None} <= set(like)
        return dict(values)


def same_bits(a, b) -> bool:
    """``a`` and ``b`` (tensors, or dicts, lists and tuples of them) hold the same bits."""
    if isinstance(a, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    return a == b


def iterate(model, train, val, method, scope, reduce, seed=0):
    """Two UDLStep iterations with AdamW from ``seed``: the state dict after them and the losses."""
    model = copy.deepcopy(model)
    up, down = split_parameters(model)
    opts = torch.optim.AdamW(up.values(), lr=1e-2), torch.optim.AdamW(down.values(), lr=1e-2)
    step = UDLStep(model, *opts, 0.3, method=method, scope=scope, grad_clip=0.05, reduce=reduce)
    torch.manual_seed(seed)
    losses = [step.step(train, val) for _ in range(2)]
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return model.state_dict(), grads, losses


@settings(max_examples=expensive(20, 4))
@given(problems(routings=("sparse",)), st.sampled_from(METHODS), st.sampled_from(("all", "dsts")))
def test_the_hook_sees_the_same_calls_whatever_the_data(problem, method, scope):
    """Processes of a data-parallel run hold different data but must make the same collective calls:
    which names the hook gets, call after call, depends on the model, the method and the scope only
    (sparse routing in hard mode: which neurons a batch reaches does depend on the data, and shows
    as ``None`` values, not as other names). An identity hook changes nothing, bit for bit."""
    model, train, val, seed = problem
    model.train()
    other = (train[0].flip(0) * 2 + 1, train[1].flip(0))
    calls = []
    for batch in (train, other):
        hook = Recording()
        got = iterate(model, batch, val, method, scope, hook, seed)
        assert same_bits(got, iterate(model, batch, val, method, scope, None, seed))
        calls.append([names for names, _ in hook.calls])
    assert list(split_parameters(model)[1]) in calls[0]  # step 3's gradients
    assert calls[0] == calls[1]


def test_a_parameter_that_the_loss_does_not_reach_gets_no_gradient():
    """Step 3 leaves ``.grad = None`` on a downstream parameter that the loss does not reach, so
    AdamW skips it (no weight decay); every upstream parameter gets a meta-gradient tensor."""
    torch.manual_seed(0)
    model = Tiny(2, 3, 1, 2, 3).double().train()
    model.unused = nn.Linear(2, 2).double()
    batch = (torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 1, 2]))
    before = model.unused.weight.detach().clone()
    up, down = split_parameters(model)
    step = UDLStep(
        model,
        torch.optim.AdamW(up.values(), lr=0.1, weight_decay=0.5),
        torch.optim.AdamW(down.values(), lr=0.1, weight_decay=0.5),
        0.3,
    )
    step.step(batch, batch)
    assert model.unused.weight.grad is None and torch.equal(model.unused.weight, before)
    assert all(p.grad is not None for p in up.values())


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
