"""DSTSLayer against independent oracles: the literal conv-then-sum spike, and a per-neuron
reference built from ``F.conv3d`` and ``F.batch_norm`` on each neuron's routed samples."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dsts.estimators import gumbel_noise, improved_semhash, semhash_noise, uniform_noise
from dsts.layers import DSTSLayer
from dsts.module import relaxed
from tests.helpers import expensive

ST_NAMES = {
    "score_weight": ("N", "C", "C"),
    "gate": ("N", "C"),
    "spatial_weight": ("N", "C", "C", 1, 3, 3),
    "temporal_weight": ("N", "C", "C", 3, 1, 1),
    "bn_spatial_weight": ("N", "C"),
    "bn_spatial_bias": ("N", "C"),
    "bn_temporal_weight": ("N", "C"),
    "bn_temporal_bias": ("N", "C"),
    "fusion_weight": ("N", "C", "C"),
    "fusion_bias": ("N", "C"),
}
ST_BUFFERS = {
    "bn_spatial_mean",
    "bn_spatial_var",
    "bn_temporal_mean",
    "bn_temporal_var",
    "bn_num_batches_tracked",
}
THREE_D_NAMES = {
    "score_weight": ("N", "C", "C"),
    "conv3d_weight": ("N", "C", "C", 3, 3, 3),
    "bn_weight": ("N", "C"),
    "bn_bias": ("N", "C"),
    "fusion_weight": ("N", "C", "C"),
    "fusion_bias": ("N", "C"),
}
THREE_D_BUFFERS = {"bn_mean", "bn_var", "bn_num_batches_tracked"}
DOWNSTREAM_ST = [n for n in ST_NAMES if n not in ("score_weight", "gate")]
DOWNSTREAM_3D = [n for n in THREE_D_NAMES if n != "score_weight"]


def make_layer(
    c: int, n: int, spec: str = "st", routing: str = "dense", seed: int = 0, dtype=torch.float64, **kw
) -> DSTSLayer:
    """A layer with every parameter and running statistic randomised (not the trivial init), and
    spikes large enough that different samples pick different neurons."""
    torch.manual_seed(seed)
    layer = DSTSLayer(c, n, specialization=spec, routing=routing, **kw).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen, dtype=dtype) * (0.3 if name == "score_weight" else 0.5)
            )
            if name.endswith("_weight") and name.startswith("bn"):
                p.add_(1.0)
        for name, b in layer.named_buffers():
            if name.endswith("_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=dtype) * 0.3)
            elif name.endswith("_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=dtype) + 0.5)
    return layer


def literal_spikes(layer: DSTSLayer, x: torch.Tensor) -> torch.Tensor:
    c = layer.channels
    return torch.stack(
        [
            F.conv3d(x, layer.score_weight[i].view(c, c, 1, 1, 1)).sum(dim=(1, 2, 3, 4))
            for i in range(layer.num_neurons)
        ],
        dim=1,
    )


def literal_logits(layer: DSTSLayer, x: torch.Tensor) -> torch.Tensor:
    """The selection logits from their definition (docs/method.md, section 2.2): the literal spikes
    times ``sqrt(C)`` over the norm of the position sum, the RMS of the summed kernels' norms and tau."""
    pooled = x.sum(dim=(2, 3, 4))
    kernels = layer.score_weight.sum(dim=1)
    rms = torch.sqrt(torch.mean(torch.stack([torch.dot(k, k) for k in kernels])))
    nu = torch.sqrt(torch.stack([torch.dot(p, p) + 1e-6 * (xi * xi).sum() for p, xi in zip(pooled, x)]))
    return literal_spikes(layer, x) * layer.channels**0.5 / (nu.unsqueeze(1) * rms * layer.tau)


