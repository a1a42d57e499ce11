"""Specialization statistics against plain Python loops: usage, NMI per layer, collapse, the gates'
temporal fractions per cue, and the training-time routing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dsts.metrics import MetricsError
from dsts.specialization import TrainingRouting, class_neuron_usage, collapse_warnings, specialization_stats
from tests.test_metrics import literal_nmi


def loop_specialization(sel, labels, num_neurons, gates=None, cues=None) -> dict[str, float]:
    n, num_layers = len(sel), len(sel[0])
    out: dict[str, float] = {}
    for j in range(num_layers):
        col = [row[j] for row in sel]
        usage = [col.count(i) / n for i in range(num_neurons)]
        for i, u in enumerate(usage):
            out[f"layer{j}/usage/neuron{i}"] = u
        out[f"layer{j}/max_usage"] = max(usage)
        ent = -sum(u * math.log(u) for u in usage if u > 0)
        out[f"layer{j}/usage_entropy"] = ent
        out[f"layer{j}/usage_entropy_norm"] = ent / math.log(num_neurons) if num_neurons > 1 else 0.0
        out[f"layer{j}/nmi"] = literal_nmi(list(labels), col)
        out[f"layer{j}/collapse"] = float(num_neurons > 1 and max(usage) > 0.9)
        if gates is None:
            continue
        frac = [sum(gates[s][j]) / len(gates[s][j]) for s in range(n)]
        out[f"layer{j}/temporal_fraction/all"] = sum(frac) / n
        for i in range(num_neurons):
            mine = [frac[s] for s in range(n) if col[s] == i]
            if mine:
                out[f"layer{j}/temporal_fraction/neuron{i}"] = sum(mine) / len(mine)
        if cues is None:
            continue
        got = {}
        for cue in ("spatial", "temporal"):
            mine = [frac[s] for s in range(n) if cues[labels[s]] == cue]
            if mine:
                got[cue] = out[f"layer{j}/temporal_fraction/{cue}_cue"] = sum(mine) / len(mine)
        if len(got) == 2:
            out[f"layer{j}/temporal_fraction/cue_gap"] = got["temporal"] - got["spatial"]
    return out


@st.composite
def routed(draw):
    n = draw(st.integers(1, 25))
    num_layers = draw(st.integers(1, 3))
    num_neurons = draw(st.integers(1, 4))
    num_classes = draw(st.integers(1, 5))
    channels = draw(st.integers(1, 4))
    sel = draw(
        st.lists(
            st.lists(st.integers(0, num_neurons - 1), min_size=num_layers, max_size=num_layers),
            min_size=n,
            max_size=n,
        )
    )
    labels = draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    gates = draw(
        st.lists(
            st.lists(
                st.lists(st.sampled_from([0.0, 1.0]), min_size=channels, max_size=channels),
                min_size=num_layers,
                max_size=num_layers,
            ),
            min_size=n,
            max_size=n,
        )
    )
    cues = draw(
        st.lists(st.sampled_from(["spatial", "temporal", None]), min_size=num_classes, max_size=num_classes)
    )
    return sel, labels, gates, cues, num_neurons, num_classes


def assert_same_stats(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert type(got[key]) is float, key
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), key


@given(routed())
def test_specialization_stats_match_literal_loops(data):
    sel, labels, gates, cues, num_neurons, num_classes = data
    got = specialization_stats(
        torch.tensor(sel), torch.tensor(labels), num_neurons, num_classes, torch.tensor(gates), cues
    )
    assert_same_stats(got, loop_specialization(sel, labels, num_neurons, gates, cues))
    json.dumps(got, allow_nan=False)


@given(routed())
def test_specialization_stats_without_gates_or_cues(data):
    sel, labels, gates, cues, num_neurons, num_classes = data
    assert_same_stats(
        specialization_stats(np.array(sel), np.array(labels), num_neurons, num_classes),
        loop_specialization(sel, labels, num_neurons),
    )
    assert_same_stats(
        specialization_stats(np.array(sel), np.array(labels), num_neurons, num_classes, np.array(gates)),
        loop_specialization(sel, labels, num_neurons, gates),
    )


@given(routed())
def test_usage_fractions_sum_to_one_and_entropy_bounds(data):
    sel, labels, _, _, num_neurons, num_classes = data
    stats = specialization_stats(sel, labels, num_neurons, num_classes)
    for j in range(len(sel[0])):
        total = sum(stats[f"layer{j}/usage/neuron{i}"] for i in range(num_neurons))
        assert math.isclose(total, 1.0, rel_tol=1e-12)
        assert 0.0 <= stats[f"layer{j}/usage_entropy"] <= math.log(num_neurons) + 1e-12
        assert 0.0 <= stats[f"layer{j}/usage_entropy_norm"] <= 1.0


@pytest.mark.parametrize(
    ("n", "top", "expected"),
    [(10, 9, 0.0), (11, 10, 1.0), (20, 19, 1.0), (10, 10, 1.0), (100, 90, 0.0), (100, 91, 1.0)],
)
def test_collapse_flag_is_strictly_above_ninety_percent(n, top, expected):
    sel = np.array([[2, i % 3] for i in range(top)] + [[1, i % 3] for i in range(n - top)])
    labels = np.arange(n) % 3
    stats = specialization_stats(sel, labels, num_neurons=3, num_classes=3)
    assert stats["layer0/collapse"] == expected
    assert stats["layer0/max_usage"] == top / n
    assert stats["layer1/collapse"] == 0.0  # spread evenly over the three neurons
    warnings = collapse_warnings(stats)
    if expected:
        assert warnings == [
            f"layer0: routing collapsed, neuron 2 takes {top / n:.1%} of the samples (3 neurons)"
        ]
    else:
        assert not any(w.startswith("layer0:") for w in warnings)


def test_collapse_warnings_name_each_collapsed_layer_in_order():
    n = 40
    sel = np.zeros((n, 12), dtype=np.int64)
    sel[:, 3] = np.arange(n) % 4  # spread: no collapse
    sel[:, 0] = 1  # everything to neuron 1
    sel[:, 10] = 3
    sel[:, 10][:2] = 0  # 95% to neuron 3
    stats = specialization_stats(sel, np.arange(n) % 5, num_neurons=4, num_classes=5)
    collapsed = [j for j in range(12) if stats[f"layer{j}/collapse"] == 1.0]
    assert collapsed == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    lines = collapse_warnings(stats)
    assert len(lines) == len(collapsed)
    assert lines[0] == "layer0: routing collapsed, neuron 1 takes 100.0% of the samples (4 neurons)"
    assert lines[1].startswith("layer1: ") and lines[-1].startswith("layer11: ")
    assert lines[-2] == "layer10: routing collapsed, neuron 3 takes 95.0% of the samples (4 neurons)"


def test_collapse_warnings_with_prefixed_keys():
    sel = np.array([[0, 0]] * 19 + [[1, 1]])
    stats = specialization_stats(sel, np.arange(20) % 2, num_neurons=2, num_classes=2)
    assert stats["layer1/collapse"] == 1.0
    merged = {"test/top1": 0.5, **{f"test/{k}": v for k, v in stats.items()}}
    assert collapse_warnings(merged) == [
        "test/layer0: routing collapsed, neuron 0 takes 95.0% of the samples (2 neurons)",
        "test/layer1: routing collapsed, neuron 0 takes 95.0% of the samples (2 neurons)",
    ]


def test_one_neuron_never_counts_as_collapse():
    stats = specialization_stats(np.zeros((5, 2), dtype=np.int64), np.arange(5), num_neurons=1, num_classes=5)
    assert stats["layer0/collapse"] == 0.0 and stats["layer0/usage_entropy_norm"] == 0.0
    assert stats["layer0/usage/neuron0"] == 1.0 and stats["layer0/nmi"] == 0.0
    assert collapse_warnings(stats) == []


def test_cue_fractions_on_a_hand_made_case():
    # class 0 temporal, class 1 spatial, class 2 unknown; two gate channels
    labels = [0, 0, 1, 1, 2]
    sel = [[0], [1], [0], [1], [1]]
    gates = [[[1, 1]], [[1, 0]], [[0, 0]], [[0, 1]], [[1, 1]]]
    stats = specialization_stats(
        sel, labels, 2, 3, np.array(gates, dtype=np.float32), ["temporal", "spatial", None]
    )
    assert stats["layer0/temporal_fraction/temporal_cue"] == 0.75
    assert stats["layer0/temporal_fraction/spatial_cue"] == 0.25
    assert stats["layer0/temporal_fraction/cue_gap"] == 0.5
    assert stats["layer0/temporal_fraction/neuron0"] == 0.5
    assert stats["layer0/temporal_fraction/neuron1"] == pytest.approx(2 / 3)
    assert stats["layer0/temporal_fraction/all"] == 0.6


def test_unrouted_neuron_and_missing_cue_keys_are_left_out():
    stats = specialization_stats([[0], [0]], [0, 0], 3, 2, [[[1.0]], [[0.0]]], ["spatial", "temporal"])
    assert "layer0/temporal_fraction/neuron0" in stats
    assert "layer0/temporal_fraction/neuron1" not in stats
    assert "layer0/temporal_fraction/spatial_cue" in stats
    assert "layer0/temporal_fraction/temporal_cue" not in stats
    assert "layer0/temporal_fraction/cue_gap" not in stats
    assert stats["layer0/usage/neuron1"] == 0.0


@given(routed())
def test_class_neuron_usage_matches_loop(data):
    sel, labels, _, _, num_neurons, num_classes = data
    for layer in range(len(sel[0])):
        got = class_neuron_usage(torch.tensor(sel), labels, layer, num_classes, num_neurons)
        assert got.shape == (num_classes, num_neurons)
        for k in range(num_classes):
            mine = [row[layer] for row, y in zip(sel, labels) if y == k]
            if not mine:
                assert np.isnan(got[k]).all()
                continue
            for i in range(num_neurons):
                assert math.isclose(got[k, i], mine.count(i) / len(mine), rel_tol=1e-12)
            assert math.isclose(got[k].sum(), 1.0, rel_tol=1e-12)


def test_training_routing_against_literal_loops():
    routing = TrainingRouting(num_layers=2, num_neurons=3)
    batches = [
        (
            [
                torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]),
                torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]),
            ],
            torch.tensor([[0, 1], [1, 0]]),
            torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 0.0], [1.0, 1.0]]]),
        ),
        (
            [torch.tensor([[0.2, 0.6, 0.2]]), torch.tensor([[0.0, 0.0, 1.0]])],
            torch.tensor([[1, 2]]),
            torch.tensor([[[1.0, 1.0], [0.0, 1.0]]]),
        ),
    ]
    for probs, selection, gates in batches:
        routing.update(probs, selection, gates)
    got = routing.result("train/")
    assert all(type(v) is float for v in got.values())  # plain floats: a checkpoint loads them weights-only

    def entropy(p):
        return -sum(x * math.log(x) for x in p if x > 0)

    log3 = math.log(3)
    rows0 = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]]
    rows1 = [[1 / 3] * 3, [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    assert got["train/layer0/selection_entropy_norm"] == pytest.approx(sum(map(entropy, rows0)) / 3 / log3)
    assert got["train/layer1/selection_entropy_norm"] == pytest.approx(sum(map(entropy, rows1)) / 3 / log3)
    # sampled 0, 1, 1 in layer 0 (argmax 0, 2, 1): two agree; layer 1 sampled 1, 0, 2 (argmax 0, 0, 2)
    assert got["train/layer0/argmax_agreement"] == pytest.approx(2 / 3)
    assert got["train/layer1/argmax_agreement"] == pytest.approx(2 / 3)
    assert got["train/layer0/max_usage"] == pytest.approx(2 / 3)
    assert got["train/layer0/usage_entropy_norm"] == pytest.approx(entropy([1 / 3, 2 / 3]) / log3)
    assert got["train/layer1/usage_entropy_norm"] == pytest.approx(1.0)
    assert got["train/layer0/temporal_fraction"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert got["train/layer1/temporal_fraction"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_training_routing_is_undefined_without_spread_or_gates():
    routing = TrainingRouting(num_layers=1, num_neurons=1)
    routing.update([torch.ones(4, 1)], torch.zeros(4, 1, dtype=torch.long), None)
    got = routing.result()
    assert math.isnan(got["layer0/selection_entropy_norm"]) and math.isnan(got["layer0/usage_entropy_norm"])
    assert math.isnan(got["layer0/temporal_fraction"]) and got["layer0/max_usage"] == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: specialization_stats([[0, 5]], [0], 4, 2), "selection: value 5 is outside [0, 4)"),
        (lambda: specialization_stats([0, 1], [0, 1], 4, 2), "selection: expected 2 dimension(s)"),
        (lambda: specialization_stats([[0]], [0], 2, 2, gates=[[0.5]]), "gates: expected shape (1, 1, C)"),
        (lambda: specialization_stats([[0]], [0], 2, 2, gates=[[[1.5]]]), "gates: values must lie in [0, 1]"),
        (lambda: specialization_stats([[0]], [0], 2, 2, class_cues=["spatial"]), "class_cues: expected 2"),
        (lambda: specialization_stats([[0]], [0], 2, 2, class_cues=["spatial", "x"]), "class_cues[1]"),
        (lambda: class_neuron_usage([[0]], [0], 1, 2, 2), "layer: expected an index in [0, 1)"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(call, message):
    with pytest.raises(MetricsError) as info:
        call()
    text = str(info.value)
    assert message in text and "\n" not in text
