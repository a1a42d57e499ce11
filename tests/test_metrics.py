"""Metrics against independent computations: plain Python loops and the literal formulas."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from dsts.metrics import (
    MetricsError,
    accuracy_stats,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    routing_nmi,
    top_k_accuracy,
    top_k_hits,
)

# ----------------------------------------------------------------------------------------------
# strategies


@st.composite
def scored(draw, tie_prone: bool = True, max_classes: int = 8):
    """(scores (n, K) float array, labels (n,) int array); ties are common when ``tie_prone``."""
    n = draw(st.integers(1, 30))
    k = draw(st.integers(1, max_classes))
    if tie_prone:
        values = st.integers(-2, 2).map(float)
    else:
        values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
    scores = np.array(draw(st.lists(st.lists(values, min_size=k, max_size=k), min_size=n, max_size=n)))
    labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=np.int64)
    return scores.reshape(n, k), labels


@st.composite
def predictions(draw, max_classes: int = 9):
    k = draw(st.integers(1, max_classes))
    n = draw(st.integers(1, 40))
    preds = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    return np.array(preds, dtype=np.int64), np.array(labels, dtype=np.int64), k


codes = st.lists(st.integers(-5, 5), min_size=1, max_size=40)


@st.composite
def paired_codes(draw):
    n = draw(st.integers(1, 40))
    ys = draw(st.lists(st.integers(-3, 6), min_size=n, max_size=n))
    ns = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    return ys, ns


# ----------------------------------------------------------------------------------------------
# oracles (plain Python)


def loop_top_k_hits(scores, labels, k) -> list[bool]:
    out = []
    for row, y in zip(scores.tolist(), labels.tolist(), strict=True):
        order = sorted(range(len(row)), key=lambda c: (-row[c], c))
        out.append(y in order[:k])
    return out


def loop_top_k(scores, labels, k) -> float:
    return sum(loop_top_k_hits(scores, labels, k)) / len(labels)


def loop_recalls(preds, labels, k) -> dict[int, float]:
    out = {}
    for c in range(k):
        idx = [i for i, y in enumerate(labels.tolist()) if y == c]
        if idx:
            out[c] = sum(1 for i in idx if preds[i] == c) / len(idx)
    return out


def literal_nmi(ys, ns) -> float:
    n = len(ys)
    joint = Counter(zip(ys, ns, strict=True))
    py = Counter(ys)
    pa = Counter(ns)
    h_y = -sum(c / n * math.log(c / n) for c in py.values())
    h_a = -sum(c / n * math.log(c / n) for c in pa.values())
    if h_y == 0 or h_a == 0:
        return 0.0
    mi = sum(c / n * math.log((c / n) / ((py[y] / n) * (pa[a] / n))) for (y, a), c in joint.items())
    return 2 * mi / (h_y + h_a)


# ----------------------------------------------------------------------------------------------
# top-k


@given(scored())
def test_top_k_matches_stable_sort_loop(data):
    scores, labels = data
    for k in range(1, scores.shape[1] + 1):
        assert top_k_accuracy(scores, labels, k) == loop_top_k(scores, labels, k)


@given(scored())
def test_top_k_hits_match_stable_sort_loop_per_sample(data):
    scores, labels = data
    for k in range(1, scores.shape[1] + 1):
        assert top_k_hits(scores, labels, k).tolist() == loop_top_k_hits(scores, labels, k)


@given(scored())
def test_top_k_monotone_and_full_k_is_one(data):
    scores, labels = data
    num_classes = scores.shape[1]
    accs = [top_k_accuracy(scores, labels, k) for k in range(1, num_classes + 3)]
    assert all(a <= b for a, b in zip(accs, accs[1:]))
    assert accs[num_classes - 1] == 1.0
    assert accs[-1] == 1.0  # k beyond K is clipped


@given(scored(tie_prone=False))
def test_top1_is_argmax_accuracy_without_ties(data):
    scores, labels = data
    assume(all(len(set(row)) == len(row) for row in scores.tolist()))
    expected = sum(int(np.argmax(r)) == y for r, y in zip(scores, labels)) / len(labels)
    assert top_k_accuracy(scores, labels, 1) == expected


@given(scored())
def test_top1_with_ties_picks_the_lowest_index(data):
    scores, labels = data
    first_max = [row.index(max(row)) for row in scores.tolist()]
    expected = sum(p == y for p, y in zip(first_max, labels.tolist())) / len(labels)
    assert top_k_accuracy(scores, labels, 1) == expected


def test_constant_scores_do_not_count_ties_as_hits():
    scores = np.zeros((4, 4))
    labels = np.array([0, 1, 2, 3])
    assert top_k_accuracy(scores, labels, 1) == 0.25
    assert top_k_accuracy(scores, labels, 2) == 0.5


@given(scored())
def test_top_k_same_on_tensors_and_arrays(data):
    scores, labels = data
    for k in (1, 2):
        a = top_k_accuracy(scores, labels, k)
        assert top_k_accuracy(torch.from_numpy(scores), torch.from_numpy(labels), k) == a
        assert top_k_accuracy(torch.from_numpy(scores).float(), labels.tolist(), k) == a
        assert type(a) is float


# ----------------------------------------------------------------------------------------------
# class accuracy and confusion


@given(predictions())
def test_mean_class_accuracy_is_mean_of_loop_recalls(data):
    preds, labels, k = data
    recalls = loop_recalls(preds, labels, k)
    expected = sum(recalls.values()) / len(recalls)
    got = mean_class_accuracy(preds, labels, k)
    assert type(got) is float
    assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-15)


@given(predictions())
def test_per_class_accuracy_matches_loop_with_nan_for_absent(data):
    preds, labels, k = data
    recalls = loop_recalls(preds, labels, k)
    got = per_class_accuracy(torch.from_numpy(preds), torch.from_numpy(labels), k)
    assert got.shape == (k,)
    for c in range(k):
        if c in recalls:
            assert math.isclose(got[c], recalls[c], rel_tol=1e-12)
        else:
            assert math.isnan(got[c])


@given(predictions())
def test_confusion_matrix_cells_sums_and_diagonal(data):
    preds, labels, k = data
    cm = confusion_matrix(preds, labels, k)
    assert cm.dtype == np.int64 and cm.shape == (k, k)
    for r in range(k):
        for c in range(k):
            assert cm[r, c] == sum(1 for y, p in zip(labels, preds) if y == r and p == c)
    assert cm.sum() == len(labels)
    assert list(cm.sum(axis=1)) == [int((labels == c).sum()) for c in range(k)]
    assert list(cm.sum(axis=0)) == [int((preds == c).sum()) for c in range(k)]
    assert np.trace(cm) == int((preds == labels).sum())


@given(scored())
def test_accuracy_stats_agrees_with_the_parts(data):
    scores, labels = data
    k = scores.shape[1]
    out = accuracy_stats(scores, labels)
    first_max = np.array([row.index(max(row)) for row in scores.tolist()])
    assert out == {
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, 5),
        "mean_class_accuracy": mean_class_accuracy(first_max, labels, k),
    }
    json.dumps(out)


# ----------------------------------------------------------------------------------------------
# routing NMI


@given(paired_codes())
def test_nmi_matches_literal_formula_and_is_in_unit_interval(data):
    ys, ns = data
    got = routing_nmi(np.array(ys), np.array(ns))
    assert type(got) is float
    assert 0.0 <= got <= 1.0
    assert math.isclose(got, literal_nmi(ys, ns), rel_tol=1e-9, abs_tol=1e-12)


@given(paired_codes())
def test_nmi_is_exactly_symmetric(data):
    ys, ns = data
    assert routing_nmi(ys, ns) == routing_nmi(ns, ys)


@given(paired_codes(), st.randoms(use_true_random=False))
def test_nmi_is_invariant_to_relabeling(data, rnd):
    ys, ns = data
    ymap = dict(zip(sorted(set(ys)), rnd.sample(range(-100, 100), len(set(ys))), strict=True))
    nmap = dict(zip(sorted(set(ns)), rnd.sample(range(1000), len(set(ns))), strict=True))
    relabeled = routing_nmi([ymap[y] for y in ys], [nmap[a] for a in ns])
    assert relabeled == routing_nmi(ys, ns)


@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=5),
    st.lists(st.integers(1, 4), min_size=1, max_size=5),
    st.randoms(use_true_random=False),
)
def test_nmi_zero_for_an_exactly_independent_joint(row_weights, col_weights, rnd):
    # count(class r, neuron c) = row_weights[r] * col_weights[c]: p(y, a) = p(y) p(a) exactly
    pairs = [
        (r, c) for r, wr in enumerate(row_weights) for c, wc in enumerate(col_weights) for _ in range(wr * wc)
    ]
    rnd.shuffle(pairs)
    ys = [p[0] for p in pairs]
    ns = [p[1] for p in pairs]
    assert routing_nmi(torch.tensor(ys), torch.tensor(ns)) == pytest.approx(0.0, abs=1e-12)


@given(st.lists(st.integers(0, 7), min_size=2, max_size=40), st.randoms(use_true_random=False))
def test_nmi_one_for_a_one_to_one_map(ys, rnd):
    assume(len(set(ys)) > 1)
    perm = rnd.sample(range(50), 8)
    ns = [perm[y] for y in ys]
    assert routing_nmi(ys, ns) == pytest.approx(1.0, abs=1e-12)


@given(codes)
def test_nmi_zero_when_either_side_is_constant(ys):
    assert routing_nmi(ys, [3] * len(ys)) == 0.0
    assert routing_nmi([0] * len(ys), ys) == 0.0


def test_nmi_known_value():
    # 2x2 table [[2, 0], [1, 1]]: I = 0.2158..., H(Y) = log 2, H(A) = H(3/4, 1/4)
    ys = [0, 0, 1, 1]
    ns = [0, 0, 0, 1]
    mi = (
        0.5 * math.log(0.5 / (0.5 * 0.75))
        + 0.25 * math.log(0.25 / (0.5 * 0.75))
        + 0.25 * math.log(0.25 / (0.5 * 0.25))
    )
    h_a = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert routing_nmi(ys, ns) == pytest.approx(2 * mi / (math.log(2) + h_a), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: top_k_accuracy(np.zeros((3, 4)), [0, 1], 1), "3 samples but labels has 2"),
        (lambda: top_k_accuracy(np.zeros((3, 4)), [0, 1, 4], 1), "labels: value 4 is outside [0, 4)"),
        (lambda: top_k_accuracy(np.zeros((3, 4)), [0, 1, 2], 0), "k: expected a positive integer"),
        (lambda: top_k_accuracy(np.zeros(4), [0], 1), "scores: expected shape (n, K)"),
        (lambda: top_k_accuracy(np.full((1, 2), np.nan), [0], 1), "scores: contains NaN"),
        (lambda: top_k_accuracy(np.zeros((0, 2)), np.zeros(0, dtype=int), 1), "labels: no samples"),
        (lambda: mean_class_accuracy([0, 1], [0.0, 1.0], 2), "labels: expected integers"),
        (lambda: mean_class_accuracy([0, -1], [0, 1], 2), "preds: value -1 is outside [0, 2)"),
        (lambda: confusion_matrix([0], [0], 0), "num_classes: expected a positive integer"),
        (lambda: routing_nmi([0, 1], [0]), "labels has 2 samples but neurons has 1"),
        (lambda: routing_nmi([], []), "labels: no samples"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(call, message):
    with pytest.raises(MetricsError) as info:
        call()
    text = str(info.value)
    assert message in text and "\n" not in text
    assert isinstance(info.value, ValueError)
