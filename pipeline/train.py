"""Stage ``train``: train one (variant, seed); resume from its last checkpoint if one exists.

Under ``torchrun --nproc_per_node=K`` it trains data-parallel (gloo on the CPU, NCCL on CUDA):
each rank takes its shard of every batch, and only rank 0 logs, checkpoints and writes outputs.

Writes ``runs/<variant>/seed<S>/``: ``model.pt`` (state_dict + config), ``history.csv`` (the
learning curves), ``learning_curves.png``, ``config.yaml`` and ``timing.json``; checkpoints go to
``checkpoints/<config hash>.pt`` beside them. The MLflow run of (variant, seed) is opened or continued.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from pipeline._cli import add_config_args, config_from_args, run


def run_dir(variant: str, seed: int, root: str | Path = "runs") -> Path:
    return Path(root) / variant / f"seed{seed}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__)
    add_config_args(parser)
    parser.add_argument("--out", default=None, help="output folder (default: runs/<variant>/seed<S>)")
    args = parser.parse_args()
    cfg = config_from_args(args)

    from dsts.distributed import init_from_env, shutdown

    rank, world_size, device = init_from_env()
    try:
        return _train(cfg, args, rank, world_size, device)
    finally:
        shutdown()


def _train(cfg, args, rank: int, world_size: int, device) -> int:
    from dsts.engine import Trainer, checkpoint_path, load_checkpoint, save_model, write_history_csv
    from dsts.plots import plot_learning_curves

    out = Path(args.out) if args.out else run_dir(cfg.variant, cfg.train.seed)
    ckpt = checkpoint_path(out, cfg)
    run_id = load_checkpoint(ckpt, cfg).get("run_id") if ckpt.exists() else None

    tracker = None
    if cfg.tracking.enabled and rank == 0:
        from dsts.tracking import Tracker

        tracker = Tracker(cfg)
    on_epoch = (lambda row, epoch: tracker.log_metrics(row, step=epoch)) if tracker else None

    def train(current_run: str | None):
        trainer = Trainer(
            cfg, out, on_epoch=on_epoch, run_id=current_run, rank=rank, world_size=world_size, device=device
        )
        result = trainer.fit()
        if rank != 0:
            return result, {}
        out.mkdir(parents=True, exist_ok=True)
        save_model(out / "model.pt", result, cfg)
        write_history_csv(result.history, out / "history.csv")
        plot_learning_curves(result.history, out / "learning_curves.png")
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        timing = {
            "train_seconds": round(result.seconds, 3),
            "data_seconds": round(result.data_seconds, 3),
            "data_share": round(result.data_seconds / max(result.seconds, 1e-9), 4),
            "epochs_run": cfg.train.epochs - result.resumed_from,
            "resumed_from_epoch": result.resumed_from,
        }
        (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
        return result, timing

    if tracker is None:
        train(run_id)
        return 0
    with tracker.run(run_id) as t:
        result, timing = train(t.run_id)
        t.log_metrics({f"timing/{k}": v for k, v in timing.items()}, step=cfg.train.epochs)
        for name in ("model.pt", "history.csv", "learning_curves.png", "config.yaml", "timing.json"):
            t.log_artifact(out / name)
        t.set_tag("train_status", "done")
    print(f"trained {cfg.variant} seed {cfg.train.seed} -> {out} (MLflow run {tracker.run_id})")
    return 0


if __name__ == "__main__":
    run(main)
