"""Specialization: how a DSTS module spreads the samples over its neurons and what their gates choose,
after training (evaluation-mode routing, per class and cue) and while it trains.

Statistics are flat ``dict[str, float]`` keyed ``layer{j}/...``; the conventions of
:mod:`dsts.metrics` hold (deterministic, plain floats, one-line :class:`dsts.metrics.MetricsError`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from dsts.metrics import (
    CUES,
    MetricsError,
    check_count,
    check_range,
    entropy_from_counts,
    int_array,
    routing_nmi,
    to_numpy,
)

__all__ = ["TrainingRouting", "class_neuron_usage", "collapse_warnings", "specialization_stats"]

COLLAPSE_THRESHOLD = 0.9


def _selection_and_labels(
    selection: Any, labels: Any, num_neurons: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    sel = int_array(selection, "selection", 2)
    y = int_array(labels, "labels", 1)
    if sel.shape[0] != y.shape[0]:
        raise MetricsError(f"selection has {sel.shape[0]} samples but labels has {y.shape[0]}")
    if y.size == 0:
        raise MetricsError("labels: no samples")
    if sel.shape[1] == 0:
        raise MetricsError("selection: no layers")
    check_range(sel, "selection", num_neurons)
    check_range(y, "labels", num_classes)
    return sel, y


def class_neuron_usage(
    selection: Any, labels: Any, layer: int, num_classes: int, num_neurons: int
) -> np.ndarray:
    """``(K, N)`` float64: row ``k`` is the fraction of class ``k``'s samples routed to each neuron
    of ``layer`` (rows sum to 1); NaN rows for classes with no sample."""
    num_classes = check_count(num_classes, "num_classes")
    num_neurons = check_count(num_neurons, "num_neurons")
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
    num_classes = check_count(num_classes, "num_classes")
    num_neurons = check_count(num_neurons, "num_neurons")
    if not 0.0 < float(collapse_threshold) < 1.0:
        raise MetricsError(f"collapse_threshold: expected a value in (0, 1), got {collapse_threshold!r}")
    sel, y = _selection_and_labels(selection, labels, num_neurons, num_classes)
    n, num_layers = sel.shape

    bits: np.ndarray | None = None
    if gates is not None:
        bits = to_numpy(gates, "gates")
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
        entropy = entropy_from_counts(counts, n)
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
        sel = int_array(selection, "selection", 2)
        for j, p in enumerate(probs):
            p = to_numpy(p, "probs")
            logs = np.log(np.clip(p, np.finfo(np.float64).tiny, None))
            self.entropy[j] += float(-(p * logs).sum())
            self.agree[j] += int((p.argmax(axis=1) == sel[:, j]).sum())
            self.counts[j] += np.bincount(sel[:, j], minlength=self.num_neurons)
        if gates is not None:
            g = to_numpy(gates, "gates")
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
            out[key + "selection_entropy_norm"] = float(self.entropy[j] / n / log_n)
            out[key + "argmax_agreement"] = float(self.agree[j] / n)
            out[key + "usage_entropy_norm"] = float(-(used * np.log(used)).sum()) / log_n
            out[key + "max_usage"] = float(usage.max())
            out[key + "temporal_fraction"] = float(self.gates[j] / self.gated) if self.gated else math.nan
        return out
