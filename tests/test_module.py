"""The DSTS module: skip connection, recorded decisions, relaxed mode (gradcheck), generators."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsts.layers import DSTSLayer
from dsts.module import DSTS, p_hard_schedule, relaxed
from tests.helpers import expensive


def make_dsts(
    spec: str = "st", routing: str = "dense", seed: int = 0, c: int = 3, n: int = 3, layers: int = 2
) -> DSTS:
    """A float64 DSTS with every parameter and running statistic randomised."""
    torch.manual_seed(seed)
    model = DSTS(c, layers, n, specialization=spec, routing=routing, tau=0.8).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.4)
            if name.split(".")[-1] in ("bn_spatial_weight", "bn_temporal_weight", "bn_weight"):
                p.add_(1.0)
        for name, b in model.named_buffers():
            if name.endswith("_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
            elif name.endswith("_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64) * 0.2)
    return model


@pytest.mark.parametrize("spec", ["st", "3d"])
def test_output_is_the_skip_connection_over_the_layers(spec):
    model = make_dsts(spec).eval()
    x = torch.randn(4, 3, 2, 3, 3, dtype=torch.float64)
    y = model.layers[0](x)
    norm = model.norms[0]  # between the layers: a BatchNorm (evaluation: its running statistics)
    y = (y - norm.running_mean.view(1, -1, 1, 1, 1)) / torch.sqrt(
        norm.running_var.view(1, -1, 1, 1, 1) + 1e-5
    )
    y = y * norm.weight.view(1, -1, 1, 1, 1) + norm.bias.view(1, -1, 1, 1, 1)
    y = model.layers[1](y)
    torch.testing.assert_close(model(x), x + y, rtol=1e-12, atol=1e-12)
    assert isinstance(model.layers, torch.nn.ModuleList) and len(model.layers) == 2


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("spec", ["st", "3d"])
def test_last_selection_and_last_gates_record_the_decisions(spec, training):
    model = make_dsts(spec).train(training)
    x = torch.randn(5, 3, 2, 3, 3, dtype=torch.float64)
    model(x)
    sel = model.last_selection
    assert sel.shape == (5, 2) and sel.dtype == torch.long
    assert torch.all((sel >= 0) & (sel < 3))
    for j, layer in enumerate(model.layers):
        assert torch.equal(sel[:, j], layer.last_selection)
    if spec == "3d":
        assert model.last_gates is None
        return
    gates = model.last_gates
    assert gates.shape == (5, 2, 3) and not gates.requires_grad
    assert torch.all((gates >= 0) & (gates <= 1))
    if not training:
        for j, layer in enumerate(model.layers):
            assert torch.equal(gates[:, j], (layer.gate[sel[:, j]] > 0).double())


def test_static_variant_with_one_neuron_always_selects_it():
    model = make_dsts(n=1)
    x = torch.randn(4, 3, 2, 2, 2, dtype=torch.float64)
    for training in (True, False):
        model.train(training)
        model(x)
        assert torch.all(model.last_selection == 0)
        with relaxed(model):
            model(x)
        assert torch.all(model.last_selection == 0)


def test_the_module_generator_drives_every_layer_and_spares_the_global_rng():
    model = make_dsts().train()
    x = torch.randn(6, 3, 2, 2, 2, dtype=torch.float64)
    state = torch.get_rng_state()
    model.generator = torch.Generator().manual_seed(5)
    a = model(x)
    model.generator = torch.Generator().manual_seed(5)
    b = model(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    model.generator = None
    torch.manual_seed(5)
    c = model(x)
    assert not torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    assert torch.equal(c, model(x))


def test_relaxed_sets_and_restores_the_flag_even_on_error():
    outer = torch.nn.Sequential(make_dsts(), torch.nn.Identity())
    layers = [m for m in outer.modules() if isinstance(m, DSTSLayer)]
    layers[0].relaxed = True  # a previous value that must come back as it was
    with relaxed(outer):
        assert all(layer.relaxed for layer in layers)
    assert [layer.relaxed for layer in layers] == [True, False]
    with pytest.raises(RuntimeError, match="boom"), relaxed(outer):
        raise RuntimeError("boom")
    assert [layer.relaxed for layer in layers] == [True, False]


def test_p_hard_schedule_and_setter():
    assert p_hard_schedule(0, 0.5, 0) == 0.5
    assert p_hard_schedule(0, 0.5, 4) == 0.0
    assert p_hard_schedule(2, 0.5, 4) == 0.25
    assert p_hard_schedule(9, 0.5, 4) == 0.5
    model = make_dsts()
    model.set_p_hard(0.3)
    assert all(layer.p_hard == 0.3 for layer in model.layers)
    model.set_routing("sparse")
    assert all(layer.routing == "sparse" for layer in model.layers)
    with pytest.raises(ValueError, match="routing"):
        model.set_routing("fast")  # type: ignore[arg-type]


def _gradcheck(model: DSTS, training: bool, fast: bool = True, second_order: bool = False) -> None:
    """gradcheck in relaxed mode with respect to the input and every parameter (upstream and
    downstream), through ``functional_call`` with fresh buffer copies per call. ``fast``: gradcheck's
    fast mode (random projections of the Jacobian, one per input tensor) instead of every entry."""
    model.train(training)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.randn(
        3, model.channels, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )

    def run(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(names, ps, strict=True)), **{n: b.clone() for n, b in buffers.items()}}
        with relaxed(model):
            return torch.func.functional_call(model, state, (x,))

    inputs = (x.requires_grad_(), *params)
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast)
    if second_order:
        assert torch.autograd.gradgradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@settings(max_examples=expensive(20, 4))
@given(st.sampled_from(["st", "3d"]), st.booleans(), st.integers(0, 10_000))
def test_relaxed_mode_passes_gradcheck(spec, training, seed):
    _gradcheck(make_dsts(spec, seed=seed, c=2, n=2), training)


@pytest.mark.parametrize("training", [False, True])
def test_relaxed_mode_passes_full_gradcheck_on_every_jacobian_entry(training):
    _gradcheck(make_dsts("st", seed=7, c=2, n=2, layers=1), training, fast=False)


@pytest.mark.parametrize("training", [False, True])
def test_relaxed_mode_passes_gradgradcheck(training):
    _gradcheck(make_dsts("st", seed=3, c=2, n=2, layers=1), training, second_order=True)


def test_relaxed_mode_is_deterministic_and_leaves_running_stats_alone():
    model = make_dsts().train()
    x = torch.randn(4, 3, 2, 2, 2, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    with relaxed(model):
        a, b = model(x), model(x)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
