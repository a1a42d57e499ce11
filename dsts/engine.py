"""Training and evaluation: the loop that the ``train`` and ``evaluate`` stages call.

The trainer runs epochs with the ordinary joint step, with ``UDLStep`` when the variant enables
UDL, or with several joint updates per iteration for the compute-matched control. Every epoch ends
with an atomic checkpoint that holds all the state needed to resume bit for bit; the same config
and seed give the same numbers on the CPU, interrupted or not.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsts.checkpoint import FORMAT, atomic_save, rng_state, safe_load, set_rng_state
from dsts.config import Config
from dsts.errors import DSTSError
from dsts.seeding import mix_seed

EpochCallback = Callable[[dict[str, float], int], None]


class NonFiniteLoss(DSTSError):
    """The loss became NaN or inf: the run stops, keeping its last good checkpoint."""


# ---------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DSTSError(f"train.device: {name!r} asked for, but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SeededSampler(torch.utils.data.Sampler[int]):
    """Indices in a permutation seeded by (seed, stream, epoch): the whole state is the epoch.

    ``stream`` separates independent orders over the same data (the training batches and the
    UDL ``D_val`` batches). ``rank``/``world_size`` shard each permutation for data parallelism;
    the shards are disjoint and equally long. A ``DataLoader`` with ``batch_size`` and
    ``drop_last=True`` turns it into the batches of :meth:`batches`.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, stream: int = 0, rank: int = 0, world_size: int = 1
    ):
        self.size, self.batch_size, self.seed, self.stream = size, batch_size, seed, stream
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.stream, self.epoch))
        order = torch.randperm(self.size, generator=g).tolist()
        usable = (len(order) // self.world_size) * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def batches(self) -> list[list[int]]:
        order = self.indices()
        return [
            order[i : i + self.batch_size]
            for i in range(0, self.num_batches() * self.batch_size, self.batch_size)
        ]

    def num_batches(self) -> int:
        return (self.size // self.world_size) // self.batch_size

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return self.size // self.world_size


def make_optimizer(cfg: Config, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer | None:
    params = list(params)
    if not params:
        return None
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
        )
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.train.weight_decay)


def lr_factor(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Warm-up (linear), then cosine, step or constant; evaluated per iteration."""
    total = cfg.train.epochs * steps_per_epoch
    warmup = int(round(cfg.train.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.train.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if cfg.train.schedule == "step":
        return cfg.train.gamma ** ((step // steps_per_epoch) // cfg.train.step_size)
    return 1.0


def progress_enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() != "true"


# ---------------------------------------------------------------- evaluation


@dataclasses.dataclass
class Predictions:
    scores: torch.Tensor  # (n, K) class probabilities, averaged over the views
    labels: torch.Tensor  # (n,)
    loss: float  # mean cross-entropy of the averaged probabilities
    selection: torch.Tensor | None  # (n, L) neuron per sample per layer (first view)
    gates: torch.Tensor | None  # (n, L, C) gate bits of the selected neuron (first view)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device, bf16: bool = False) -> Predictions:
    """Evaluation-mode forward over a loader of ``(clips (B, V, 3, T, H, W) or (B, 3, T, H, W), labels)``."""
    was_training = model.training
    model.eval()
    scores, labels, selection, gates = [], [], [], []
    dsts_module = getattr(model, "dsts", None)
    try:
        for clips, target in loader:
            if clips.dim() == 5:
                clips = clips.unsqueeze(1)
            b, v = clips.shape[:2]
            clips = clips.flatten(0, 1).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                logits = model(clips)
            probs = logits.float().softmax(-1).view(b, v, -1).mean(1)
            scores.append(probs.cpu())
            labels.append(target.cpu())
            if dsts_module is not None:
                selection.append(dsts_module.last_selection.view(b, v, -1)[:, 0].cpu())
                if getattr(dsts_module, "last_gates", None) is not None:
                    g = dsts_module.last_gates
                    gates.append(g.reshape(b, v, *g.shape[1:])[:, 0].float().cpu())
    finally:
        model.train(was_training)
    p = torch.cat(scores)
    y = torch.cat(labels).long()
    loss = F.nll_loss(p.clamp_min(1e-12).log(), y).item()
    return Predictions(
        p, y, loss, torch.cat(selection) if selection else None, torch.cat(gates) if gates else None
    )


def evaluation_metrics(
    pred: Predictions,
    num_classes: int,
    num_neurons: int,
    class_cues: list | None = None,
    top_k: int = 5,
    prefix: str = "",
) -> dict[str, float]:
    from dsts import metrics as M

    out = {
        "top1": M.top_k_accuracy(pred.scores, pred.labels, 1),
        f"top{top_k}": M.top_k_accuracy(pred.scores, pred.labels, top_k),
        "mean_class_accuracy": M.mean_class_accuracy(pred.scores.argmax(-1), pred.labels, num_classes),
        "loss": pred.loss,
    }
    if pred.selection is not None:
        stats = M.specialization_stats(
            pred.selection,
            pred.labels,
            num_neurons=num_neurons,
            num_classes=num_classes,
            gates=pred.gates,
            class_cues=class_cues,
        )
        out.update(stats)
    return {f"{prefix}{k}": float(v) for k, v in out.items() if isinstance(v, (int, float)) and v == v}


# ---------------------------------------------------------------- training


@dataclasses.dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]
    run_id: str | None
    num_classes: int
    class_names: list[str]
    class_cues: list
    seconds: float
    data_seconds: float
    resumed_from: int  # epochs already done when this process started


def checkpoint_path(out_dir: Path, cfg: Config) -> Path:
    return out_dir / "checkpoints" / f"{cfg.hash()}.pt"


class Trainer:
    """One (variant, seed) training run. ``on_epoch(metrics, epoch)`` receives each epoch's numbers;
    ``run_id`` is stored in the checkpoints so that a resumed process continues the same run."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        on_epoch: EpochCallback | None = None,
        run_id: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.on_epoch, self.run_id = on_epoch, run_id
        self.rank, self.world_size = rank, world_size
        self.device = (
            device if device is not None and cfg.train.device == "auto" else resolve_device(cfg.train.device)
        )
        self.log = print if rank == 0 else (lambda *a, **k: None)

    # -- pieces

    def _data(self):
        from dsts.data import build_dataset, build_loader

        cfg = self.cfg
        train_ds = build_dataset(cfg.data, "train", train=True, seed=cfg.train.seed)
        test_ds = build_dataset(cfg.data, "test", train=False, seed=cfg.train.seed)
        if len(train_ds) < cfg.train.batch_size * self.world_size:
            raise DSTSError(
                f"train.batch_size: {cfg.train.batch_size} is larger than the training set ({len(train_ds)} clips)"
            )
        pin = self.device.type == "cuda"
        batches = SeededSampler(
            len(train_ds), cfg.train.batch_size, cfg.train.seed, 0, self.rank, self.world_size
        )
        val_batches = SeededSampler(
            len(train_ds), cfg.train.batch_size, cfg.train.seed, 1, self.rank, self.world_size
        )
        # D_val: the same clips under their own augmentation draws (a shallow copy shares the cache)
        val_ds = copy.copy(train_ds)
        val_ds.seed = mix_seed(cfg.train.seed, 1) % 2**31
        workers = cfg.data.num_workers

        def loader(ds, sampler, batch_size, drop_last):
            return build_loader(
                ds, batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last, pin_memory=pin
            )

        train_loader = loader(train_ds, batches, cfg.train.batch_size, True)
        val_loader = loader(val_ds, val_batches, cfg.train.batch_size, True)
        test_loader = loader(test_ds, None, cfg.eval.batch_size, False)
        self.val_ds = val_ds
        return train_ds, test_ds, batches, val_batches, train_loader, val_loader, test_loader

    def _needs_second_batch(self) -> bool:
        return self.cfg.udl.enabled or self.cfg.train.updates_per_step > 1

    # -- the loop

    def fit(self) -> TrainResult:
        from dsts.model import build_model
        from dsts.udl import UDLStep, split_parameters

        cfg, device = self.cfg, self.device
        seed_everything(cfg.train.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        train_ds, test_ds, batches, val_batches, train_loader, val_loader, test_loader = self._data()
        num_classes = train_ds.num_classes
        model = build_model(cfg, num_classes=num_classes).to(device)
        if self.world_size > 1:  # every rank starts from rank 0's weights
            import torch.distributed as dist

            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, 0)
        if cfg.train.channels_last and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last_3d)
        upstream, downstream = split_parameters(model)
        opt_up = make_optimizer(cfg, upstream.values(), cfg.train.upstream_lr)
        opt_down = make_optimizer(cfg, downstream.values(), cfg.train.lr)
        optimizers = [o for o in (opt_up, opt_down) if o is not None]
        steps_per_epoch = batches.num_batches()
        schedulers = [
            torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(cfg, s, steps_per_epoch))
            for o in optimizers
        ]
        udl = None
        if cfg.udl.enabled:
            if self.world_size > 1:
                from dsts.distributed import DistributedUDLStep as UDLStep  # noqa: N814
            udl = UDLStep(
                model,
                opt_up,
                opt_down,
                inner_lr=cfg.udl.inner_lr,
                method=cfg.udl.method,
                fd_eps=cfg.udl.fd_eps,
                scope=cfg.udl.scope,
                grad_clip=cfg.train.grad_clip,
            )

        history: list[dict[str, float]] = []
        start_epoch = 0
        ckpt_file = checkpoint_path(self.out_dir, cfg)
        if ckpt_file.exists():
            state = load_checkpoint(ckpt_file, cfg)
            model.load_state_dict(state["model"])
            for o, s in zip(optimizers, state["optimizers"]):
                o.load_state_dict(s)
            for sch, s in zip(schedulers, state["schedulers"]):
                sch.load_state_dict(s)
            history = list(state["history"])
            start_epoch = int(state["epoch"])
            self.run_id = self.run_id or state.get("run_id") or None
            set_rng_state(state["rng"])
            self.log(f"resuming {cfg.variant} seed {cfg.train.seed} from epoch {start_epoch} ({ckpt_file})")

        bf16 = cfg.train.bf16 and device.type == "cuda"
        started = time.perf_counter()
        data_seconds = 0.0
        show = progress_enabled() and self.rank == 0
        from tqdm.auto import tqdm

        epochs = tqdm(
            range(start_epoch, cfg.train.epochs),
            desc=f"{cfg.variant}/seed{cfg.train.seed}",
            disable=not show,
            initial=start_epoch,
            total=cfg.train.epochs,
        )
        for epoch in epochs:
            model.train()
            self._set_p_hard(model, epoch)
            if self.world_size > 1:
                # each rank draws its own Gumbel and Semhash noise; the data order (above) is shared
                torch.manual_seed(mix_seed(cfg.train.seed, 2, self.rank, epoch))
            batches.set_epoch(epoch)
            val_batches.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            self.val_ds.set_epoch(epoch)
            sums: dict[str, float] = {}
            seen = 0
            val_iter = iter(val_loader) if self._needs_second_batch() else None
            train_iter = iter(train_loader)
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}", leave=False, disable=not show)
            for step in range(steps_per_epoch):
                t0 = time.perf_counter()
                x, y = next(train_iter)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if val_iter is not None:
                    xv, yv = next(val_iter)
                    xv, yv = xv.to(device, non_blocking=True), yv.to(device, non_blocking=True)
                data_seconds += time.perf_counter() - t0
                if udl is not None:
                    losses = udl.step((x, y), (xv, yv))
                else:
                    plan = [(x, y)] if val_iter is None else [(x, y), (xv, yv)]
                    plan = [plan[i % len(plan)] for i in range(cfg.train.updates_per_step)]
                    for bx, by in plan:
                        losses = self._joint_step(model, optimizers, bx, by, bf16)
                for name, value in losses.items():
                    if not math.isfinite(value):
                        raise NonFiniteLoss(
                            f"non-finite {name} ({value}) at epoch {epoch + 1} step {step + 1}: "
                            f"stopped; the last good checkpoint is kept ({ckpt_file})"
                        )
                    sums[name] = sums.get(name, 0.0) + value * len(y)
                seen += len(y)
                for sch in schedulers:
                    sch.step()
                bar.update()
            bar.close()
            row = {"epoch": float(epoch + 1), "lr": optimizers[-1].param_groups[0]["lr"]}
            row.update({f"train/{k}": v / max(1, seen) for k, v in sums.items()})
            test = predict(model, test_loader, device, bf16) if self.rank == 0 else None
            row.update(
                {}
                if test is None
                else evaluation_metrics(
                    test,
                    num_classes,
                    cfg.model.dsts.num_neurons,
                    getattr(test_ds, "class_cues", None),
                    cfg.eval.top_k,
                    "test/",
                )
            )
            keep = ("epoch", "lr", "train/", "test/top1", "test/loss", "test/mean_class", "test/layer")
            row = {
                k: v
                for k, v in row.items()
                if k.startswith(keep) and ("usage_entropy" in k or "/layer" not in k)
            }
            history.append(row)
            if self.rank == 0:
                self._save(ckpt_file, model, optimizers, schedulers, epoch + 1, history)
                if self.on_epoch is not None:
                    self.on_epoch(row, epoch + 1)
                if not show:
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
                    self.log(
                        f"[{cfg.variant} seed {cfg.train.seed}] epoch {epoch + 1}/{cfg.train.epochs}: {shown}"
                    )
        epochs.close()
        model.eval()
        return TrainResult(
            model=model,
            history=history,
            run_id=self.run_id,
            num_classes=num_classes,
            class_names=list(getattr(train_ds, "class_names", [str(i) for i in range(num_classes)])),
            class_cues=list(getattr(train_ds, "class_cues", [None] * num_classes)),
            seconds=time.perf_counter() - started,
            data_seconds=data_seconds,
            resumed_from=start_epoch,
        )

    def _set_p_hard(self, model: nn.Module, epoch: int) -> None:
        dsts_cfg = self.cfg.model.dsts
        module = getattr(model, "dsts", None)
        if module is None or dsts_cfg.hard_warmup_epochs <= 0:
            return
        module.set_p_hard(dsts_cfg.p_hard * min(1.0, epoch / dsts_cfg.hard_warmup_epochs))

    def _joint_step(self, model, optimizers, x, y, bf16: bool) -> dict[str, float]:
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        if self.world_size > 1:
            from dsts.distributed import all_reduce_grads

            all_reduce_grads(model)
        if self.cfg.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(
                [p for o in optimizers for g in o.param_groups for p in g["params"]], self.cfg.train.grad_clip
            )
        for o in optimizers:
            o.step()
        return {"loss": loss.item()}

    def _save(self, path, model, optimizers, schedulers, epoch, history) -> None:
        atomic_save(
            {
                "format": FORMAT,
                "config_hash": self.cfg.hash(),
                "config": self.cfg.to_dict(),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizers": [o.state_dict() for o in optimizers],
                "schedulers": [s.state_dict() for s in schedulers],
                "history": history,
                "rng": rng_state(),
                # the data order is a pure function of (seed, stream, epoch): the D_val iterator's
                # whole state is the epoch it starts at, and it restarts with each epoch
                "data_state": {"train_stream": {"epoch": epoch}, "val_stream": {"epoch": epoch}},
                "run_id": self.run_id or "",
            },
            path,
        )


