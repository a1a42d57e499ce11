"""Plots: a readable PNG of the expected size, written atomically, with no figure left open."""

from __future__ import annotations

import math
import os

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

import dsts.plots as plots
from dsts.metrics import confusion_matrix
from dsts.specialization import class_neuron_usage

plt = plots.plt
LONG = "Back 15som 15twis FREE with a very long qualifier"


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def read_png(path) -> np.ndarray:
    """The image as (H, W, channels) floats; checks it is a non-empty PNG with some content."""
    assert path.stat().st_size > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 10  # not a blank canvas
    return img


def only_file(folder, name) -> None:
    assert sorted(os.listdir(folder)) == [name]  # no temporary file left behind


def make_cm(k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, 20 * k)
    preds = np.where(rng.random(labels.size) < 0.6, labels, rng.integers(0, k, labels.size))
    return confusion_matrix(preds, labels, k)


def test_backend_is_agg():
    assert plots.matplotlib.get_backend().lower() == "agg"


def test_confusion_png_and_size_grows_with_classes(tmp_path):
    small = plots.plot_confusion(make_cm(4), [f"c{i}" for i in range(4)], tmp_path / "a" / "cm.png")
    big = plots.plot_confusion(make_cm(48), [f"{LONG} {i}" for i in range(48)], tmp_path / "b" / "cm.png")
    img_small, img_big = read_png(small), read_png(big)
    h, w = img_small.shape[:2]
    assert 350 <= h <= 900 and 450 <= w <= 1100 and w > h  # room for the colorbar
    hb, wb = img_big.shape[:2]
    assert hb > 1.5 * h and wb > 1.5 * w
    assert hb <= 2200 and wb <= 2400  # capped
    only_file(tmp_path / "a", "cm.png")
    only_file(tmp_path / "b", "cm.png")


def test_confusion_accepts_tensors_and_a_class_without_samples(tmp_path):
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 0, 5]])
    out = plots.plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png")
    read_png(out)


def test_usage_heatmap_png(tmp_path):
    rng = np.random.default_rng(1)
    sel = rng.integers(0, 4, (60, 2))
    labels = np.arange(60) % 6
    usage = class_neuron_usage(sel, labels, 1, 7, 4)  # class 6 has no sample: a NaN row
    assert np.isnan(usage[6]).all()
    out = plots.plot_usage_heatmap(usage, [f"{LONG} {i}" for i in range(7)], tmp_path / "u.png", "Layer 1")
    h, w = read_png(out).shape[:2]
    assert 350 <= h <= 900 and 500 <= w <= 1500
    tall = plots.plot_usage_heatmap(
        np.full((40, 4), 0.25), [str(i) for i in range(40)], tmp_path / "t.png", "L"
    )
    assert read_png(tall).shape[0] > h
    assert sorted(os.listdir(tmp_path)) == ["t.png", "u.png"]


def test_learning_curves_png_with_gaps(tmp_path):
    history = [
        {"epoch": e, "train/loss": 1.0 / (e + 1), "val/top1": e / 10, "usage_entropy": 1.2 - e / 10}
        for e in range(4)
    ]
    history[2]["udl/meta_loss"] = 0.7  # present in one epoch only
    history[3]["val/top1"] = float("nan")  # drawn where finite
    out = plots.plot_learning_curves(history, tmp_path / "curves.png")
    h, w = read_png(out).shape[:2]
    assert (h, w) == (380, 3 * 480)  # three panels: losses, accuracy, other
    for row in history:
        row["lr"] = 1e-3
    with_lr = plots.plot_learning_curves(history, tmp_path / "lr.png")
    assert read_png(with_lr).shape[:2] == (380, 4 * 480)  # the learning rate gets its own panel
    one = plots.plot_learning_curves([{"epoch": 0, "loss": 1.0}], tmp_path / "one.png")
    assert read_png(one).shape[:2] == (380, 480)


