"""Training and evaluation: the loop that the ``train`` and ``evaluate`` stages call.

The trainer runs epochs with the ordinary joint step, with :class:`dsts.udl.UDLStep` when the
variant enables UDL, or with several joint updates per iteration for the compute-matched control.
Every epoch ends with an atomic checkpoint that holds all the state needed to resume bit for bit;
the same config and seed give the same numbers on the CPU, interrupted or not
(docs/method.md, "Randomness").
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dsts import metrics as M
from dsts import specialization as S
from dsts.checkpoint import FORMAT, atomic_save, load_checkpoint, rng_state, set_rng_state
from dsts.config import Config
from dsts.data import build_dataset, build_loader
from dsts.data.dataset import has_validation
from dsts.data.sampling import SeededSampler
from dsts.distributed import all_reduce_grads, all_reduce_mean
from dsts.errors import DSTSError
from dsts.layers import DSTSLayer
from dsts.model import build_model
from dsts.module import p_hard_schedule
from dsts.portable import use_deterministic_kernels
from dsts.report.verdicts import late_quarter_start
from dsts.runs import RunFolder
from dsts.seeding import stream_seed
from dsts.udl import UDLStep, split_parameters

EpochCallback = Callable[[dict[str, float], int], None]

# What history.csv keeps of each epoch's evaluation (besides every train/ key): accuracy, loss and
# the usage entropy per layer.
MONITORED = ("top1", "loss", "mean_class_accuracy", "usage_entropy", "usage_entropy_norm")


def _kept(key: str) -> bool:
    if key in ("epoch", "lr") or key.startswith("train/"):
        return True
    return key.startswith("val/") and key.endswith(MONITORED)


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


def validated(epoch: int, epochs: int, interval: int) -> bool:
    """Whether a run of ``epochs`` epochs validates after ``epoch`` (1-based): every ``interval``-th
    epoch, and every epoch that the convergence check reads (:func:`late_quarter_start`),
    the last among them. Training never reads validation, so this changes no weight."""
    return epoch % interval == 0 or epoch >= late_quarter_start(epochs)


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
                if dsts_module.last_gates is not None:
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


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, loader: Iterable, device: torch.device) -> None:
    """Precise BatchNorm: replace every running statistic of ``model`` by that of the clips of
    ``loader`` under the model's current weights, in place.

    A running statistic is an exponential average over the last batches, each computed under weights
    that a high learning rate has since moved; evaluation with them can misreport a model by tens of
    points (docs/study.md, section 2). Here the model runs in evaluation mode over ``loader``
    (``(clips, labels)`` batches of single-view clips), but for its BatchNorm layers, which normalise
    each batch with its own statistics, as in training, and average them, each batch counting once
    (PyTorch's cumulative average); a DSTS neuron routes as in evaluation and averages its routed
    samples' statistics (:meth:`dsts.layers.DSTSLayer.start_recompute`). Unlike
    ``torch.optim.swa_utils.update_bn``, which puts the whole model in training mode, nothing here
    draws from a generator, so a training run that calls it keeps its random streams. The momenta
    and the model's mode are restored; after an exception the statistics are undefined."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    layers = [m for m in model.modules() if isinstance(m, DSTSLayer)]
    was_training, momenta = model.training, [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average
        bn.train()
    for layer in layers:
        layer.start_recompute()
    done = False
    try:
        for clips, _ in loader:
            model(clips.to(device, non_blocking=True))
        done = True
    finally:
        for layer in layers:
            layer.finish_recompute(apply=done)
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)


def evaluation_metrics(
    pred: Predictions,
    num_classes: int,
    num_neurons: int,
    class_cues: list | None = None,
    top_k: int = 5,
    prefix: str = "",
    class_pairs: list | None = None,
) -> dict[str, float]:
    """Accuracy, loss, the accuracy on each cue (with ``class_cues`` and ``class_pairs``:
    :func:`dsts.metrics.cue_accuracy`) and, for DSTS models, the routing statistics of ``pred``,
    keyed ``prefix + name``; undefined values are left out (JSON has no NaN)."""
    out: dict[str, float] = {**M.accuracy_stats(pred.scores, pred.labels, (1, top_k)), "loss": pred.loss}
    if class_cues is not None and class_pairs is not None:
        out.update(M.cue_accuracy(pred.scores, pred.labels, class_cues, class_pairs))
    if pred.selection is not None:
        out.update(
            S.specialization_stats(
                pred.selection,
                pred.labels,
                num_neurons=num_neurons,
                num_classes=num_classes,
                gates=pred.gates,
                class_cues=class_cues,
            )
        )
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
    val_clips: list[str]  # the validation clips' names (none without validation)
    val_correct: list[list[int]]  # per validated epoch: the epoch, then 1 or 0 per clip (top-1 right)


@dataclasses.dataclass
class _Data:
    """The datasets, samplers and loaders of one training run."""

    train: torch.utils.data.Dataset
    meta: torch.utils.data.Dataset  # UDL's D_val: the training clips under their own augmentation draws
    val: torch.utils.data.Dataset | None  # the validation split, monitored each epoch (None: none)
    batches: SeededSampler
    meta_batches: SeededSampler
    train_loader: torch.utils.data.DataLoader
    meta_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None

    def set_epoch(self, epoch: int) -> None:
        for part in (self.batches, self.meta_batches, self.train, self.meta):
            part.set_epoch(epoch)


class Trainer:
    """One (variant, seed) training run. ``on_epoch(metrics, epoch)`` receives each epoch's numbers;
    ``run_id`` is stored in the checkpoints so that a resumed process continues the same run. The
    checkpoint is named by the hash of the training settings on the resolved device
    (:meth:`dsts.config.Config.train_hash`), so a change of them trains anew."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        on_epoch: EpochCallback | None = None,
        run_id: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        routing_stats: bool = True,
    ):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.routing_stats = routing_stats  # the training-time routing of specialization.TrainingRouting
        self.on_epoch, self.run_id = on_epoch, run_id
        self.rank, self.world_size = rank, world_size
        self.device = (
            device if device is not None and cfg.train.device == "auto" else resolve_device(cfg.train.device)
        )
        self.log = print if rank == 0 else (lambda *a, **k: None)
        self.train_hash = cfg.train_hash(self.device.type)
        self.checkpoint_file = RunFolder(self.out_dir).checkpoint(self.train_hash)
        self.bf16 = cfg.train.bf16 and self.device.type == "cuda"

    # -- pieces

    def _data(self) -> _Data:
        """The training split, UDL's ``D_val`` stream over it, and the validation split: monitored
        at the epochs :func:`validated` names, with one centred view and the training batch size, so
        that the history depends on the training settings only. The test split is not read here: evaluation reads it, once."""
        cfg = self.cfg
        train_ds = build_dataset(cfg.data, "train", train=True, seed=cfg.train.seed)
        if len(train_ds) < cfg.train.batch_size * self.world_size:
            raise DSTSError(
                f"train.batch_size: {cfg.train.batch_size} is larger than the training set ({len(train_ds)} clips)"
            )
        size, batch, seed = len(train_ds), cfg.train.batch_size, cfg.train.seed
        batches = SeededSampler(size, batch, seed, "batches", self.rank, self.world_size)
        meta_batches = SeededSampler(size, batch, seed, "meta_batches", self.rank, self.world_size)
        meta_ds = copy.copy(train_ds)  # a shallow copy shares the decoded cache
        meta_ds.seed = stream_seed(seed, "meta_augment") % 2**31
        val_ds = None
        if has_validation(cfg.data):
            one_view = dataclasses.replace(cfg.data, test_clips=1, test_crops=1)
            val_ds = build_dataset(one_view, "val", train=False, seed=seed)

        def loader(ds, sampler, drop_last):
            return build_loader(
                ds,
                batch,
                sampler=sampler,
                num_workers=cfg.data.num_workers,
                drop_last=drop_last,
                pin_memory=self.device.type == "cuda",
            )

        return _Data(
            train_ds,
            meta_ds,
            val_ds,
            batches,
            meta_batches,
            loader(train_ds, batches, True),
            loader(meta_ds, meta_batches, True),
            None if val_ds is None else loader(val_ds, None, False),
        )

    def _model(self, num_classes: int) -> nn.Module:
        cfg = self.cfg
        model = build_model(cfg, num_classes=num_classes, seed=cfg.train.seed).to(self.device)
        if self.world_size > 1:  # every rank starts from rank 0's weights
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, 0)
        return model

    def _needs_second_batch(self) -> bool:
        return self.cfg.udl.enabled or self.cfg.train.updates_per_step > 1

    def _resume(self, model, optimizers, schedulers) -> tuple[int, list[dict[str, float]], list[list[int]]]:
        """``(epochs done, history, per-clip validation results)`` from this config's checkpoint, or
        ``(0, [], [])`` without one."""
        if not self.checkpoint_file.exists():
            return 0, [], []
        state = load_checkpoint(self.checkpoint_file, self.cfg, self.device.type)
        model.load_state_dict(state["model"])
        for o, s in zip(optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(schedulers, state["schedulers"]):
            sch.load_state_dict(s)
        self.run_id = self.run_id or state.get("run_id") or None
        set_rng_state(state["rng"], self.generators)
        epoch = int(state["epoch"])
        self.log(
            f"resuming {self.cfg.variant} seed {self.cfg.train.seed} from epoch {epoch} ({self.checkpoint_file})"
        )
        return epoch, list(state["history"]), [list(r) for r in state.get("val_correct", [])]

    # -- the loop

    def fit(self) -> TrainResult:
        cfg, device = self.cfg, self.device
        seed_everything(cfg.train.seed)
        if not torch.are_deterministic_algorithms_enabled():  # dsts.portable may have made it strict
            use_deterministic_kernels(torch, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        data = self._data()
        num_classes = data.train.num_classes
        model = self._model(num_classes)
        self.generators = {"routing": model.dsts.generator} if model.dsts is not None else {}
        torch.manual_seed(stream_seed(cfg.train.seed, "dropout"))  # the global RNG's only remaining use
        upstream, downstream = split_parameters(model)
        opt_up = make_optimizer(cfg, upstream.values(), cfg.train.upstream_lr)
        opt_down = make_optimizer(cfg, downstream.values(), cfg.train.lr)
        optimizers = [o for o in (opt_up, opt_down) if o is not None]
        steps_per_epoch = data.batches.num_batches()
        schedulers = [
            torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(cfg, s, steps_per_epoch))
            for o in optimizers
        ]
        udl = None
        if cfg.udl.enabled:
            udl = UDLStep(
                model,
                opt_up,
                opt_down,
                inner_lr=cfg.udl.inner_lr,
                method=cfg.udl.method,
                fd_eps=cfg.udl.fd_eps,
                scope=cfg.udl.scope,
                grad_clip=cfg.train.grad_clip,
                reduce=all_reduce_mean if self.world_size > 1 else None,
            )
        start_epoch, history, val_correct = self._resume(model, optimizers, schedulers)

        started = time.perf_counter()
        self.data_seconds = 0.0
        show = progress_enabled() and self.rank == 0
        epochs = tqdm(
            range(start_epoch, cfg.train.epochs),
            desc=f"{cfg.variant}/seed{cfg.train.seed}",
            disable=not show,
            initial=start_epoch,
            total=cfg.train.epochs,
        )
        for epoch in epochs:
            model.train()
            if model.dsts is not None and cfg.model.dsts.hard_warmup_epochs > 0:
                d = cfg.model.dsts
                model.dsts.set_p_hard(p_hard_schedule(epoch, d.p_hard, d.hard_warmup_epochs))
            if self.world_size > 1:
                # each rank draws its own Gumbel, Semhash and dropout noise; the data order is shared
                torch.manual_seed(stream_seed(cfg.train.seed, "rank", self.rank, 2 * epoch))
                for generator in self.generators.values():
                    generator.manual_seed(stream_seed(cfg.train.seed, "rank", self.rank, 2 * epoch + 1))
            data.set_epoch(epoch)
            losses = self._train_epoch(model, optimizers, schedulers, udl, data, epoch, show)
            validate = validated(epoch + 1, cfg.train.epochs, cfg.train.val_interval)
            # precise BN: each rank over its shard of the epoch's batches; rank 0's are kept
            if validate and cfg.train.precise_bn:
                recompute_bn_statistics(model, data.train_loader, device)
            row = {"epoch": float(epoch + 1), "lr": optimizers[-1].param_groups[0]["lr"], **losses}
            if validate and self.rank == 0 and data.val_loader is not None:
                val = predict(model, data.val_loader, device, self.bf16)
                row.update(evaluation_metrics(val, num_classes, cfg.model.dsts.num_neurons, prefix="val/"))
                val_correct.append([epoch + 1, *M.top_k_hits(val.scores, val.labels, 1).astype(int).tolist()])
            row = {k: v for k, v in row.items() if _kept(k)}
            history.append(row)
            if self.rank == 0:
                self._save(model, optimizers, schedulers, epoch + 1, history, val_correct)
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
            class_names=list(data.train.class_names),
            class_cues=list(data.train.class_cues),
            seconds=time.perf_counter() - started,
            data_seconds=self.data_seconds,
            resumed_from=start_epoch,
            val_clips=data.val.clip_ids if data.val is not None else [],
            val_correct=val_correct,
        )

    def _train_epoch(self, model, optimizers, schedulers, udl, data: _Data, epoch: int, show: bool):
        """One epoch of updates; returns the mean of each loss over its samples, keyed ``train/<name>``."""
        device, cfg = self.device, self.cfg
        sums: dict[str, float] = {}
        seen = 0
        layers = list(model.dsts.layers) if model.dsts is not None and self.routing_stats else []
        routing = S.TrainingRouting(len(layers), layers[0].num_neurons) if layers else None
        meta_iter = iter(data.meta_loader) if self._needs_second_batch() else None
        train_iter = iter(data.train_loader)
        steps = data.batches.num_batches()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}", leave=False, disable=not show)
        for step in range(steps):
            t0 = time.perf_counter()
            x, y = next(train_iter)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if meta_iter is not None:
                xv, yv = next(meta_iter)
                xv, yv = xv.to(device, non_blocking=True), yv.to(device, non_blocking=True)
            self.data_seconds += time.perf_counter() - t0
            if udl is not None:
                losses = udl.step((x, y), (xv, yv))
            else:
                plan = [(x, y)] if meta_iter is None else [(x, y), (xv, yv)]
                for i in range(cfg.train.updates_per_step):
                    losses = self._joint_step(model, optimizers, *plan[i % len(plan)])
            for name, value in losses.items():
                if not math.isfinite(value):
                    raise NonFiniteLoss(
                        f"non-finite {name} ({value}) at epoch {epoch + 1} step {step + 1}: "
                        f"stopped; the last good checkpoint is kept ({self.checkpoint_file})"
                    )
                sums[name] = sums.get(name, 0.0) + value * len(y)
            seen += len(y)
            if routing is not None:  # what the last forward recorded (UDL: step 3's)
                routing.update(
                    [layer.last_probs for layer in layers], model.dsts.last_selection, model.dsts.last_gates
                )
            for sch in schedulers:
                sch.step()
            bar.update()
        bar.close()
        out = {f"train/{k}": v / max(1, seen) for k, v in sums.items()}
        return out if routing is None else {**out, **routing.result("train/")}

    def _joint_step(self, model, optimizers, x, y) -> dict[str, float]:
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        if self.world_size > 1:
            all_reduce_grads(model)
        if self.cfg.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(
                [p for o in optimizers for g in o.param_groups for p in g["params"]], self.cfg.train.grad_clip
            )
        for o in optimizers:
            o.step()
        return {"loss": loss.item()}

    def _save(self, model, optimizers, schedulers, epoch, history, val_correct) -> None:
        atomic_save(
            {
                "format": FORMAT,
                "config_hash": self.train_hash,
                "config": self.cfg.to_dict(),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizers": [o.state_dict() for o in optimizers],
                "schedulers": [s.state_dict() for s in schedulers],
                "history": history,
                "val_correct": val_correct,
                "rng": rng_state(self.generators),
                # the data order is a pure function of (seed, stream, epoch): the D_val iterator's
                # whole state is the epoch it starts at, and it restarts with each epoch
                "data_state": {"train_stream": {"epoch": epoch}, "meta_stream": {"epoch": epoch}},
                "run_id": self.run_id or "",
            },
            self.checkpoint_file,
        )
