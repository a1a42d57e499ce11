"""Run a small study at each point of a grid of settings: the tool behind the calibration tables of
docs/study.md and docs/routing.md, each reproducible by one command.

At every grid point it writes a workspace (``<out>/<point>/``: ``params.yaml`` with the overrides,
the variants and seeds, the ablation files with the point's settings winning where a variant sets
the same key), generates the data there when the point changes
``data.generate`` (else it reads ``--data``), trains and evaluates every (variant, seed) with the
stage scripts, and writes the report (``reports/ablation.md``, ``summary.json``). A finished run is
not redone, so an interrupted sweep continues. At the end it prints one table row per point and
variant, and writes them to ``--json``.

``--train-only`` trains and stops: no evaluation, no report, the test split left unread. It is for
checks that must decide on validation alone, such as the doubling check of docs/study.md; its table
has the validation top-1 at the last epoch and the mean of the last three epochs.

    python -m pipeline.sweep --out /tmp/sweep --data data/generated --variants baseline dsts \\
        --seeds 0 1 2 --set train.epochs=12 --grid data.num_frames=8,16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

import yaml

from dsts.config import deep_merge, parse_override, read_yaml
from dsts.report import make_report
from dsts.runs import read_history, read_metrics, run_folder
from pipeline._cli import run
from pipeline.profile import write_ablations

ROOT = Path(__file__).resolve().parents[1]


def points(grid: list[str]) -> list[list[str]]:
    """``["a=1,2", "b=x"]`` -> ``[["a=1", "b=x"], ["a=2", "b=x"]]``."""
    axes = [
        [f"{key}={value}" for value in values.split(",")] for key, values in (g.split("=", 1) for g in grid)
    ]
    return [list(p) for p in itertools.product(*axes)] if axes else [[]]


def stage(workspace: Path, module: str, *args: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", module, "--params", "params.yaml", *args],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args)} failed in {workspace}:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def run_point(out: Path, overrides: list[str], args: argparse.Namespace) -> list[dict]:
    name = "_".join(o.replace("=", "-").replace("/", "-") for o in overrides) or "base"
    workspace = out / name
    workspace.mkdir(parents=True, exist_ok=True)
    tree = read_yaml(ROOT / "params.yaml")
    changes: dict = {}
    for text in [*args.set, *overrides, "tracking.enabled=false"]:
        changes = deep_merge(changes, parse_override(text))
    tree = deep_merge(tree, changes)
    tree["variants"], tree["seeds"] = args.variants, args.seeds
    if any(o.startswith("data.generate") for o in [*args.set, *overrides]) or not args.data:
        tree["data"]["root"] = str(workspace / "data")
        if not (workspace / "data" / "generated.json").is_file():
            (workspace / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
            stage(workspace, "pipeline.prepare", "--out", str(workspace / "data"))
    else:
        tree["data"]["root"] = str(Path(args.data).resolve())
    (workspace / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    if (workspace / "ablations").is_symlink():  # a workspace of an older sweep
        (workspace / "ablations").unlink()
    write_ablations(workspace / "ablations", changes)  # a point's setting wins over a variant's
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            folder = run_folder(variant, seed, workspace / "runs")
            done = folder.history.is_file() if args.train_only else folder.metrics.is_file()
            if not done:
                common = ["--variant", variant, "--seed", str(seed), "--out", str(folder.path)]
                took = stage(workspace, "pipeline.train", *common)
                if not args.train_only:
                    took += stage(workspace, "pipeline.evaluate", *common)
                (folder.path / "wall_seconds.txt").write_text(f"{took:.1f}\n")
            rows.append({"variant": variant, "seed": seed, "folder": folder})
    summary = {}
    if not args.train_only:
        make_report(workspace / "runs", workspace / "params.yaml", workspace / "reports")
        summary = json.loads((workspace / "reports" / "summary.json").read_text())
    table = []
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        walls = [float((r["folder"].path / "wall_seconds.txt").read_text()) for r in mine]
        curves = {
            r["seed"]: [row["val/top1"] for row in read_history(r["folder"].history) if "val/top1" in row]
            for r in mine
        }
        last3 = {seed: mean(curve[-3:]) for seed, curve in curves.items()}
        table.append(
            {
                "point": " ".join(overrides) or "(base)",
                "variant": variant,
                "seeds": len(mine),
                "val_top1": mean(curve[-1] for curve in curves.values()),
                "val_top1_last3": mean(last3.values()),
                "val_top1_last3_per_seed": last3,
                "test_top1": (
                    float("nan")
                    if args.train_only
                    else mean(read_metrics(r["folder"].metrics)["test/top1"] for r in mine)
                ),
                "test_top1_sd": summary.get(f"{variant}/top1_sd", float("nan")),
                "wall_seconds_per_run": mean(walls),
                "summary": {
                    k: v for k, v in summary.items() if k.startswith((f"{variant}/", f"{variant}_vs_"))
                },
            }
        )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="where the workspaces go (kept: a rerun continues)")
    parser.add_argument("--data", default=None, help="an existing generated benchmark to read")
    parser.add_argument("--variants", nargs="+", default=["baseline"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="applied at every point"
    )
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="one axis of the grid"
    )
    parser.add_argument("--json", default=None, help="also write the table here")
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="train and stop: validation curves only, the test split left unread",
    )
    args = parser.parse_args()
    out = Path(args.out)
    table = [row for p in points(args.grid) for row in run_point(out, p, args)]
    print("| point | variant | seeds | val top-1 | val top-1, last 3 | test top-1 ± sd | s per run |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        test = (
            "(not read)" if args.train_only else f"{100 * r['test_top1']:.1f} ± {100 * r['test_top1_sd']:.1f}"
        )
        print(
            f"| {r['point']} | {r['variant']} | {r['seeds']} | {100 * r['val_top1']:.1f} | "
            f"{100 * r['val_top1_last3']:.1f} | {test} | {r['wall_seconds_per_run']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run(main)