def test_bar_ci_png(tmp_path):
    names = ["baseline", "static", "dsts_3d", "dsts", "dsts_udl", "dsts_udl_fo", "dsts_cm"]
    means = [0.5, 0.6, 0.55, 0.6, 0.7, 0.65, 0.62]
    lows = [m - 0.05 for m in means]
    highs = [m + 0.04 for m in means]
    out = plots.plot_bar_ci(names, means, lows, highs, tmp_path / "bars.png", "top-1", "Ablation")
    h, w = read_png(out).shape[:2]
    assert h == 450 and 500 <= w <= 1600
    only_file(tmp_path, "bars.png")


def test_seed_curves_png(tmp_path):
    epochs = [1, 2, 3]
    top1 = {
        "static": (epochs, [10.0, 20.0, 30.0], [1.0, 2.0, 3.0]),
        "dsts": (epochs, [12.0, 25.0, 33.0], [np.nan] * 3),
    }
    loss = {"dsts": (epochs, [2.0, 1.5, 1.2], [0.1, 0.1, 0.1])}
    out = plots.plot_seed_curves([("test top-1 (%)", top1), ("train loss", loss)], tmp_path / "curves.png")
    assert read_png(out).shape[:2] == (420, 2 * 550)
    empty = plots.plot_seed_curves([("test top-1 (%)", top1), ("train loss", {})], tmp_path / "empty.png")
    assert read_png(empty).shape[:2] == (420, 2 * 550)  # the empty panel says so
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "empty.png"]


def test_routing_png(tmp_path):
    epochs = [1, 2, 3]
    entropy = {
        ("dsts", 0): (epochs, [0.9, 0.7, 0.5], [0.05, 0.05, 0.05]),
        ("dsts", 1): (epochs, [0.8, 0.6, 0.4], [np.nan] * 3),
        (LONG, 0): (epochs, [1.0, 1.0, 0.95], [0.0, 0.0, 0.0]),
    }
    agreement = {("dsts", 0): (epochs, [0.4, 0.6, 0.8], [0.1, 0.1, 0.1])}
    panels = [("selection entropy", entropy), ("argmax agreement", agreement)]
    out = plots.plot_routing(panels, tmp_path / "routing.png")
    assert read_png(out).shape[:2] == (420, 2 * 550)
    empty = plots.plot_routing([("selection entropy", {}), ("argmax agreement", {})], tmp_path / "empty.png")
    assert read_png(empty).shape[:2] == (420, 2 * 550)  # no routed variant: each panel says so
    assert sorted(os.listdir(tmp_path)) == ["empty.png", "routing.png"]


def test_run_routing_draws_the_recorded_statistics_only(tmp_path):
    history = [
        {"epoch": e, "train/loss": 1.0 / e, "train/layer0/selection_entropy_norm": 1.0 - 0.1 * e}
        | {"train/layer1/selection_entropy_norm": 0.9, "train/layer0/temporal_fraction": math.nan}
        for e in (1, 2, 3)
    ]
    out = plots.plot_run_routing(history, "dsts", tmp_path / "routing.png")
    assert read_png(out).shape[:2] == (420, 550)  # one panel: temporal_fraction is undefined throughout
    history[1]["train/layer0/max_usage"] = 0.5
    out = plots.plot_run_routing(history, "dsts", tmp_path / "routing.png")
    assert read_png(out).shape[:2] == (420, 2 * 550)
    assert (
        plots.plot_run_routing([{"epoch": 1, "train/loss": 1.0}], "baseline", tmp_path / "none.png") is None
    )
    assert sorted(os.listdir(tmp_path)) == ["routing.png"]


