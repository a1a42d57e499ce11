"""Stage ``evaluate``: test one trained (variant, seed) and write its metrics and plots.

Reads ``runs/<variant>/seed<S>/model.pt``; writes ``metrics.json`` (flat numbers, no timings, so
that it is byte-identical run after run), ``per_class.csv``, and ``plots/``: ``confusion.png`` and
one ``usage_layer<j>.png`` (class x neuron) per DSTS layer, and logs them to the MLflow run that
trained the model.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

from pipeline._cli import add_config_args, config_from_args, run
from pipeline.train import run_dir


def write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__)
    add_config_args(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<variant>/seed<S>)")
    args = parser.parse_args()
    cfg = config_from_args(args)

    from dsts import metrics as M
    from dsts.data import build_dataset, build_loader
    from dsts.engine import evaluation_metrics, load_model, predict, resolve_device
    from dsts.plots import plot_confusion, plot_usage_heatmap

    out = Path(args.out) if args.out else run_dir(cfg.variant, cfg.train.seed)
    device = resolve_device(cfg.train.device)
    model, saved = load_model(out / "model.pt", cfg, device)
    test_ds = build_dataset(cfg.data, "test", train=False, seed=cfg.train.seed)
    loader = build_loader(test_ds, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers)
    pred = predict(model, loader, device, cfg.train.bf16)
    num_classes = int(saved["num_classes"])
    cues = list(getattr(test_ds, "class_cues", [None] * num_classes))
    metrics = evaluation_metrics(
        pred, num_classes, cfg.model.dsts.num_neurons, cues, cfg.eval.top_k, prefix="test/"
    )
    last = saved["history"][-1] if saved["history"] else {}
    metrics.update({k: v for k, v in last.items() if k.startswith("train/")})
    metrics["num_parameters"] = float(sum(p.numel() for p in model.parameters()))

    names = list(saved["class_names"])
    preds = pred.scores.argmax(-1)
    per_class = M.per_class_accuracy(preds, pred.labels, num_classes)
    cm = M.confusion_matrix(preds, pred.labels, num_classes)
    partial = out / ".per_class.csv.tmp"
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "name", "cue", "support", "accuracy"])
        for k in range(num_classes):
            acc = per_class[k]
            writer.writerow(
                [k, names[k], cues[k] or "", int(cm[k].sum()), "" if acc != acc else repr(float(acc))]
            )
    os.replace(partial, out / "per_class.csv")
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    plot_confusion(cm, names, plot_dir / "confusion.png")
    plots = ["confusion.png"]
    if pred.selection is not None:
        n_neurons = cfg.model.dsts.num_neurons
        for layer in range(pred.selection.shape[1]):
            usage = M.class_neuron_usage(pred.selection, pred.labels, layer, num_classes, n_neurons)
            name = f"usage_layer{layer}.png"
            plot_usage_heatmap(
                usage, names, plot_dir / name, f"{cfg.variant} seed {cfg.train.seed}: layer {layer}"
            )
            plots.append(name)
        for line in M.collapse_warnings(metrics):
            print(f"warning: {line}")
    write_json(metrics, out / "metrics.json")

    if cfg.tracking.enabled:
        from dsts.tracking import Tracker

        tracker = Tracker(cfg)
        with tracker.run(saved["run_id"] or None) as t:
            t.log_metrics(metrics, step=cfg.train.epochs)
            t.log_artifact(out / "metrics.json")
            t.log_artifact(out / "per_class.csv")
            for name in plots:
                t.log_artifact(plot_dir / name, "plots")
            t.set_tag("eval_status", "done")
    print(
        f"evaluated {cfg.variant} seed {cfg.train.seed}: top1 {metrics['test/top1']:.4f} -> {out / 'metrics.json'}"
    )
    return 0


if __name__ == "__main__":
    run(main)
