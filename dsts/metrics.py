"""Accuracy and specialization metrics, on torch tensors or numpy arrays.

Every function is deterministic and returns plain Python floats (or numpy arrays), so that the
results can go straight into ``metrics.json`` and come out byte-identical run after run.

Conventions:

- *Top-k ties.* The classes of a sample are ranked by score, highest first, and equal scores are
  ranked by class index, lowest first (a stable descending sort; ``np.argmax`` picks the same top-1).
  The label is in the top ``k`` when its rank is below ``k``, i.e. when
  ``#{c: s_c > s_y} + #{c < y: s_c == s_y} < k``. Unlike ``torch.topk``, whose order among ties is
  unspecified, this never depends on the device or the kernel, and a tie never counts in the
  model's favour twice (constant scores give top-1 ``1/K``, not 1).
- *Normalized mutual information* uses the arithmetic normalization ``2 I(Y; A) / (H(Y) + H(A))``
  in nats, and is 0 when either variable is constant (a layer whose every sample goes to one neuron
  carries no class information).
- *Specialization* statistics are a flat ``dict[str, float]`` keyed ``layer{j}/...``; keys whose
  value would be undefined (a neuron that got no sample, a cue with no class) are left out rather
  than written as NaN, which JSON cannot hold.

Bad input raises :class:`MetricsError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dsts.errors import DSTSError

__all__ = [
    "MetricsError",
    "accuracy_stats",
    "confusion_matrix",
    "cue_accuracy",
    "mean_class_accuracy",
    "per_class_accuracy",
    "routing_nmi",
    "top_k_accuracy",
    "top_k_hits",
]

CUES = ("spatial", "temporal")


class MetricsError(DSTSError, ValueError):
    """Bad input to a metric (wrong shape, label out of range, no samples)."""


# ----------------------------------------------------------------------------------------------
# input conversion


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Tensors (any device, bf16 included) and array-likes to numpy; floats widen to float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.to(torch.float64)
        arr = x.numpy()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind == "O":
            raise MetricsError(f"{name}: not a numeric array")
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float64)
    return arr


def int_array(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = to_numpy(x, name)
    if arr.ndim != ndim:
        raise MetricsError(f"{name}: expected {ndim} dimension(s), got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" and arr.size:  # an empty list comes out as float64
        raise MetricsError(f"{name}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_range(arr: np.ndarray, name: str, upper: int) -> None:
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        bad = arr[(arr < 0) | (arr >= upper)].flat[0]
        raise MetricsError(f"{name}: value {int(bad)} is outside [0, {upper})")


def check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise MetricsError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _labels_and_preds(preds: Any, labels: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray, int]:
    num_classes = check_count(num_classes, "num_classes")
    p = int_array(preds, "preds", 1)
    y = int_array(labels, "labels", 1)
    if p.shape != y.shape:
        raise MetricsError(f"preds has {p.shape[0]} samples but labels has {y.shape[0]}")
    if y.size == 0:
        raise MetricsError("labels: no samples")
    check_range(p, "preds", num_classes)
    check_range(y, "labels", num_classes)
    return p, y, num_classes


# ----------------------------------------------------------------------------------------------
# accuracy


def top_k_accuracy(scores: Any, labels: Any, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` best-scored classes (``k`` clipped to K).

    Ties are ranked by class index, lowest first (module docstring), so the result is exact and
    deterministic; scores must be finite.
    """
    hits = top_k_hits(scores, labels, k)
    return float(np.count_nonzero(hits) / hits.shape[0])


def top_k_hits(scores: Any, labels: Any, k: int) -> np.ndarray:
    """Per sample, bool ``(n,)``: whether its label is among the ``k`` best-scored classes, by the
    rule of :func:`top_k_accuracy` (its mean)."""
    s = to_numpy(scores, "scores")
    if s.ndim != 2:
        raise MetricsError(f"scores: expected shape (n, K), got {tuple(s.shape)}")
    if s.dtype.kind not in "fiu":
        raise MetricsError(f"scores: expected numbers, got dtype {s.dtype}")
    if not np.isfinite(s).all():
        raise MetricsError("scores: contains NaN or infinity")
    y = int_array(labels, "labels", 1)
    n, num_classes = s.shape
    if y.shape[0] != n:
        raise MetricsError(f"scores has {n} samples but labels has {y.shape[0]}")
    if n == 0:
        raise MetricsError("labels: no samples")
    if num_classes == 0:
        raise MetricsError("scores: no classes")
    k = min(check_count(k, "k"), num_classes)
    check_range(y, "labels", num_classes)
    own = s[np.arange(n), y][:, None]
    lower_index = np.arange(num_classes)[None, :] < y[:, None]
    rank = (s > own).sum(axis=1) + ((s == own) & lower_index).sum(axis=1)
    return rank < k