def test_layer_heatmaps_png(tmp_path):
    rows = ["static", "dsts", LONG]
    grid = np.array([[0.6, 0.7], [np.nan, np.nan], [0.5, 0.2]])
    panels = [("fraction", grid, (0.0, 1.0), "viridis"), ("gap", grid - 0.5, (-0.5, 0.5), "RdBu_r")]
    out = plots.plot_layer_heatmaps(rows, panels, tmp_path / "h.png", "title")
    h, w = read_png(out).shape[:2]
    assert (h, w) == (100 * (1.6 + 0.45 * 3), 2 * 100 * (2.6 + 0.7 * 2))
    none = plots.plot_layer_heatmaps(
        [], [("fraction", np.empty((0, 0)), (0, 1), "viridis")], tmp_path / "n.png", "t"
    )
    assert read_png(none).shape[:2] == (250, 600)


def test_overwrites_atomically(tmp_path):
    target = tmp_path / "cm.png"
    plots.plot_confusion(make_cm(3), ["a", "b", "c"], target)
    first = target.read_bytes()
    plots.plot_confusion(make_cm(3, seed=5), ["a", "b", "c"], target)
    assert target.read_bytes() != first
    only_file(tmp_path, "cm.png")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: plots.plot_confusion(make_cm(3), ["a", "b"], p), "class_names: expected 3 names"),
        (lambda p: plots.plot_confusion(np.zeros((2, 3)), ["a", "b"], p), "cm: expected a square"),
        (lambda p: plots.plot_confusion(-np.ones((2, 2)), ["a", "b"], p), "cm: counts must be"),
        (lambda p: plots.plot_usage_heatmap(np.full((2, 2), 1.5), ["a", "b"], p, "t"), "usage: values must"),
        (lambda p: plots.plot_usage_heatmap(np.zeros(3), ["a"], p, "t"), "usage: expected a (K, N)"),
        (lambda p: plots.plot_learning_curves([], p), "history: no epochs"),
        (lambda p: plots.plot_learning_curves([{"loss": 1.0}], p), "history[0]: expected a mapping"),
        (lambda p: plots.plot_learning_curves([{"epoch": 0}], p), "no metric besides 'epoch'"),
        (lambda p: plots.plot_learning_curves([{"epoch": 0, "x": "a"}], p), "history[0]['x']: not a number"),
        (
            lambda p: plots.plot_bar_ci(["a"], [0.5], [0.6], [0.7], p, "y", "t"),
            "expected low <= mean <= high",
        ),
        (
            lambda p: plots.plot_bar_ci(["a", "b"], [0.5], [0.4], [0.7], p, "y", "t"),
            "means: expected 2 values",
        ),
        (lambda p: plots.plot_bar_ci([], [], [], [], p, "y", "t"), "names: no bars"),
        (lambda p: plots.plot_seed_curves([], p), "panels: nothing to draw"),
        (
            lambda p: plots.plot_seed_curves([("loss", {"a": ([1, 2], [1.0], [0.1])})], p),
            "loss / a: epochs, means",
        ),
        (lambda p: plots.plot_routing([], p), "panels: nothing to draw"),
        (
            lambda p: plots.plot_routing([("entropy", {"dsts": ([1], [0.5], [0.1])})], p),
            "entropy: expected (variant, layer) keys, got 'dsts'",
        ),
        (
            lambda p: plots.plot_routing([("entropy", {("dsts", 0): ([1, 2], [0.5], [0.1])})], p),
            "entropy / ('dsts', 0): epochs, means",
        ),
        (lambda p: plots.plot_layer_heatmaps(["a"], [], p, "t"), "panels: nothing to draw"),
        (
            lambda p: plots.plot_layer_heatmaps(
                ["a", "b"], [("gap", np.zeros((3, 2)), (0, 1), "viridis")], p, "t"
            ),
            "gap: expected a (2, layers) matrix",
        ),
    ],
)
def test_bad_input_writes_nothing_and_keeps_the_old_file(tmp_path, call, message):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    with pytest.raises(plots.PlotError) as info:
        call(target)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert target.read_bytes() == b"old"
    only_file(tmp_path, "fig.png")


def test_failed_save_removes_the_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "cm.png"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(plots.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_confusion(make_cm(3), ["a", "b", "c"], target)
    assert os.listdir(tmp_path) == []