def pre_norm(
    layer: DSTSLayer, xi: torch.Tensor, gates_i: torch.Tensor | None, i: int
) -> dict[str, torch.Tensor]:
    """Neuron ``i``'s BatchNorm inputs on samples ``xi`` (gates ``(B, C)``), by ``F.conv3d``, per
    BatchNorm name."""
    if layer.specialization == "3d":
        return {"bn": F.conv3d(xi, layer.conv3d_weight[i], padding=1)}
    b = gates_i.view(*gates_i.shape, 1, 1, 1)
    return {
        "bn_spatial": F.conv3d(xi * (1 - b), layer.spatial_weight[i], padding=(0, 1, 1)),
        "bn_temporal": F.conv3d(xi * b, layer.temporal_weight[i], padding=(1, 0, 0)),
    }


def reference(
    layer: DSTSLayer,
    x: torch.Tensor,
    weights: torch.Tensor,
    gates: torch.Tensor | None,
    per_neuron: bool,
    batch_stats: bool,
    buffers: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The literal method with library ops. ``per_neuron``: neuron ``i`` processes only the samples
    with ``weights[:, i] != 0`` (and ``gates (B, N, C)`` are per sample); otherwise every neuron
    processes every sample (relaxed mode). ``batch_stats``: ``F.batch_norm`` in training mode, which
    updates the running statistics in ``buffers`` (clones) in place; else the running statistics."""
    c, n = layer.channels, layer.num_neurons
    out = torch.zeros_like(x)
    for i in range(n):
        rows = (weights[:, i] != 0).nonzero().flatten() if per_neuron else torch.arange(x.shape[0])
        if len(rows) == 0:
            continue
        xi = x[rows]

        def bn(z: torch.Tensor, name: str, i: int = i) -> torch.Tensor:
            running = (buffers[f"{name}_mean"][i], buffers[f"{name}_var"][i]) if per_neuron else (None, None)
            if not batch_stats:
                running = (buffers[f"{name}_mean"][i], buffers[f"{name}_var"][i])
            return F.batch_norm(
                z,
                *running,
                getattr(layer, f"{name}_weight")[i],
                getattr(layer, f"{name}_bias")[i],
                training=batch_stats,
                momentum=0.1,
                eps=1e-5,
            )

        if layer.specialization == "st":
            assert gates is not None
        pre = pre_norm(layer, xi, None if gates is None else gates[rows, i], i)
        z = sum(F.relu(bn(z_k, name)) for name, z_k in pre.items())
        f = F.conv3d(z, layer.fusion_weight[i].view(c, c, 1, 1, 1), layer.fusion_bias[i])
        out = out.index_add(0, rows, weights[rows, i].view(-1, 1, 1, 1, 1) * f)
    return out


def replay_draws(layer: DSTSLayer, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The contract of DESIGN 1.6: Gumbel (B, N), then Semhash noise (B, N, C), then mask (B, N, C)."""
    gen = torch.Generator().manual_seed(seed)
    n, c = layer.num_neurons, layer.channels
    gumbels = gumbel_noise((batch, n), torch.float64, generator=gen)
    if layer.specialization != "st":
        return gumbels, None
    noise = semhash_noise((batch, n, c), layer.gate_noise_std, layer.gate_noise, torch.float64, generator=gen)
    mask = uniform_noise((batch, n, c), torch.float64, "cpu", gen) < layer.p_hard
    logits = layer.gate.detach().unsqueeze(0).expand(batch, n, c)
    return gumbels, improved_semhash(logits, True, noise_sample=noise, hard_mask=mask)


dims = st.fixed_dictionaries(
    {
        "b": st.integers(1, 5),
        "c": st.integers(1, 4),
        "n": st.integers(1, 5),
        "t": st.integers(1, 3),
        "h": st.integers(1, 3),
        "w": st.integers(1, 3),
        "spec": st.sampled_from(["st", "3d"]),
        "seed": st.integers(0, 2**20),
    }
)


def inputs(d: dict, requires_grad: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(d["seed"] + 1)
    x = torch.randn(d["b"], d["c"], d["t"], d["h"], d["w"], generator=gen, dtype=torch.float64)
    return x.requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("spec", ["st", "3d"])
def test_parameter_and_buffer_names_and_shapes_follow_the_design(spec):
    layer = DSTSLayer(5, 3, specialization=spec)
    names = ST_NAMES if spec == "st" else THREE_D_NAMES
    size = {"N": 3, "C": 5}
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        n: tuple(size.get(s, s) for s in shape) for n, shape in names.items()
    }
    buffers = dict(layer.named_buffers())
    assert set(buffers) == (ST_BUFFERS if spec == "st" else THREE_D_BUFFERS)
    for name, buf in buffers.items():
        assert tuple(buf.shape) == ((3,) if name == "bn_num_batches_tracked" else (3, 5))


def test_constructor_rejects_impossible_values():
    for kwargs, word in [
        ({"specialization": "2d"}, "specialization"),
        ({"routing": "fast"}, "routing"),
        ({"tau": 0.0}, "tau"),
        ({"p_hard": -0.1}, "p_hard"),
        ({"gate_noise": "uniform"}, "gate_noise"),
        ({"gate_noise_std": -1.0}, "gate_noise_std"),
    ]:
        with pytest.raises(ValueError, match=word):
            DSTSLayer(4, 2, **kwargs)
    with pytest.raises(ValueError, match="expected"):
        DSTSLayer(4, 2)(torch.randn(2, 3, 1, 1, 1))


# ------------------------------------------------------------------------------------ spike


@given(dims)
def test_spikes_equal_the_literal_conv_then_sum(d):
    layer = make_layer(d["c"], d["n"], d["spec"], seed=d["seed"])
    x = inputs(d)
    torch.testing.assert_close(layer.spikes(x), literal_spikes(layer, x), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------- oracle agreement


@settings(max_examples=expensive(40, 10))
@given(dims, st.sampled_from(["dense", "sparse"]), st.booleans())
def test_hard_forward_gradients_and_running_stats_match_the_per_neuron_reference(d, routing, training):
    """Each neuron processes only its routed samples, with BatchNorm statistics from them (training)
    or its running statistics (evaluation); output ``h_a f_a``; the running statistics of neurons
    with samples move as ``F.batch_norm``'s, the others stay. Gradients of every downstream
    parameter match the reference's."""
    if training and d["t"] * d["h"] * d["w"] == 1:
        d = {**d, "w": 2}  # F.batch_norm (the oracle) refuses one value per channel
    layer = make_layer(d["c"], d["n"], d["spec"], routing, seed=d["seed"])
    layer.train(training)
    x = inputs(d, requires_grad=True)
    before = {k: v.clone() for k, v in layer.named_buffers()}
    torch.manual_seed(d["seed"] + 5)
    out = layer(x)
    selection = layer.last_selection
    hard = F.one_hot(selection, d["n"]).double()
    spikes = layer.spikes(x.detach())
    if not training:
        assert torch.equal(selection, spikes.argmax(-1))
    gates = None
    if d["spec"] == "st":
        if training:
            torch.manual_seed(d["seed"] + 5)
            gumbel_noise((d["b"], d["n"]), torch.float64)  # the contract's first draw
            gates = improved_semhash(
                layer.gate.expand(d["b"], d["n"], d["c"]), True, layer.gate_noise_std, layer.p_hard
            )
        else:
            gates = (layer.gate > 0).double().expand(d["b"], d["n"], d["c"])
        assert torch.equal(layer.last_gates, gates.detach()[torch.arange(d["b"]), selection])
    buffers = {k: v.clone() for k, v in before.items()}
    ref = reference(layer, x, hard, gates, per_neuron=True, batch_stats=training, buffers=buffers)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    for name, buf in layer.named_buffers():
        if name != "bn_num_batches_tracked":
            torch.testing.assert_close(buf, buffers[name], rtol=1e-9, atol=1e-12)
    got = torch.bincount(selection, minlength=d["n"]) * int(training)
    assert torch.equal(layer.bn_num_batches_tracked, got.clamp(max=1))
    probe = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(d["seed"] + 2), dtype=torch.float64
    )
    names = DOWNSTREAM_ST if d["spec"] == "st" else DOWNSTREAM_3D
    params = [getattr(layer, n) for n in names]
    grads = torch.autograd.grad((out * probe).sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad((ref * probe).sum(), params, allow_unused=True)
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        g = torch.zeros_like(getattr(layer, name)) if g is None else g
        r = torch.zeros_like(g) if r is None else r
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=name)


@settings(max_examples=expensive(40, 10))
@given(dims, st.booleans())
def test_relaxed_mode_is_the_soft_dense_reference(d, training):
    """Relaxed: ``sum_i softmax(logits)_i f_i(x)`` with saturating-sigmoid gates without noise;
    BatchNorm on the whole batch without touching the running statistics (training) or with them
    (evaluation); no random draw."""
    if training and d["b"] * d["t"] * d["h"] * d["w"] == 1:
        d = {**d, "w": 2}
    layer = make_layer(d["c"], d["n"], d["spec"], "sparse", seed=d["seed"], tau=0.7)
    layer.train(training)
    x = inputs(d)
    before = {k: v.clone() for k, v in layer.named_buffers()}
    state = torch.get_rng_state()
    with relaxed(layer):
        out = layer(x)
    assert torch.equal(torch.get_rng_state(), state)
    for name, buf in layer.named_buffers():
        assert torch.equal(buf, before[name]), name
    weights = torch.softmax(literal_logits(layer, x), -1)
    gates = None
    if d["spec"] == "st":
        soft = torch.clamp(1.2 * torch.sigmoid(layer.gate) - 0.1, 0, 1)
        gates = soft.unsqueeze(0).expand(d["b"], -1, -1)
    ref = reference(layer, x, weights, gates, per_neuron=False, batch_stats=training, buffers=before)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


# -------------------------------------------------------------------- dense against sparse


def _run(layer: DSTSLayer, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return layer(x)


@settings(max_examples=expensive(40, 10))
@given(dims)
def test_training_dense_and_sparse_agree_under_the_same_seed(d):
    """Same forward, same running statistics, same gradients for every downstream parameter and gate
    (only the selected neurons get any), whatever neurons got no sample."""
    dense = make_layer(d["c"], d["n"], d["spec"], "dense", seed=d["seed"]).train()
    sparse = copy.deepcopy(dense)
    sparse.routing = "sparse"
    x_d, x_s = inputs(d, True), inputs(d, True)
    y_d, y_s = _run(dense, x_d, d["seed"]), _run(sparse, x_s, d["seed"])
    assert torch.equal(dense.last_selection, sparse.last_selection)
    torch.testing.assert_close(y_d, y_s, rtol=1e-10, atol=1e-12)
    for (name, a), (_, b) in zip(dense.named_buffers(), sparse.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=name)
    probe = torch.randn(y_d.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (y_d * probe).sum().backward()
    (y_s * probe).sum().backward()
    for (name, a), (_, b) in zip(dense.named_parameters(), sparse.named_parameters(), strict=True):
        if name == "score_weight":
            continue  # the two estimators differ here by design
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11, msg=name)
        unselected = torch.ones(d["n"], dtype=torch.bool)
        unselected[dense.last_selection] = False
        assert torch.all(a.grad[unselected] == 0), name


@settings(max_examples=expensive(40, 10))
@given(dims, st.floats(0.05, 50.0), st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_the_selection_logits_are_dimensionless_spikes_over_tau(d, tau, feature_scale, kernel_scale):
    """The logits are their definition (the literal spikes over a scale common to a sample's
    neurons, over tau); scaling the features or every kernel changes nothing; the temperature
    divides them; their softmax is selection_probs and their argmax the spikes' argmax, the neuron
    evaluation selects."""
    layer = make_layer(d["c"], d["n"], d["spec"], "dense", seed=d["seed"], tau=tau)
    x = inputs(d)
    logits = layer.selection_logits(x)
    torch.testing.assert_close(logits, literal_logits(layer, x), rtol=1e-9, atol=1e-9)
    scaled = copy.deepcopy(layer)
    with torch.no_grad():
        scaled.score_weight.mul_(kernel_scale)
    torch.testing.assert_close(scaled.selection_logits(x * feature_scale), logits, rtol=1e-9, atol=1e-9)
    scaled.tau = 1.0
    torch.testing.assert_close(scaled.selection_logits(x) / tau, logits, rtol=1e-9, atol=1e-9)
    probs = layer.selection_probs(x)
    torch.testing.assert_close(probs, torch.softmax(literal_logits(layer, x), -1), rtol=1e-9, atol=1e-12)
    layer.eval()(x)
    spikes = literal_spikes(layer, x)
    assert torch.equal(layer.last_selection, probs.argmax(-1))
    clear = (spikes.topk(min(2, d["n"]), -1).values.diff(dim=-1).abs() > 1e-9).all(-1) if d["n"] > 1 else True
    assert torch.equal(layer.last_selection[clear], spikes.argmax(-1)[clear])


def test_the_hard_choice_samples_selection_probs():
    """Over many independent Gumbel draws, how often each neuron is chosen matches selection_probs
    (a chi-square test at a fixed seed; a wrong temperature or a sign error is far off)."""
    layer = make_layer(4, 4, "3d", "dense", seed=2, tau=1.0).train()
    x = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    probs = layer.selection_probs(x)[0]
    draws = 4000
    gen = torch.Generator().manual_seed(11)
    counts = torch.zeros(4, dtype=torch.float64)
    for _ in range(draws // 100):
        layer(x.expand(100, -1, -1, -1, -1), generator=gen)
        counts += torch.bincount(layer.last_selection, minlength=4)
    expected = draws * probs.detach()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # the 0.999 quantile of chi-square with 3 degrees of freedom
    assert probs.max() < 0.7 and probs.min() > 0.05  # a case where the whole distribution matters
    torch.testing.assert_close(layer.last_probs[0], probs.detach())


def test_the_straight_through_gradient_is_that_of_softmax_of_the_logits_plus_g():
    """Dense training: the scoring kernels' gradient is the gradient of the soft sample
    ``softmax(logits + G)`` (the replayed draw) against each neuron's output."""
    layer = make_layer(3, 4, "3d", "dense", seed=8, tau=3.0).train()
    x = torch.randn(6, 3, 2, 3, 3, dtype=torch.float64)
    probe = torch.randn(6, 3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = layer(x, generator=torch.Generator().manual_seed(4))
    (grad,) = torch.autograd.grad((out * probe).sum(), layer.score_weight)
    gumbels, _ = replay_draws(layer, 6, 4)
    selection = layer.last_selection
    hard = F.one_hot(selection, 4).double()
    # each neuron's output on every sample, normalised with its routed samples' statistics
    with torch.no_grad():
        outputs = torch.stack(
            [
                layer._dense(x, torch.eye(4, dtype=torch.float64)[i].expand(6, 4), None, selection, "routed")
                for i in range(4)
            ],
            dim=1,
        )
    score = layer.score_weight.detach().clone().requires_grad_()
    pooled, kernels = x.sum(dim=(2, 3, 4)), score.sum(dim=1)
    nu = (pooled.square().sum(1, keepdim=True) + 1e-6 * x.square().sum(dim=(1, 2, 3, 4)).unsqueeze(1)).sqrt()
    scale = nu * kernels.square().sum(1).mean().sqrt() / 3**0.5
    soft = torch.softmax((pooled @ kernels.t()) / (scale * 3.0) + gumbels, -1)
    weights = hard + soft - soft.detach()
    ref = (weights.view(6, 4, 1, 1, 1, 1) * outputs).sum(1)
    (expected,) = torch.autograd.grad((ref * probe).sum(), score)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


def test_dense_and_sparse_agree_when_most_neurons_get_no_sample():
    d = {"b": 2, "c": 3, "n": 6, "t": 2, "h": 3, "w": 3, "spec": "st", "seed": 4}
    dense = make_layer(3, 6, "st", "dense", seed=4).train()
    sparse = copy.deepcopy(dense)
    sparse.routing = "sparse"
    before = {k: v.clone() for k, v in dense.named_buffers()}
    y_d, y_s = _run(dense, inputs(d), 9), _run(sparse, inputs(d), 9)
    torch.testing.assert_close(y_d, y_s, rtol=1e-10, atol=1e-12)
    empty = torch.ones(6, dtype=torch.bool)
    empty[dense.last_selection] = False
    assert empty.sum() >= 4
    for layer in (dense, sparse):
        assert torch.isfinite(layer.bn_spatial_mean).all()
        for name, buf in layer.named_buffers():
            assert torch.equal(buf[empty], before[name][empty]), name
            if name != "bn_num_batches_tracked":
                assert not torch.equal(buf[~empty], before[name][~empty]), name


@settings(max_examples=expensive(40, 10))
@given(dims)
def test_evaluation_sparse_equals_dense_and_is_deterministic(d):
    dense = make_layer(d["c"], d["n"], d["spec"], "dense", seed=d["seed"]).eval()
    sparse = copy.deepcopy(dense)
    sparse.routing = "sparse"
    x = inputs(d)
    state = torch.get_rng_state()
    y_d, y_d2, y_s = dense(x), dense(x), sparse(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(y_d, y_d2)
    torch.testing.assert_close(y_d, y_s, rtol=1e-10, atol=1e-12)
    assert torch.equal(dense.last_selection, sparse.last_selection)


# ---------------------------------------------------------------------- selection and gates


@pytest.mark.parametrize("routing", ["dense", "sparse"])
@pytest.mark.parametrize("spec", ["st", "3d"])
def test_evaluation_uses_exactly_one_neuron_per_sample(routing, spec):
    """Perturbing every unselected neuron's downstream parameters leaves each sample's output
    unchanged; perturbing its selected neuron's changes it."""
    layer = make_layer(4, 5, spec, routing, seed=2).eval()
    x = torch.randn(8, 4, 2, 3, 3, dtype=torch.float64)
    y = layer(x)
    selection = layer.last_selection
    assert selection.shape == (8,) and selection.dtype == torch.long
    assert len(selection.unique()) >= 2
    names = DOWNSTREAM_ST if spec == "st" else DOWNSTREAM_3D
    for sample in range(8):
        chosen = int(selection[sample])
        for neuron in range(5):
            other = copy.deepcopy(layer)
            with torch.no_grad():
                for name in names:
                    getattr(other, name)[neuron].add_(0.5)
            changed = not torch.allclose(other(x)[sample], y[sample], rtol=1e-12, atol=1e-12)
            assert changed == (neuron == chosen), (sample, neuron, chosen)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("routing", ["dense", "sparse"])
def test_gate_zero_ignores_the_temporal_operator_and_gate_one_the_spatial(routing, training):
    x = torch.randn(6, 3, 3, 4, 4, dtype=torch.float64)
    for sign, frozen, used in [
        (-1.0, "temporal_weight", "spatial_weight"),
        (1.0, "spatial_weight", "temporal_weight"),
    ]:
        layer = make_layer(3, 3, "st", routing, seed=1, gate_noise_std=0.0).train(training)
        with torch.no_grad():
            layer.gate.fill_(20.0 * sign)  # saturating sigmoid and sign bit both give exactly 0 or 1
        outputs = []
        for name, delta in [(None, 0.0), (frozen, 1.0), (used, 1.0)]:
            other = copy.deepcopy(layer)
            if name is not None:
                with torch.no_grad():
                    getattr(other, name).add_(torch.randn_like(getattr(other, name)) * delta)
            outputs.append(_run(other, x, 0))
            assert torch.all(other.last_gates == (1.0 if sign > 0 else 0.0))
        assert torch.equal(outputs[0], outputs[1])
        assert not torch.allclose(outputs[0], outputs[2])


def test_randomness_contract_gumbel_then_semhash_noise_then_mask():
    """With a generator, the selection is argmax(logits + G) for the first (B, N) draw (it samples
    softmax(logits)), and the gates are Semhash with the next (B, N, C) noise and (B, N, C) mask, in
    both routings; the global RNG is not touched."""
    x = torch.randn(7, 4, 2, 3, 3, dtype=torch.float64)
    for routing in ("dense", "sparse"):
        layer = make_layer(4, 3, "st", routing, seed=3, gate_noise_std=0.8, p_hard=0.4, tau=4.0).train()
        state = torch.get_rng_state()
        layer(x, generator=torch.Generator().manual_seed(21))
        assert torch.equal(torch.get_rng_state(), state)
        gumbels, gates = replay_draws(layer, 7, 21)
        expected = (literal_logits(layer, x) + gumbels).argmax(-1)
        # the case discriminates: the raw spikes (v + G) or temperature 1 would pick otherwise
        assert not torch.equal(expected, (layer.spikes(x) + gumbels).argmax(-1))
        assert not torch.equal(expected, (4.0 * literal_logits(layer, x) + gumbels).argmax(-1))
        assert torch.equal(layer.last_selection, expected)
        assert torch.equal(layer.last_gates, gates[torch.arange(7), expected])
        layer.generator = torch.Generator().manual_seed(21)  # the attribute works the same way
        layer(x)
        assert torch.equal(layer.last_selection, expected)


def test_bf16_autocast_training_forward_is_finite():
    x = torch.randn(4, 8, 2, 3, 3)
    for routing in ("dense", "sparse"):
        layer = DSTSLayer(8, 3, routing=routing).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert torch.isfinite(y.float()).all()
        y.float().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


# --------------------------------------------------------------------- state and substitution


@pytest.mark.parametrize("spec", ["st", "3d"])
def test_state_dict_round_trip_gives_identical_outputs(spec):
    layer = make_layer(4, 3, spec, seed=5)
    x = torch.randn(5, 4, 2, 3, 3, dtype=torch.float64)
    _run(layer.train(), x, 1)  # move the running statistics
    fresh = DSTSLayer(4, 3, specialization=spec, routing="dense").double()
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(layer.eval()(x), fresh.eval()(x))
    assert torch.equal(_run(layer.train(), x, 8), _run(fresh.train(), x, 8))


@pytest.mark.parametrize("routing", ["dense", "sparse"])
def test_functional_call_with_cloned_buffers_leaves_the_real_ones_alone(routing):
    layer = make_layer(3, 2, "st", routing, seed=6).train()
    x = torch.randn(4, 3, 2, 2, 2, dtype=torch.float64)
    real = {k: v.clone() for k, v in layer.named_buffers()}
    clones = {k: v.clone() for k, v in layer.named_buffers()}
    params = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters()}
    torch.manual_seed(0)
    out = torch.func.functional_call(layer, {**params, **clones}, (x,))
    (g,) = torch.autograd.grad(out.square().sum(), params["fusion_weight"], create_graph=True)
    g.sum().backward()  # second order through the same graph
    for name, buf in layer.named_buffers():
        assert torch.equal(buf, real[name]), name
    assert not torch.equal(clones["bn_spatial_mean"], real["bn_spatial_mean"])
    assert clones["bn_num_batches_tracked"].sum() >= 1


def test_set_p_hard_validates():
    layer = DSTSLayer(2, 2)
    layer.set_p_hard(0.25)
    assert layer.p_hard == 0.25
    with pytest.raises(ValueError, match="p_hard"):
        layer.set_p_hard(1.5)


# ------------------------------------------------------------------ recomputed statistics


@settings(max_examples=expensive(40, 10))
@given(dims, st.sampled_from(["dense", "sparse"]), st.integers(1, 3))
def test_recomputed_statistics_pool_each_neurons_routed_samples_under_evaluation_routing(d, routing, batches):
    """Between start_recompute and finish_recompute an evaluation forward picks the argmax neuron with
    deterministic gates, normalises each neuron's samples with their own statistics (the per-neuron
    reference in training mode), draws nothing and leaves the buffers alone; finish_recompute sets each
    neuron's statistics to the mean of its routed batches' means and unbiased variances, weighted by
    its samples in each, and leaves a neuron that got no sample as it was."""
    if d["t"] * d["h"] * d["w"] == 1:
        d = {**d, "w": 2}  # the oracle's unbiased variance needs two values per channel
    layer = make_layer(d["c"], d["n"], d["spec"], routing, seed=d["seed"]).eval()
    before = {k: v.clone() for k, v in layer.named_buffers()}
    sums = {k: torch.zeros_like(v) for k, v in before.items() if k != "bn_num_batches_tracked"}
    counts = torch.zeros(d["n"], dtype=torch.float64)
    state = torch.get_rng_state()
    layer.start_recompute()
    for k in range(batches):
        x = inputs({**d, "seed": d["seed"] + 11 * k})
        with torch.no_grad():
            out = layer(x)
        selection = layer.spikes(x).argmax(-1)
        assert torch.equal(layer.last_selection, selection)
        gates = (layer.gate > 0).double().expand(d["b"], d["n"], d["c"]) if d["spec"] == "st" else None
        hard = F.one_hot(selection, d["n"]).double()
        clones = {k: v.clone() for k, v in before.items()}
        ref = reference(layer, x, hard, gates, per_neuron=True, batch_stats=True, buffers=clones)
        torch.testing.assert_close(out, ref.detach(), rtol=1e-9, atol=1e-10)
        for name, buf in layer.named_buffers():
            assert torch.equal(buf, before[name]), name
        for i in range(d["n"]):
            rows = (selection == i).nonzero().flatten()
            if len(rows) == 0:
                continue
            with torch.no_grad():
                z = pre_norm(layer, x[rows], None if gates is None else gates[rows, i], i)
            for bn, zi in z.items():
                per_channel = zi.transpose(0, 1).flatten(1)
                sums[f"{bn}_mean"][i] += len(rows) * per_channel.mean(1)
                sums[f"{bn}_var"][i] += len(rows) * per_channel.var(1, unbiased=True)
            counts[i] += len(rows)
    layer.finish_recompute()
    assert torch.equal(torch.get_rng_state(), state)
    has = (counts > 0).unsqueeze(1)
    for name, buf in layer.named_buffers():
        if name == "bn_num_batches_tracked":
            assert torch.equal(buf, before[name])
            continue
        expected = torch.where(has, sums[name] / counts.clamp(min=1).unsqueeze(1), before[name])
        torch.testing.assert_close(buf, expected, rtol=1e-9, atol=1e-12, msg=name)
    # and afterwards the layer evaluates with its (new) running statistics again
    running = reference(layer, x, hard, gates, True, False, dict(layer.named_buffers()))
    torch.testing.assert_close(layer(x), running, rtol=1e-9, atol=1e-10)


def test_recompute_is_refused_in_the_relaxed_mode_and_needs_a_start():
    layer = make_layer(2, 2)
    with pytest.raises(RuntimeError, match="without start_recompute"):
        layer.finish_recompute()
    layer.relaxed = True
    with pytest.raises(ValueError, match="relaxed"):
        layer.start_recompute()
