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
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dsts.errors import DSTSError

__all__ = [
    "MetricsError",
    "TrainingRouting",
    "accuracy_stats",
    "class_neuron_usage",
    "collapse_warnings",
    "confusion_matrix",
    "mean_class_accuracy",
    "per_class_accuracy",
    "routing_nmi",
    "specialization_stats",
    "top_k_accuracy",
]

COLLAPSE_THRESHOLD = 0.9
CUES = ("spatial", "temporal")


class MetricsError(DSTSError, ValueError):
    """Bad input to a metric (wrong shape, label out of range, no samples)."""


# ----------------------------------------------------------------------------------------------
# input conversion


def _to_numpy(x: Any, name: str) -> np.ndarray:
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


def _int_array(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != ndim:
        raise MetricsError(f"{name}: expected {ndim} dimension(s), got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" and arr.size:  # an empty list comes out as float64
        raise MetricsError(f"{name}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_range(arr: np.ndarray, name: str, upper: int) -> None:
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        bad = arr[(arr < 0) | (arr >= upper)].flat[0]
        raise MetricsError(f"{name}: value {int(bad)} is outside [0, {upper})")


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise MetricsError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _labels_and_preds(preds: Any, labels: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray, int]:
    num_classes = _check_count(num_classes, "num_classes")
    p = _int_array(preds, "preds", 1)
    y = _int_array(labels, "labels", 1)
    if p.shape != y.shape:
        raise MetricsError(f"preds has {p.shape[0]} samples but labels has {y.shape[0]}")
    if y.size == 0:
        raise MetricsError("labels: no samples")
    _check_range(p, "preds", num_classes)
    _check_range(y, "labels", num_classes)
    return p, y, num_classes


# ----------------------------------------------------------------------------------------------
# accuracy


def top_k_accuracy(scores: Any, labels: Any, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` best-scored classes (``k`` clipped to K).

    Ties are ranked by class index, lowest first (module docstring), so the result is exact and
    deterministic; scores must be finite.
    """
    s = _to_numpy(scores, "scores")
    if s.ndim != 2:
        raise MetricsError(f"scores: expected shape (n, K), got {tuple(s.shape)}")
    if s.dtype.kind not in "fiu":
        raise MetricsError(f"scores: expected numbers, got dtype {s.dtype}")
    if not np.isfinite(s).all():
        raise MetricsError("scores: contains NaN or infinity")
    y = _int_array(labels, "labels", 1)
    n, num_classes = s.shape
    if y.shape[0] != n:
        raise MetricsError(f"scores has {n} samples but labels has {y.shape[0]}")
    if n == 0:
        raise MetricsError("labels: no samples")
    if num_classes == 0:
        raise MetricsError("scores: no classes")
    k = min(_check_count(k, "k"), num_classes)
    _check_range(y, "labels", num_classes)
    own = s[np.arange(n), y][:, None]
    lower_index = np.arange(num_classes)[None, :] < y[:, None]
    rank = (s > own).sum(axis=1) + ((s == own) & lower_index).sum(axis=1)
    return float(np.count_nonzero(rank < k) / n)


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
    s = _to_numpy(scores, "scores")
    if s.ndim != 2:
        raise MetricsError(f"scores: expected shape (n, K), got {tuple(s.shape)}")
    out = {f"top{int(k)}": top_k_accuracy(s, labels, k) for k in ks}
    out["mean_class_accuracy"] = mean_class_accuracy(np.argmax(s, axis=1), labels, s.shape[1])
    return out


# ----------------------------------------------------------------------------------------------
# routing information


def _entropy_from_counts(counts: np.ndarray, n: int) -> float:
    """``sum p log(1/p)`` in nats over nonzero counts; fsum makes it independent of the order."""
    c = counts[counts > 0].astype(np.float64)
    return math.fsum(((c / n) * np.log(n / c)).tolist())


def routing_nmi(labels: Any, neurons: Any) -> float:
    """Normalized mutual information ``2 I / (H(Y) + H(A))`` between class and selected neuron.

    Any integer codes are accepted (only equality matters). Returns 0 when either side is constant,
    and is exactly symmetric and invariant to relabeling either side (all sums are exact ``fsum``).
    """
    y = _int_array(labels, "labels", 1)
    a = _int_array(neurons, "neurons", 1)
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
    h_y = _entropy_from_counts(row, n)
    h_a = _entropy_from_counts(col, n)
    return float(min(1.0, max(0.0, 2.0 * mutual / (h_y + h_a))))


# ----------------------------------------------------------------------------------------------
# specialization


def _selection_and_labels(
    selection: Any, labels: Any, num_neurons: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    sel = _int_array(selection, "selection", 2)
    y = _int_array(labels, "labels", 1)
    if sel.shape[0] != y.shape[0]:
        raise MetricsError(f"selection has {sel.shape[0]} samples but labels has {y.shape[0]}")
    if y.size == 0:
        raise MetricsError("labels: no samples")
    if sel.shape[1] == 0:
        raise MetricsError("selection: no layers")
    _check_range(sel, "selection", num_neurons)
    _check_range(y, "labels", num_classes)
    return sel, y


def class_neuron_usage(
    selection: Any, labels: Any, layer: int, num_classes: int, num_neurons: int
) -> np.ndarray:
    """``(K, N)`` float64: row ``k`` is the fraction of class ``k``'s samples routed to each neuron
    of ``layer`` (rows sum to 1); NaN rows for classes with no sample."""
    num_classes = _check_count(num_classes, "num_classes")
    num_neurons = _check_count(num_neurons, "num_neurons")
    sel, y = _selection_and_labels(selection, labels, num_neurons, num_classes)
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or not 0 <= layer < sel.shape[1]:
        raise MetricsError(f"layer: expected an index in [0, {sel.shape[1]}), got {layer!r}")
    counts = np.bincount(y * num_neurons + sel[:, layer], minlength=num_classes * num_neurons)
    counts = counts.reshape(num_classes, num_neurons).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    out = np.full_like(counts, np.nan)
    present = totals[:, 0] > 0
    out[present] = counts[present] / totals[present]
    return out


def specialization_stats(
    selection: Any,
    labels: Any,
    num_neurons: int,
    num_classes: int,
    gates: Any = None,
    class_cues: Sequence[str | None] | None = None,
    *,
    collapse_threshold: float = COLLAPSE_THRESHOLD,
) -> dict[str, float]:
    """Per DSTS layer ``j``: how the samples are spread over the neurons and what the gates choose.

    ``selection`` is ``(n, L)`` (the active neuron per sample and layer, ``DSTS.last_selection``
    concatenated over batches), ``gates`` the active neuron's gate decisions ``(n, L, C)`` in [0, 1]
    (1 = temporal operator), ``class_cues[k]`` is ``"spatial"``, ``"temporal"`` or None per class.

    Keys (all floats):

    - ``layer{j}/usage/neuron{i}``: fraction of samples routed to neuron ``i`` (every ``i < N``);
    - ``layer{j}/max_usage``; ``layer{j}/usage_entropy`` (nats) and ``layer{j}/usage_entropy_norm``
      (divided by ``log N``; 0 when ``N == 1``, where there is no spread to measure);
    - ``layer{j}/nmi``: :func:`routing_nmi` of class and neuron;
    - ``layer{j}/collapse``: 1.0 when one neuron takes more than ``collapse_threshold`` of the
      samples, else 0.0; always 0.0 when ``N == 1`` (no routing, nothing to collapse);
    - with ``gates``: ``layer{j}/temporal_fraction/all``, and ``.../neuron{i}`` for each neuron that
      got a sample: the mean gate value (for binary gates, the fraction of bits that choose the
      temporal operator) over the samples routed there;
    - with ``gates`` and ``class_cues``: ``.../temporal_cue`` and ``.../spatial_cue``, the same
      fraction over the samples of temporal-cue and of spatial-cue classes (each only when such
      samples exist), and ``.../cue_gap`` = temporal_cue - spatial_cue when both exist.
    """
    num_classes = _check_count(num_classes, "num_classes")
    num_neurons = _check_count(num_neurons, "num_neurons")
    if not 0.0 < float(collapse_threshold) < 1.0:
        raise MetricsError(f"collapse_threshold: expected a value in (0, 1), got {collapse_threshold!r}")
    sel, y = _selection_and_labels(selection, labels, num_neurons, num_classes)
    n, num_layers = sel.shape

    bits: np.ndarray | None = None
    if gates is not None:
        bits = _to_numpy(gates, "gates")
        if bits.ndim != 3 or bits.shape[:2] != (n, num_layers) or bits.shape[2] == 0:
            raise MetricsError(
                f"gates: expected shape ({n}, {num_layers}, C) with C > 0, got {tuple(bits.shape)}"
            )
        if bits.dtype.kind not in "fiub":
            raise MetricsError(f"gates: expected numbers, got dtype {bits.dtype}")
        bits = bits.astype(np.float64)
        if not np.isfinite(bits).all() or bits.min() < 0.0 or bits.max() > 1.0:
            raise MetricsError("gates: values must lie in [0, 1]")

    cue_of_sample: np.ndarray | None = None
    if class_cues is not None:
        cues = list(class_cues)
        if len(cues) != num_classes:
            raise MetricsError(f"class_cues: expected {num_classes} entries, got {len(cues)}")
        for k, cue in enumerate(cues):
            if cue is not None and cue not in CUES:
                raise MetricsError(f"class_cues[{k}]: expected 'spatial', 'temporal' or None, got {cue!r}")
        cue_of_sample = np.array([cues[k] or "" for k in y.tolist()], dtype=object)

    stats: dict[str, float] = {}
    for j in range(num_layers):
        prefix = f"layer{j}"
        col = sel[:, j]
        counts = np.bincount(col, minlength=num_neurons)
        usage = counts / n
        for i in range(num_neurons):
            stats[f"{prefix}/usage/neuron{i}"] = float(usage[i])
        max_usage = float(usage.max())
        entropy = _entropy_from_counts(counts, n)
        stats[f"{prefix}/max_usage"] = max_usage
        stats[f"{prefix}/usage_entropy"] = float(entropy)
        stats[f"{prefix}/usage_entropy_norm"] = (
            min(1.0, float(entropy / math.log(num_neurons))) if num_neurons > 1 else 0.0
        )
        stats[f"{prefix}/nmi"] = routing_nmi(y, col)
        collapsed = num_neurons > 1 and max_usage > collapse_threshold
        stats[f"{prefix}/collapse"] = 1.0 if collapsed else 0.0

        if bits is None:
            continue
        per_sample = bits[:, j, :].mean(axis=1)  # temporal share of each sample's channels
        stats[f"{prefix}/temporal_fraction/all"] = float(math.fsum(per_sample.tolist()) / n)
        for i in range(num_neurons):
            mine = per_sample[col == i]
            if mine.size:
                stats[f"{prefix}/temporal_fraction/neuron{i}"] = float(math.fsum(mine.tolist()) / mine.size)
        if cue_of_sample is None:
            continue
        by_cue: dict[str, float] = {}
        for cue in CUES:
            mine = per_sample[cue_of_sample == cue]
            if mine.size:
                by_cue[cue] = float(math.fsum(mine.tolist()) / mine.size)
                stats[f"{prefix}/temporal_fraction/{cue}_cue"] = by_cue[cue]
        if len(by_cue) == 2:
            stats[f"{prefix}/temporal_fraction/cue_gap"] = by_cue["temporal"] - by_cue["spatial"]
    return stats


_COLLAPSE_KEY = re.compile(r"^(.*?)layer(\d+)/collapse$")
_USAGE_KEY = re.compile(r"^(.*?)layer(\d+)/usage/neuron(\d+)$")


def collapse_warnings(stats: dict[str, float]) -> list[str]:
    """One human-readable line per collapsed layer of :func:`specialization_stats`.

    Keys may carry a prefix (``test/layer0/collapse``), as when the stats are merged into a run's
    metrics; the line then names the prefixed layer. Lines are ordered by prefix, then layer.
    """
    usage: dict[tuple[str, int], dict[int, float]] = {}
    collapsed: list[tuple[str, int]] = []
    for key, value in stats.items():
        if m := _USAGE_KEY.match(key):
            usage.setdefault((m[1], int(m[2])), {})[int(m[3])] = float(value)
        elif (m := _COLLAPSE_KEY.match(key)) and float(value) == 1.0:
            collapsed.append((m[1], int(m[2])))
    lines = []
    for prefix, j in sorted(collapsed):
        shares = usage.get((prefix, j), {})
        if shares:
            top = max(sorted(shares), key=lambda i: shares[i])
            lines.append(
                f"{prefix}layer{j}: routing collapsed, neuron {top} takes {shares[top]:.1%} of the samples "
                f"({len(shares)} neurons)"
            )
        else:
            lines.append(f"{prefix}layer{j}: routing collapsed onto one neuron")
    return lines


# ----------------------------------------------------------------------------------------------
# training-time routing


class TrainingRouting:
    """How a DSTS module routes while it trains, accumulated over an epoch, per layer ``j``:

    - ``layer{j}/selection_entropy_norm``: the mean over training samples of the entropy of the
      distribution the hard choice samples (``DSTSLayer.selection_probs``), over ``log N``;
    - ``layer{j}/argmax_agreement``: the share of samples whose sampled neuron is the argmax of the
      spikes (the neuron evaluation would choose);
    - ``layer{j}/usage_entropy_norm`` and ``layer{j}/max_usage``: the spread of the sampled neurons
      over the epoch (entropy over ``log N``; the largest share);
    - ``layer{j}/temporal_fraction``: the mean gate value the active neuron applied (1 chooses the
      temporal operator; hard entries are bits, soft ones fractions).

    Undefined values are NaN: with ``N = 1`` there is no spread, and ``3d`` neurons have no gates.
    It only reads what the forward recorded, so it draws no random number and changes nothing.
    """

    def __init__(self, num_layers: int, num_neurons: int) -> None:
        self.num_layers, self.num_neurons = num_layers, num_neurons
        self.samples = 0
        self.entropy = np.zeros(num_layers)
        self.agree = np.zeros(num_layers)
        self.gates = np.zeros(num_layers)
        self.gated = 0
        self.counts = np.zeros((num_layers, num_neurons), dtype=np.int64)

    def update(self, probs: Sequence[Any], selection: Any, gates: Any = None) -> None:
        """One forward: ``probs`` per layer ``(B, N)``, ``selection (B, L)``, ``gates (B, L, C)``."""
        sel = _int_array(selection, "selection", 2)
        for j, p in enumerate(probs):
            p = _to_numpy(p, "probs")
            logs = np.log(np.clip(p, np.finfo(np.float64).tiny, None))
            self.entropy[j] += float(-(p * logs).sum())
            self.agree[j] += int((p.argmax(axis=1) == sel[:, j]).sum())
            self.counts[j] += np.bincount(sel[:, j], minlength=self.num_neurons)
        if gates is not None:
            g = _to_numpy(gates, "gates")
            self.gates += g.mean(axis=2).sum(axis=0)
            self.gated += g.shape[0]
        self.samples += sel.shape[0]

    def result(self, prefix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        n, log_n = max(self.samples, 1), math.log(self.num_neurons) if self.num_neurons > 1 else math.nan
        for j in range(self.num_layers):
            usage = self.counts[j] / max(self.counts[j].sum(), 1)
            used = usage[usage > 0]
            key = f"{prefix}layer{j}/"
            out[key + "selection_entropy_norm"] = self.entropy[j] / n / log_n
            out[key + "argmax_agreement"] = self.agree[j] / n
            out[key + "usage_entropy_norm"] = float(-(used * np.log(used)).sum()) / log_n
            out[key + "max_usage"] = float(usage.max())
            out[key + "temporal_fraction"] = self.gates[j] / self.gated if self.gated else math.nan
        return out