def confusion_matrix(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Counts, int64 ``(K, K)``: row = true class, column = predicted class."""
    p, y, num_classes = _labels_and_preds(preds, labels, num_classes)
    flat = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Recall per class, float64 ``(K,)``; NaN for a class with no sample in ``labels``."""
    cm = confusion_matrix(preds, labels, num_classes)
    support = cm.sum(axis=1)
    out = np.full(num_classes, np.nan)
    present = support > 0
    out[present] = np.diag(cm)[present] / support[present]
    return out


def mean_class_accuracy(preds: Any, labels: Any, num_classes: int) -> float:
    """Mean over the classes present in ``labels`` of their recall (balanced accuracy)."""
    acc = per_class_accuracy(preds, labels, num_classes)
    present = acc[~np.isnan(acc)]
    return float(math.fsum(present.tolist()) / present.size)


def accuracy_stats(scores: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``top{k}`` for each k and ``mean_class_accuracy`` (of the argmax prediction), as floats.

    The argmax breaks ties by lowest class index, the same rule as :func:`top_k_accuracy`.
    """
    s = to_numpy(scores, "scores")
    if s.ndim != 2:
        raise MetricsError(f"scores: expected shape (n, K), got {tuple(s.shape)}")
    out = {f"top{int(k)}": top_k_accuracy(s, labels, k) for k in ks}
    out["mean_class_accuracy"] = mean_class_accuracy(np.argmax(s, axis=1), labels, s.shape[1])
    return out


# ----------------------------------------------------------------------------------------------
# routing information


def entropy_from_counts(counts: np.ndarray, n: int) -> float:
    """``sum p log(1/p)`` in nats over nonzero counts; fsum makes it independent of the order."""
    c = counts[counts > 0].astype(np.float64)
    return math.fsum(((c / n) * np.log(n / c)).tolist())


def routing_nmi(labels: Any, neurons: Any) -> float:
    """Normalized mutual information ``2 I / (H(Y) + H(A))`` between class and selected neuron.

    Any integer codes are accepted (only equality matters). Returns 0 when either side is constant,
    and is exactly symmetric and invariant to relabeling either side (all sums are exact ``fsum``).
    """
    y = int_array(labels, "labels", 1)
    a = int_array(neurons, "neurons", 1)
    if y.shape != a.shape:
        raise MetricsError(f"labels has {y.shape[0]} samples but neurons has {a.shape[0]}")
    n = y.shape[0]
    if n == 0:
        raise MetricsError("labels: no samples")
    _, yi = np.unique(y, return_inverse=True)
    _, ai = np.unique(a, return_inverse=True)
    ky, ka = int(yi.max()) + 1, int(ai.max()) + 1
    if ky == 1 or ka == 1:
        return 0.0
    joint = np.bincount(yi * ka + ai, minlength=ky * ka).reshape(ky, ka)
    row, col = joint.sum(axis=1), joint.sum(axis=0)
    r, c = np.nonzero(joint)
    nij = joint[r, c]
    # integer products first: an exactly independent table gives a ratio of exactly 1 (log 0)
    ratio = (n * nij).astype(np.float64) / (row[r] * col[c]).astype(np.float64)
    mutual = math.fsum(((nij / n) * np.log(ratio)).tolist())
    h_y = entropy_from_counts(row, n)
    h_a = entropy_from_counts(col, n)
    return float(min(1.0, max(0.0, 2.0 * mutual / (h_y + h_a))))


# ----------------------------------------------------------------------------------------------
# cues


def cue_accuracy(
    scores: Any, labels: Any, class_cues: Sequence[str | None], class_pairs: Sequence[tuple[str, int] | None]
) -> dict[str, float]:
    """Accuracy on the cues that tell fine-grained classes apart, from the scores ``(n, K)``:

    - ``top1_spatial_cue``, ``top1_temporal_cue``: top-1 over the samples of the classes whose cue
      (``class_cues[k]``) is spatial or temporal;
    - ``pair/<attribute>``: the within-pair accuracy of the classes whose pair differs in
      ``attribute`` (``class_pairs[k] = (attribute, partner)``): the share of their samples scored
      above their partner class (a tie counts half). Chance is 0.5 whatever the other classes do;
    - ``pair/spatial_cue``, ``pair/temporal_cue``: the same pooled by the kind of cue.

    A key is left out when no sample has what it needs."""
    s = to_numpy(scores, "scores")
    y = int_array(labels, "labels", 1)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise MetricsError(f"scores: expected shape ({y.shape[0]}, K), got {tuple(s.shape)}")
    correct = s.argmax(axis=1) == y
    out: dict[str, float] = {}
    for cue in CUES:
        mine = np.array([class_cues[k] == cue for k in y.tolist()], dtype=bool)
        if mine.any():
            out[f"top1_{cue}_cue"] = float(correct[mine].mean())
    wins: dict[str, list[float]] = {}
    for i, k in enumerate(y.tolist()):
        pair = class_pairs[k]
        if pair is None:
            continue
        attribute, partner = pair
        mine, other = s[i, k], s[i, partner]
        win = 1.0 if mine > other else 0.5 if mine == other else 0.0
        wins.setdefault(attribute, []).append(win)
        if class_cues[k] in CUES:
            wins.setdefault(f"{class_cues[k]}_cue", []).append(win)
    out.update({f"pair/{name}": math.fsum(v) / len(v) for name, v in sorted(wins.items())})
    return out
