"""Stage ``train``: train one (variant, seed); resume from its last checkpoint if one exists.

Under ``torchrun --nproc_per_node=K`` it trains data-parallel (gloo on the CPU, NCCL on CUDA):
each rank takes its shard of every batch, and only rank 0 logs, checkpoints and writes outputs.

Writes ``runs/<variant>/seed<S>/``: ``model.pt`` (state_dict + config), ``history.csv`` (the
learning curves), ``val_correct.csv`` (each validation clip right or wrong, per epoch), ``learning_curves.png``, ``config.yaml``, ``timing.json``, ``environment.json``
(the machine and kernel fingerprint) and ``tracking.json`` (the MLflow run id); checkpoints go to
``checkpoints/<training-settings hash>.pt`` beside them. The MLflow run of (variant, seed) is opened or continued.
"""

from __future__ import annotations

import argparse

import yaml

from pipeline._cli import parse_run_stage, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__)
    _, cfg, out = parse_run_stage(parser)  # applies the kernel pins: torch must not be loaded yet
    # Imported after the pins, on purpose: torch reads them once, when it loads (dsts/portable.py).
    from dsts.checkpoint import load_checkpoint, save_model
    from dsts.distributed import init_from_env, shutdown
    from dsts.engine import Trainer
    from dsts.files import write_json, write_text
    from dsts.plots import plot_learning_curves
    from dsts.portable import fingerprint, pin_torch
    from dsts.runs import write_history, write_val_correct

    pin_torch(cfg.train.portable, cfg.train.threads)
    rank, world_size, device = init_from_env()
    try:
        trainer = Trainer(cfg, out.path, rank=rank, world_size=world_size, device=device)
        ckpt = trainer.checkpoint_file
        trainer.run_id = (
            load_checkpoint(ckpt, cfg, trainer.device.type).get("run_id") if ckpt.exists() else None
        )
        tracker = None
        if cfg.tracking.enabled and rank == 0:
            from dsts.tracking import Tracker  # mlflow takes seconds to load: only for a tracked run

            tracker = Tracker(cfg, trainer.train_hash)
            trainer.on_epoch = lambda row, epoch: tracker.log_metrics(row, step=epoch)

        def train() -> dict[str, float]:
            result = trainer.fit()
            if rank != 0:
                return {}
            save_model(
                out.model,
                result.model,
                cfg,
                result.num_classes,
                result.class_names,
                result.class_cues,
                result.history,
                trainer.device.type,
            )
            write_history(out.history, result.history)
            write_val_correct(out.val_correct, result.val_clips, result.val_correct)
            plot_learning_curves(result.history, out.path / "learning_curves.png")
            write_text(out.path / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            write_json(out.environment, fingerprint(cfg.train.portable, cfg.train.threads))
            write_json(out.tracking, {"run_id": result.run_id or ""})
            timing = {
                "train_seconds": round(result.seconds, 3),
                "data_seconds": round(result.data_seconds, 3),
                "data_share": round(result.data_seconds / max(result.seconds, 1e-9), 4),
                "epochs_run": cfg.train.epochs - result.resumed_from,
                "resumed_from_epoch": result.resumed_from,
            }
            write_json(out.timing, timing)
            return timing

        if tracker is None:
            train()
            return 0
        with tracker.run(trainer.run_id) as t:
            trainer.run_id = t.run_id
            t.log_data({"train": "training"})
            timing = train()
            t.log_metrics({f"timing/{k}": v for k, v in timing.items()}, step=cfg.train.epochs)
            t.set_tags({f"env.{k}": v for k, v in fingerprint(cfg.train.portable, cfg.train.threads).items()})
            for file in (
                out.model,
                out.history,
                out.val_correct,
                out.path / "learning_curves.png",
                out.path / "config.yaml",
            ):
                t.log_artifact(file)
            for file in (out.timing, out.environment):
                t.log_artifact(file)
            t.set_tag("train_status", "done")
        print(f"trained {cfg.variant} seed {cfg.train.seed} -> {out.path} (MLflow run {tracker.run_id})")
        return 0
    finally:
        shutdown()


if __name__ == "__main__":
    run(main)
