"""The ablation report: the positive control's verdict, seed statistics, explicit paired comparisons,
the cues learned, convergence, specialization and cost, from the run files.

It reads only what the ``train`` and ``evaluate`` stages wrote under ``runs/<variant>/seed<S>/``
(``load.py``), computes its tables on pandas with the statistics of ``dsts/stats.py``
(``tables.py``, the verdicts' numbers in ``verdicts.py``), renders ``ablation.md`` (``text.py``,
its sentences in ``findings.py``), flattens ``summary.json`` (``keys.py``) and draws its figures
with ``dsts/plots.py``. It builds no model, so it needs neither ``dsts.model`` nor ``dsts.engine``
(nor torch).

Outputs, in ``out_dir``: ``ablation.csv`` (one row per variant), ``runs.csv`` (per run),
``comparisons.csv`` (per compared pair and metric), ``specialization.csv`` (per variant and layer),
``curves.csv`` (mean validation top-1 per epoch, a column per variant, for ``dvc plots``),
``ablation.md``, ``summary.json`` (for ``dvc metrics``: no timing, so a rerun writes the same bytes)
and ``top1_ci.png``, ``mca_ci.png``, ``learning_curves.png``, ``routing.png``,
``specialization.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsts.files import staged_folder, write_json, write_text
from dsts.plots import ROUTING_STATS, plot_bar_ci, plot_layer_heatmaps, plot_routing, plot_seed_curves
from dsts.report.keys import summary
from dsts.report.load import (
    DEFAULT_COMPARISONS,
    ReportError,
    Run,
    load_runs,
    read_comparisons,
    read_settings,
    read_study,
)
from dsts.report.tables import Report, build_report, wide_curve
from dsts.report.text import render_markdown
from dsts.stats import ALPHA, POWER

__all__ = [
    "ALPHA",
    "DEFAULT_COMPARISONS",
    "OUTPUTS",
    "POWER",
    "Report",
    "ReportError",
    "Run",
    "build_report",
    "load_runs",
    "make_report",
    "render_markdown",
    "summary",
    "write_report",
]

TABLES = {  # file -> Report attribute
    "ablation.csv": "ablation",
    "runs.csv": "runs",
    "comparisons.csv": "comparisons",
    "specialization.csv": "specialization",
}
FIGURES = ("top1_ci.png", "mca_ci.png", "learning_curves.png", "routing.png", "specialization.png")
OUTPUTS = tuple(sorted([*TABLES, "curves.csv", "ablation.md", "summary.json", *FIGURES]))


def _plot_bars(report: Report, metric: str, label: str, path: Path) -> None:
    table = report.ablation
    mean = 100.0 * table[f"{metric}_mean"]
    low, high = 100.0 * table[f"{metric}_ci_low"], 100.0 * table[f"{metric}_ci_high"]
    one_seed = low.isna() | high.isna()  # no interval to draw: a bar without whiskers
    low, high = low.mask(one_seed, mean), high.mask(one_seed, mean)
    ci = f"{100 * (1 - report.alpha):g}% CI over seeds" if len(report.seeds) > 1 else "one seed: no CI"
    plot_bar_ci(table["variant"], mean, low, high, path, f"{label} (%)", f"{label} per variant ({ci})")


def _plot_curves(report: Report, path: Path) -> None:
    panels = []
    for metric, label, scale in (
        ("val/top1", "validation top-1 (%)", 100.0),
        ("train/loss", "train loss", 1.0),
    ):
        curves = report.curves[report.curves["metric"] == metric]
        by_variant = {v: curves[curves["variant"] == v] for v in report.variants}
        lines = {v: (c["epoch"], scale * c["mean"], scale * c["sd"]) for v, c in by_variant.items() if len(c)}
        panels.append((label, lines))
    plot_seed_curves(panels, path)


def _plot_routing(report: Report, path: Path) -> None:
    """The trajectories of the variants whose selection has an entropy (more than one neuron)."""
    parsed = report.curves["metric"].str.extract(r"^train/layer(\d+)/(.+)$")
    curves = report.curves.assign(layer=parsed[0], stat=parsed[1]).dropna(subset=["layer"])
    routed = set(curves.loc[curves["stat"] == "selection_entropy_norm", "variant"])
    panels = []
    for stat, label in ROUTING_STATS.items():
        mine = curves[(curves["stat"] == stat) & curves["variant"].isin(routed)]
        lines = {
            (v, int(j)): (c["epoch"], c["mean"], c["sd"]) for (v, j), c in mine.groupby(["variant", "layer"])
        }
        order = sorted(lines, key=lambda key: (report.variants.index(key[0]), key[1]))
        panels.append((label, {key: lines[key] for key in order}))
    plot_routing(panels, path)


def _plot_specialization(report: Report, path: Path) -> None:
    table = report.specialization
    rows = [v for v in report.variants if v in set(table["variant"])]
    layers = int(table["layer"].max()) + 1 if rows else 0
    grids = {}
    for stat in ("tf_temporal_cue", "tf_spatial_cue", "cue_gap", "usage_entropy_norm"):
        grid = table.pivot(index="variant", columns="layer", values=stat).reindex(rows)
        grids[stat] = grid.reindex(columns=range(layers)).to_numpy(dtype=np.float64)
    gap = np.abs(grids["cue_gap"][np.isfinite(grids["cue_gap"])])
    bound = max(0.05, float(gap.max()) if gap.size else 0.05)
    panels = [
        ("temporal fraction, temporal-cue classes", grids["tf_temporal_cue"], (0.0, 1.0), "viridis"),
        ("temporal fraction, spatial-cue classes", grids["tf_spatial_cue"], (0.0, 1.0), "viridis"),
        ("gap (temporal-cue minus spatial-cue)", grids["cue_gap"], (-bound, bound), "RdBu_r"),
        ("normalized usage entropy", grids["usage_entropy_norm"], (0.0, 1.0), "viridis"),
    ]
    title = "Specialization per variant and layer (means over seeds; grey: undefined)"
    plot_layer_heatmaps(rows, panels, path, title, empty="no variant has DSTS layers")


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write every output through a staging folder beside ``out_dir``: a failure leaves ``out_dir``
    as it was; other files in it are kept."""
    with staged_folder(out_dir) as stage:
        for name, attribute in TABLES.items():
            write_text(stage / name, getattr(report, attribute).to_csv(index=False, na_rep="NaN"))
        write_text(stage / "curves.csv", wide_curve(report).to_csv(index=False, na_rep="NaN"))
        write_text(stage / "ablation.md", render_markdown(report))
        write_json(stage / "summary.json", summary(report))
        _plot_bars(report, "top1", "top-1", stage / "top1_ci.png")
        _plot_bars(report, "mca", "mean class accuracy", stage / "mca_ci.png")
        _plot_curves(report, stage / "learning_curves.png")
        _plot_routing(report, stage / "routing.png")
        _plot_specialization(report, stage / "specialization.png")
    return [Path(out_dir) / name for name in OUTPUTS]


def make_report(
    runs_dir: str | Path,
    params: str | Path,
    out_dir: str | Path,
    alpha: float = ALPHA,
    power: float = POWER,
) -> Report:
    """Read ``variants``, ``seeds`` and ``report.comparisons`` (default: ``DEFAULT_COMPARISONS``)
    from ``params`` and every run's files, compute the report and write it to ``out_dir``. Bad
    input is a :class:`dsts.errors.DSTSError` and writes nothing."""
    variants, seeds = read_study(params)
    comparisons = read_comparisons(params)
    configs = read_settings(params, variants, seeds[0])
    runs = load_runs(runs_dir, variants, seeds)
    report = build_report(runs, variants, seeds, comparisons, alpha, power, configs)
    write_report(report, out_dir)
    return report