def load_checkpoint(path: Path, cfg: Config) -> dict[str, Any]:
    """A checkpoint of this exact resolved config, or one clear error (nothing is overwritten)."""
    state = safe_load(path)
    if state.get("config_hash") != cfg.hash():
        raise DSTSError(
            f"{path}: checkpoint of another config (hash {state.get('config_hash')}, this run is {cfg.hash()}); "
            "move it away or restore the params it was trained with"
        )
    return state


# ---------------------------------------------------------------- saved models


def save_model(path: str | Path, result: TrainResult, cfg: Config) -> None:
    atomic_save(
        {
            "format": FORMAT,
            "config": cfg.to_dict(),
            "config_hash": cfg.hash(),
            "model": result.model.state_dict(),
            "num_classes": result.num_classes,
            "class_names": result.class_names,
            "class_cues": [c if isinstance(c, str) else "" for c in result.class_cues],
            "history": result.history,
            "run_id": result.run_id or "",
        },
        path,
    )


def load_model(path: str | Path, cfg: Config, device: torch.device | None = None) -> tuple[nn.Module, dict]:
    """The trained model of ``cfg`` from ``path``; a file of another config is one clear error."""
    from dsts.model import build_model

    state = safe_load(path)
    if state.get("config_hash") != cfg.hash():
        raise DSTSError(
            f"{path}: trained with another config (hash {state.get('config_hash')}, expected {cfg.hash()}); "
            "rerun the train stage"
        )
    model = build_model(cfg, num_classes=int(state["num_classes"]))
    model.load_state_dict(state["model"])
    model.to(device or torch.device("cpu")).eval()
    return model, state


def write_history_csv(history: list[dict[str, float]], path: str | Path) -> None:
    path = Path(path)
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (int(v) if k == "epoch" else repr(float(v))) for k, v in row.items()})
    os.replace(tmp, path)
