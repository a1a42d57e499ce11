"""The evaluation and report figures, drawn with matplotlib's Agg backend: every figure of the
project is drawn here, from plain numbers, so that callers hold no matplotlib code.

Each function checks its input first (so bad input leaves nothing behind), writes the PNG
atomically (a temporary file in the target folder, then ``os.replace``: a reader never sees half an
image and an existing file survives a failure) and closes its figure. Figure sizes grow with the
number of classes (within caps) and with the longest (shortened) class name, at a fixed DPI and
without ``bbox_inches="tight"``, so that the pixel size is predictable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dsts.errors import DSTSError  # noqa: E402
from dsts.files import atomic_write  # noqa: E402

__all__ = [
    "PlotError",
    "plot_bar_ci",
    "plot_confusion",
    "plot_layer_heatmaps",
    "plot_learning_curves",
    "plot_routing",
    "plot_run_routing",
    "plot_seed_curves",
    "plot_usage_heatmap",
]

DPI = 100
NAME_LIMIT = 32  # longer class names are shortened with an ellipsis


class PlotError(DSTSError, ValueError):
    """Bad input to a plot (shapes or lengths that do not match, values out of range)."""


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Tensors (any device, bf16 included) and array-likes to numpy, floats as float64. A tensor is
    known by its methods, so that the report can draw without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "is_floating_point"):
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "O":
        raise PlotError(f"{name}: not a numeric array")
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr


def _short(name: Any) -> str:
    """Shorten in the middle: fine-grained class names often differ only at their end."""
    text = str(name)
    if len(text) <= NAME_LIMIT:
        return text
    head = (NAME_LIMIT - 1) // 2
    tail = NAME_LIMIT - 1 - head
    return text[:head] + "\u2026" + text[-tail:]


def _label_inches(names: Sequence[str], fontsize: float) -> float:
    """Rough space a rotated column of tick labels needs (about 0.6 em per character)."""
    longest = max((len(n) for n in names), default=0)
    return 0.6 * longest * fontsize / 72.0


def _tick_fontsize(count: int) -> float:
    """Shrink tick labels as their number grows, so that 48 classes still fit."""
    return float(max(4.0, min(9.0, 240.0 / max(count, 1))))


def _clip(value: float, low: float, high: float) -> float:
    return float(min(high, max(low, value)))


def _names(class_names: Sequence[Any], count: int, what: str) -> list[str]:
    names = list(class_names)
    if len(names) != count:
        raise PlotError(f"class_names: expected {count} names for the {what}, got {len(names)}")
    return [_short(n) for n in names]


@contextmanager
def _figure(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``plt.subplots(*args, **kwargs)`` to draw on in the block; on a clean exit the figure is
    written to ``path`` as PNG, atomically. The figure is closed either way."""
    fig, axes = plt.subplots(*args, dpi=DPI, **kwargs)
    try:
        yield fig, axes
        with atomic_write(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _heatmap(ax: Any, values: np.ndarray, vmin: float, vmax: float, cmap: str = "viridis") -> Any:
    colours = plt.get_cmap(cmap).with_extremes(bad="lightgrey")  # NaN: undefined, drawn grey
    return ax.imshow(
        np.ma.masked_invalid(values),
        cmap=colours,
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )


def _write_cells(ax: Any, texts: Sequence[Sequence[str]], dark: np.ndarray, fontsize: float) -> None:
    """Write ``texts[r][c]`` in each non-empty cell, white on ``dark`` cells, black elsewhere."""
    for r, row in enumerate(texts):
        for c, text in enumerate(row):
            if text:
                colour = "white" if dark[r, c] else "black"
                ax.text(c, r, text, ha="center", va="center", fontsize=fontsize, color=colour)


def plot_confusion(cm: Any, class_names: Sequence[Any], path: str | os.PathLike[str]) -> Path:
    """Confusion matrix, coloured by the fraction of each true class (rows); counts written in the
    cells when there are at most 12 classes. Grey rows: classes with no sample."""
    counts = to_numpy(cm, "cm")
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise PlotError(f"cm: expected a square (K, K) matrix, got shape {tuple(counts.shape)}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise PlotError("cm: counts must be finite and non-negative")
    k = counts.shape[0]
    names = _names(class_names, k, "confusion matrix")
    support = counts.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(support > 0, counts / np.where(support > 0, support, 1.0), np.nan)

    fs = _tick_fontsize(k)
    side = _clip(3.5 + 0.22 * k, 4.0, 18.0) + _label_inches(names, fs)
    with _figure(path, figsize=(side + 1.2, side), layout="constrained") as (fig, ax):
        im = _heatmap(ax, frac, 0.0, 1.0)
        fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
        ax.set_xticks(range(k), names, rotation=90, fontsize=fs)
        ax.set_yticks(range(k), names, fontsize=fs)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        total = int(round(float(counts.sum())))
        ax.set_title(f"Confusion matrix ({total} samples, rows normalized)")
        if k <= 12:
            texts = [[f"{v:g}" if v else "" for v in row] for row in counts]
            _write_cells(ax, texts, np.nan_to_num(frac, nan=1.0) < 0.5, fs)
    return Path(path)


def plot_usage_heatmap(
    usage: Any, class_names: Sequence[Any], path: str | os.PathLike[str], title: str
) -> Path:
    """Class x neuron routing heatmap (rows from :func:`dsts.specialization.class_neuron_usage`, values in
    [0, 1], NaN rows drawn grey)."""
    values = to_numpy(usage, "usage")
    if values.ndim != 2 or 0 in values.shape:
        raise PlotError(f"usage: expected a (K, N) matrix, got shape {tuple(values.shape)}")
    finite = values[np.isfinite(values)]
    if np.isinf(values).any() or (finite < 0).any() or (finite > 1).any():
        raise PlotError("usage: values must lie in [0, 1] (NaN for a class with no sample)")
    k, n = values.shape
    names = _names(class_names, k, "usage heatmap")

    width = _clip(3.5 + 0.45 * n, 5.0, 14.0) + _label_inches(names, _tick_fontsize(k))
    height = _clip(1.8 + 0.22 * k, 3.5, 18.0)
    with _figure(path, figsize=(width, height), layout="constrained") as (fig, ax):
        im = _heatmap(ax, values, 0.0, 1.0)
        fig.colorbar(im, ax=ax, label="fraction of the class's samples", shrink=0.8)
        ax.set_xticks(range(n), [f"n{i}" for i in range(n)], fontsize=_tick_fontsize(n))
        ax.set_yticks(range(k), names, fontsize=_tick_fontsize(k))
        ax.set_xlabel("neuron")
        ax.set_ylabel("class")
        ax.set_title(str(title))
        if k * n <= 160:
            texts = [[f"{v:.2f}" if np.isfinite(v) else "" for v in row] for row in values]
            _write_cells(ax, texts, np.nan_to_num(values, nan=1.0) < 0.5, _tick_fontsize(max(k, n)))
    return Path(path)


TITLES = {"loss": "Losses", "accuracy": "Accuracy", "other": "Other metrics", "lr": "Learning rate"}
YLABELS = {"loss": "loss", "accuracy": "accuracy", "other": "value", "lr": "learning rate"}
_TOPK = re.compile(r"(^|[/_.\-])top\d")


def _panel_of(metric: str) -> str:
    low = metric.lower()
    if low == "lr" or low.endswith(("/lr", "_lr", ".lr")):
        return "lr"  # its own panel: its scale is far below every other metric's
    if "loss" in low:
        return "loss"
    if "acc" in low or _TOPK.search(low):
        return "accuracy"
    return "other"


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One panel each for losses, accuracies, other metrics and the learning rate (only the panels
    that have a metric), over epochs. A metric missing from some epochs (or non-finite there) is
    drawn where it is present."""
    rows = list(history)
    if not rows:
        raise PlotError("history: no epochs")
    series: dict[str, list[tuple[float, float]]] = {}
    for idx, row in enumerate(rows):
        if not isinstance(row, Mapping) or "epoch" not in row:
            raise PlotError(f"history[{idx}]: expected a mapping with an 'epoch' key")
        try:
            epoch = float(row["epoch"])
        except (TypeError, ValueError):
            raise PlotError(f"history[{idx}]['epoch']: not a number: {row['epoch']!r}") from None
        for key, value in row.items():
            if key == "epoch":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise PlotError(f"history[{idx}][{key!r}]: not a number: {value!r}")
            if math.isfinite(float(value)):
                series.setdefault(str(key), []).append((epoch, float(value)))
            else:
                series.setdefault(str(key), [])
    if not series:
        raise PlotError("history: no metric besides 'epoch'")

    integral_epochs = all(float(r["epoch"]).is_integer() for r in rows)
    panels: dict[str, list[str]] = {}
    for name in sorted(series):
        panels.setdefault(_panel_of(name), []).append(name)
    order = [p for p in ("loss", "accuracy", "other", "lr") if p in panels]
    size = (4.8 * len(order), 3.8)
    with _figure(path, 1, len(order), figsize=size, layout="constrained", squeeze=False) as (_, axes):
        for ax, panel in zip(axes[0], order, strict=True):
            for name in panels[panel]:
                points = sorted(series[name])
                xs = [p[0] for p in points]
                ys = [p[1] for p in points]
                ax.plot(xs, ys, marker="o", markersize=3, label=name)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=integral_epochs))
            ax.set_ylabel(YLABELS[panel])
            ax.set_title(TITLES[panel])
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    return Path(path)


def plot_bar_ci(
    names: Sequence[Any],
    means: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    path: str | os.PathLike[str],
    ylabel: str,
    title: str,
) -> Path:
    """Bars of ``means`` with asymmetric error bars from ``lows`` to ``highs`` (a confidence interval
    per variant); each mean is written above its bar."""
    labels = [_short(n) for n in names]
    m = to_numpy(list(means), "means").astype(np.float64)
    lo = to_numpy(list(lows), "lows").astype(np.float64)
    hi = to_numpy(list(highs), "highs").astype(np.float64)
    count = len(labels)
    if count == 0:
        raise PlotError("names: no bars")
    for what, arr in (("means", m), ("lows", lo), ("highs", hi)):
        if arr.shape != (count,):
            raise PlotError(f"{what}: expected {count} values (one per name), got shape {tuple(arr.shape)}")
        if not np.isfinite(arr).all():
            raise PlotError(f"{what}: contains NaN or infinity")
    bad = np.nonzero((lo > m) | (m > hi))[0]
    if bad.size:
        i = int(bad[0])
        raise PlotError(f"bar {labels[i]!r}: expected low <= mean <= high, got {lo[i]} / {m[i]} / {hi[i]}")

    width = _clip(2.0 + 0.7 * count, 5.0, 16.0)
    with _figure(path, figsize=(width, 4.5), layout="constrained") as (_, ax):
        xs = np.arange(count)
        ax.bar(
            xs,
            m,
            yerr=np.stack([m - lo, hi - m]),
            capsize=4,
            color="tab:blue",
            alpha=0.8,
            error_kw={"elinewidth": 1.2},
        )
        for x, mean, top in zip(xs, m, hi, strict=True):
            ax.annotate(
                f"{mean:.3g}",
                (x, top),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        long_names = count > 6 or max(len(s) for s in labels) > 10
        ax.set_xticks(
            xs,
            labels,
            rotation=35 if long_names else 0,
            ha="right" if long_names else "center",
            fontsize=_tick_fontsize(count),
        )
        ax.set_ylabel(str(ylabel))
        ax.set_title(str(title))
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.12)
    return Path(path)


def _curve_panels(
    panels: Sequence[tuple[str, Mapping[Any, Any]]],
    path: str | os.PathLike[str],
    style: Any,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Side-by-side panels of mean curves with +- sd bands; ``style(name) -> (colour, linestyle,
    label)`` draws each line."""
    if not panels:
        raise PlotError("panels: nothing to draw")
    lines = {}
    for label, curves in panels:
        for name, curve in curves.items():
            xs, ys, sd = (to_numpy(list(c), f"{label} / {name}").astype(np.float64) for c in curve)
            if not xs.shape == ys.shape == sd.shape or xs.ndim != 1:
                raise PlotError(f"{label} / {name}: epochs, means and sds differ in length")
            lines[label, name] = (xs, ys, sd)
    styles = {name: style(name) for _, curves in panels for name in curves}
    size = (5.5 * len(panels), 4.2)
    with _figure(path, 1, len(panels), figsize=size, layout="constrained", squeeze=False) as (_, axes):
        for ax, (label, curves) in zip(axes[0], panels, strict=True):
            for name in curves:
                xs, ys, sd = lines[label, name]
                colour, linestyle, line_label = styles[name]
                ax.plot(xs, ys, marker="o", markersize=3, color=colour, ls=linestyle, label=line_label)
                band = np.isfinite(sd)
                if band.any():
                    ax.fill_between(
                        xs[band], (ys - sd)[band], (ys + sd)[band], color=colour, alpha=0.12, lw=0
                    )
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ylim is not None:
                ax.set_ylim(*ylim)
            ax.set_ylabel(label)
            ax.set_title(f"{label}: mean over seeds (band: ± sd)")
            ax.grid(True, alpha=0.3)
            if curves:
                ax.legend(fontsize=7, loc="best")
            else:
                ax.text(0.5, 0.5, f"no {label} recorded", ha="center", va="center", transform=ax.transAxes)
    return Path(path)


def plot_seed_curves(panels: Sequence[tuple[str, Mapping[str, Any]]], path: str | os.PathLike[str]) -> Path:
    """Side-by-side panels of curves over epochs, one ``(label, {name: (epochs, means, sds)})`` per
    panel: a line per name for the mean over seeds and a band of +- sd where the sd is defined. A
    name keeps its colour across panels; an empty panel says so."""
    names = list(dict.fromkeys(name for _, curves in panels for name in curves))
    colours = plt.get_cmap("tab10")
    return _curve_panels(panels, path, lambda name: (colours(names.index(name) % 10), "-", _short(name)))


LAYER_STYLES = ("-", "--", ":", "-.")
# The training-time routing statistics (``train/layer{j}/<stat>`` in history.csv) and their axis labels.
ROUTING_STATS = {
    "selection_entropy_norm": "normalized selection entropy",
    "argmax_agreement": "argmax agreement",
    "usage_entropy_norm": "normalized usage entropy",
    "max_usage": "largest neuron usage",
    "temporal_fraction": "temporal gate fraction",
}
_ROUTING_KEY = re.compile(r"^train/layer(\d+)/(.+)$")


def plot_routing(
    panels: Sequence[tuple[str, Mapping[tuple[str, int], Any]]], path: str | os.PathLike[str]
) -> Path:
    """Training-time routing trajectories: one ``(label, {(variant, layer): (epochs, means, sds)})``
    per statistic, a line per variant and layer (colour: variant, line style: layer) on a [0, 1]
    axis, since every statistic drawn is a share or a normalized entropy."""
    for label, curves in panels:
        for key in curves:
            if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], int | np.integer)):
                raise PlotError(f"{label}: expected (variant, layer) keys, got {key!r}")
    variants = list(dict.fromkeys(key[0] for _, curves in panels for key in curves))
    colours = plt.get_cmap("tab10")

    def style(key: tuple[str, int]) -> tuple[Any, str, str]:
        variant, layer = key
        colour = colours(variants.index(variant) % 10)
        return colour, LAYER_STYLES[int(layer) % len(LAYER_STYLES)], f"{_short(variant)} layer {layer}"

    return _curve_panels(panels, path, style, (-0.02, 1.02))


