"""Stage ``evaluate``: test one trained (variant, seed) and write its metrics, cost and plots.

Reads ``runs/<variant>/seed<S>/model.pt``; writes ``metrics.json`` (flat numbers: accuracy,
routing statistics, parameters and FLOPs per clip; no timings, so that it is byte-identical run
after run), ``cost.json`` (the CPU latency per clip, a timing), ``per_class.csv``, and ``plots/``:
``confusion.png``, one ``usage_layer<j>.png`` (class x neuron) per DSTS layer and ``routing.png`` (the
training-time routing statistics per epoch and layer, from the saved history), and logs them to the
MLflow run that trained the model.
"""

from __future__ import annotations

import argparse
import json

from pipeline._cli import parse_run_stage, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__)
    _, cfg, out = parse_run_stage(parser)  # applies the kernel pins: torch must not be loaded yet
    # Imported after the pins, on purpose: torch reads them once, when it loads (dsts/portable.py).
    from dsts import metrics as M
    from dsts import specialization as S
    from dsts.checkpoint import load_model
    from dsts.cost import count_flops, cpu_latency_ms
    from dsts.data import build_dataset, build_loader
    from dsts.engine import evaluation_metrics, predict, resolve_device
    from dsts.files import write_json
    from dsts.plots import plot_confusion, plot_run_routing, plot_usage_heatmap
    from dsts.portable import fingerprint, pin_torch
    from dsts.runs import write_metrics, write_per_class, write_predictions

    pin_torch(cfg.train.portable, cfg.train.threads)
    device = resolve_device(cfg.train.device)
    model, saved = load_model(out.model, cfg, device)
    test_ds = build_dataset(cfg.data, "test", train=False, seed=cfg.train.seed)
    loader = build_loader(test_ds, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers)
    pred = predict(model, loader, device, cfg.train.bf16)
    num_classes = int(saved["num_classes"])
    cues = list(test_ds.class_cues)
    metrics = evaluation_metrics(
        pred, num_classes, cfg.model.dsts.num_neurons, cues, cfg.eval.top_k, "test/", test_ds.class_pairs
    )
    last = saved["history"][-1] if saved["history"] else {}
    metrics.update({k: v for k, v in last.items() if k.startswith("train/")})
    metrics["num_parameters"] = float(sum(p.numel() for p in model.parameters()))
    clip = (1, 3, cfg.data.num_frames, cfg.data.crop, cfg.data.crop)
    metrics["flops_per_clip"] = float(count_flops(model.cpu(), clip))
    write_json(out.cost, {"latency_ms": cpu_latency_ms(model, clip)})
    model.to(device)

    names = list(saved["class_names"])
    preds = pred.scores.argmax(-1)
    cm = M.confusion_matrix(preds, pred.labels, num_classes)
    write_per_class(
        out.per_class, names, cues, cm.sum(axis=1), M.per_class_accuracy(preds, pred.labels, num_classes)
    )
    write_predictions(
        out.predictions, [names[k] for k in pred.labels.tolist()], [names[k] for k in preds.tolist()]
    )
    plot_confusion(cm, names, out.plots / "confusion.png")
    plots = ["confusion.png"]
    if pred.selection is not None:
        n_neurons = cfg.model.dsts.num_neurons
        for layer in range(pred.selection.shape[1]):
            usage = S.class_neuron_usage(pred.selection, pred.labels, layer, num_classes, n_neurons)
            name = f"usage_layer{layer}.png"
            plot_usage_heatmap(
                usage, names, out.plots / name, f"{cfg.variant} seed {cfg.train.seed}: layer {layer}"
            )
            plots.append(name)
        if plot_run_routing(saved["history"], cfg.variant, out.plots / "routing.png"):
            plots.append("routing.png")
        for line in S.collapse_warnings(metrics):
            print(f"warning: {line}")
    write_metrics(out.metrics, metrics)

    if cfg.tracking.enabled:
        from dsts.tracking import Tracker  # mlflow takes seconds to load: only for a tracked run

        tracker = Tracker(cfg, saved["config_hash"])
        run_id = json.loads(out.tracking.read_text()).get("run_id") if out.tracking.is_file() else None
        with tracker.run(run_id or None) as t:
            t.log_data({"test": "evaluation"})
            # after the last epoch, without the train/* numbers copied from the history's last row
            t.log_evaluation(metrics, skip=[k for k in last if k.startswith("train/")])
            t.log_artifact(out.metrics)
            t.log_artifact(out.cost)
            t.log_artifact(out.per_class)
            for name in plots:
                t.log_artifact(out.plots / name, "plots")
            t.set_tags(
                {f"eval.env.{k}": v for k, v in fingerprint(cfg.train.portable, cfg.train.threads).items()}
            )
            t.set_tag("eval_status", "done")
    print(f"evaluated {cfg.variant} seed {cfg.train.seed}: top1 {metrics['test/top1']:.4f} -> {out.metrics}")
    return 0


if __name__ == "__main__":
    run(main)