def plot_run_routing(
    history: Sequence[Mapping[str, Any]], name: str, path: str | os.PathLike[str]
) -> Path | None:
    """One run's routing trajectories from its history rows (``epoch`` and ``train/layer{j}/<stat>``):
    a panel per statistic of ``ROUTING_STATS`` with a value at some epoch, a line per layer. ``None``
    (and no file) when the run routes nothing: no DSTS layer, or one neuron."""
    curves: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for row in history:
        for key, value in row.items():
            match = _ROUTING_KEY.match(str(key))
            if match and match.group(2) in ROUTING_STATS and math.isfinite(float(value)):
                curves.setdefault((match.group(2), int(match.group(1))), []).append(
                    (float(row["epoch"]), float(value))
                )
    panels = []
    for stat, label in ROUTING_STATS.items():
        lines = {}
        for (kind, layer), points in sorted(curves.items()):
            if kind == stat:
                xs, ys = zip(*sorted(points))
                lines[name, layer] = (xs, ys, [math.nan] * len(xs))
        if lines:
            panels.append((label, lines))
    return plot_routing(panels, path) if panels else None


def plot_layer_heatmaps(
    rows: Sequence[Any],
    panels: Sequence[tuple[str, Any, tuple[float, float], str]],
    path: str | os.PathLike[str],
    title: str,
    empty: str = "nothing to draw",
) -> Path:
    """Side-by-side row x layer heatmaps, one ``(title, values, (vmin, vmax), colormap)`` per panel,
    each value written in its cell (NaN: grey, "n/a"). With no rows the figure says ``empty``."""
    if not panels:
        raise PlotError("panels: nothing to draw")
    names = [_short(r) for r in rows]
    grids = [to_numpy(values, t).astype(np.float64) for t, values, _, _ in panels]
    layers = grids[0].shape[-1]
    for (t, _, _, _), grid in zip(panels, grids, strict=True):
        if grid.shape != (len(names), layers):
            raise PlotError(f"{t}: expected a ({len(names)}, layers) matrix, got shape {tuple(grid.shape)}")
    if not names:
        with _figure(path, figsize=(6, 2.5)) as (_, ax):
            ax.axis("off")
            ax.text(0.5, 0.5, empty, ha="center", va="center")
        return Path(path)
    size = ((2.6 + 0.7 * layers) * len(panels), 1.6 + 0.45 * len(names))
    with _figure(path, 1, len(panels), figsize=size, layout="constrained", squeeze=False) as (fig, axes):
        for ax, (panel_title, _, (vmin, vmax), cmap), grid in zip(axes[0], panels, grids, strict=True):
            im = _heatmap(ax, grid, vmin, vmax, cmap)
            shade = (grid - vmin) / (vmax - vmin)
            dark = shade < 0.5 if cmap == "viridis" else np.abs(shade - 0.5) > 0.3  # NaN is never dark
            texts = [[f"{v:.2f}" if np.isfinite(v) else "n/a" for v in row] for row in grid]
            _write_cells(ax, texts, dark, 7)
            ax.set_xticks(range(layers), [f"layer {j}" for j in range(layers)], fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ax.set_title(panel_title, fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(title, fontsize=10)
    return Path(path)
