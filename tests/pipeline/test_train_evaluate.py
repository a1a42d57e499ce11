"""End to end at a tiny size: prepare, train, evaluate; determinism, kill-and-resume, MLflow."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dsts.config import load_config
from dsts.engine import Trainer, predict
from dsts.runs import read_history, read_val_correct
from tests.pipeline.e2e import ROOT, stage
from tests.test_engine import by_hand_batch_norm

pytestmark = pytest.mark.slow

ROUTING_KEYS = (
    "selection_entropy_norm",
    "argmax_agreement",
    "usage_entropy_norm",
    "max_usage",
    "temporal_fraction",
)


def outputs(run: Path) -> dict[str, bytes]:
    names = ("metrics.json", "per_class.csv", "history.csv", "val_correct.csv")
    return {name: (run / name).read_bytes() for name in names}


@pytest.mark.parametrize("variant", ["baseline", "dsts_udl"])
def test_train_then_evaluate(workdir, variant):
    stage(workdir, "pipeline.train", "--variant", variant, "--seed", "0")
    stage(workdir, "pipeline.evaluate", "--variant", variant, "--seed", "0")
    run = workdir / "runs" / variant / "seed0"
    for name in (
        "model.pt",
        "history.csv",
        "val_correct.csv",
        "learning_curves.png",
        "timing.json",
        "config.yaml",
        "metrics.json",
        "per_class.csv",
        "plots/confusion.png",
        "predictions.csv",
        "cost.json",
        "environment.json",
        "tracking.json",
    ):
        assert (run / name).stat().st_size > 0, name
    # each validation clip, right or wrong at each epoch: the clips of the validation list, in its
    # order, and as many right as the epoch's validation top-1 says
    val_list = json.loads((workdir / "data" / "generated" / "Diving48_V2_val.json").read_text())
    header = (run / "val_correct.csv").read_text().splitlines()[0].split(",")
    assert header == ["epoch", *(f"{v['vid_name']}@{v['start_frame']}" for v in val_list)]
    correct = read_val_correct(run / "val_correct.csv")
    assert list(correct) == [1, 2]
    assert [sum(bits) / len(bits) for bits in correct.values()] == [
        r["val/top1"] for r in read_history(run / "history.csv")
    ]
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert 0.0 <= metrics["test/top1"] <= metrics["test/top5"] <= 1.0
    assert not any("seconds" in k for k in metrics), "timings stay out of metrics.json"
    if variant == "dsts_udl":
        assert (run / "plots" / "usage_layer0.png").exists() and (run / "plots" / "routing.png").exists()
        assert "test/layer0/nmi" in metrics and "train/meta_loss" in metrics
    else:
        assert not any(k.startswith("test/layer") for k in metrics)
        assert not (run / "plots" / "routing.png").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dsts-bench-generated")
    runs = client.search_runs([experiment.experiment_id], f"tags.variant = '{variant}' and tags.seed = '0'")
    assert len(runs) == 1, "one MLflow run holds training and evaluation"
    found = runs[0]
    assert found.info.status == "FINISHED"
    assert found.data.params["model.dsts.enabled"] == str(variant != "baseline")
    assert found.data.params["train.epochs"] == "2"
    assert {"git_commit", "config_hash", "variant", "seed"} <= set(found.data.tags)
    history = client.get_metric_history(found.info.run_id, "val/top1")
    assert sorted(m.step for m in history) == [1, 2]  # each epoch monitors the validation split
    tested = client.get_metric_history(found.info.run_id, "test/top1")
    assert [m.step for m in tested] == [3]  # the test split is read once, after the last epoch
    assert found.data.metrics["test/top1"] == pytest.approx(metrics["test/top1"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.json", "model.pt", "config.yaml", "plots", "learning_curves.png"} <= artifacts
    assert (
        found.data.tags["env.cpu_capability"] == "AVX2" and found.data.tags["env.setting.portable"] == "true"
    )

    # evaluation settings are not training settings: the trained model evaluates under new ones
    stage(workdir, "pipeline.evaluate", "--variant", variant, "--seed", "0", "--set", "eval.batch_size=3")
    assert json.loads((run / "metrics.json").read_text())["test/top1"] == metrics["test/top1"]


def test_same_seed_gives_byte_identical_metrics(workdir):
    first = workdir / "det_a"
    second = workdir / "det_b"
    for out in (first, second):
        stage(
            workdir,
            "pipeline.train",
            "--variant",
            "dsts",
            "--seed",
            "1",
            "--out",
            str(out),
            "--set",
            "tracking.enabled=false",
        )
        stage(
            workdir,
            "pipeline.evaluate",
            "--variant",
            "dsts",
            "--seed",
            "1",
            "--out",
            str(out),
            "--set",
            "tracking.enabled=false",
        )
    assert outputs(first) == outputs(second)


def test_killed_run_resumes_to_the_same_bytes(workdir):
    args = [
        "--variant",
        "dsts_udl_fo",
        "--seed",
        "2",
        "--set",
        "train.epochs=4",
        "--set",
        "tracking.enabled=false",
    ]
    straight = workdir / "straight"
    stage(workdir, "pipeline.train", *args, "--out", str(straight))
    stage(workdir, "pipeline.evaluate", *args, "--out", str(straight))

    resumed = workdir / "resumed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CI="true")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.train",
            "--params",
            str(workdir / "params.yaml"),
            *args,
            "--out",
            str(resumed),
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt_dir = resumed / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.exists() and any(p.suffix == ".pt" for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "model.pt").exists()

    again = stage(workdir, "pipeline.train", *args, "--out", str(resumed))
    assert "resuming" in again.stdout
    stage(workdir, "pipeline.evaluate", *args, "--out", str(resumed))
    assert outputs(resumed) == outputs(straight)


def test_checkpoint_of_another_config_is_refused_and_kept(workdir):
    out = workdir / "clash"
    args = ["--variant", "static", "--seed", "0", "--out", str(out), "--set", "tracking.enabled=false"]
    stage(workdir, "pipeline.train", *args, "--set", "train.epochs=1")
    (ckpt,) = (out / "checkpoints").iterdir()  # trained with train.epochs=1
    cfg = load_config(workdir / "params.yaml", variant="static", seed=0, overrides=["tracking.enabled=false"])
    clash = out / "checkpoints" / f"{cfg.train_hash('cpu')}.pt"  # where the 2-epoch config looks for its own
    ckpt.rename(clash)
    before = clash.read_bytes()
    proc = stage(workdir, "pipeline.train", *args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another config" in lines[0], proc.stderr
    assert clash.read_bytes() == before


def test_bad_param_exits_2_with_one_line(workdir):
    proc = stage(
        workdir, "pipeline.train", "--variant", "dsts", "--set", "model.dsts.num_layers=0", check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model.dsts.num_layers" in proc.stderr


def test_a_store_mlflow_refuses_exits_2_with_one_line_and_writes_nothing(workdir):
    out = workdir / "refused"
    uri = f"file:{workdir / 'mlruns'}"  # MLflow 3's retired file store
    proc = stage(
        workdir,
        "pipeline.train",
        *("--variant", "baseline", "--seed", "0", "--out", str(out), "--set", "train.epochs=1"),
        env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "false"},
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not (workdir / "mlruns").exists()


@pytest.mark.parametrize("variant", ["dsts", "dsts_udl"])
def test_torchrun_two_gloo_processes_train_one_epoch_into_one_run(workdir, variant):
    out = workdir / f"ddp_{variant}"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        CI="true",
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'ddp.db'}",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "pipeline.train",
            "--params",
            str(workdir / "params.yaml"),
            "--variant",
            variant,
            "--seed",
            "0",
            "--set",
            "train.epochs=1",
            "--out",
            str(out),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "model.pt").exists() and (out / "history.csv").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'ddp.db'}")
    experiment = client.get_experiment_by_name("dsts-bench-generated")
    runs = client.search_runs([experiment.experiment_id], f"tags.variant = '{variant}'")
    assert len(runs) == 1, "only rank 0 talks to MLflow"
    assert runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [1]


def test_predict_prints_top5_and_neurons_and_rejects_bad_videos(workdir, tmp_path):
    out = workdir / "predict_run"
    args = ["--variant", "dsts", "--seed", "0", "--out", str(out), "--set", "tracking.enabled=false"]
    stage(workdir, "pipeline.train", *args, "--set", "train.epochs=1")
    video = next((workdir / "data" / "generated" / "rgb").glob("*.mp4"))
    proc = stage(workdir, "pipeline.predict", str(video), *args, "--set", "train.epochs=1")
    lines = proc.stdout.strip().splitlines()
    probs = [float(line.split("%")[0]) for line in lines[1:6]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.01
    assert lines[-1].strip().startswith("neurons (first view): layer 0:")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    for path in (bad, tmp_path / "missing.mp4"):
        proc = stage(workdir, "pipeline.predict", str(path), *args, "--set", "train.epochs=1", check=False)
        assert (
            proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and str(path) in proc.stderr
        )


def test_routing_statistics_are_logged_and_change_nothing(workdir):
    """The training-time routing keys are in history.csv for a DSTS variant, and collecting them draws
    no random number: the same seed trains the same weights and epoch metrics without them."""
    cfg = load_config(
        workdir / "params.yaml", variant="dsts_udl", seed=0, overrides=["tracking.enabled=false"]
    )
    with_stats = Trainer(cfg, workdir / "stats_on").fit()
    without = Trainer(cfg, workdir / "stats_off", routing_stats=False).fit()
    keys = [f"train/layer{j}/{k}" for j in range(2) for k in ROUTING_KEYS]
    for row, plain in zip(with_stats.history, without.history, strict=True):
        assert set(keys) <= set(row) and not set(keys) & set(plain)
        assert {k: v for k, v in row.items() if k not in keys} == plain
        assert 0.0 <= row["train/layer0/argmax_agreement"] <= 1.0
        assert 0.0 < row["train/layer0/selection_entropy_norm"] <= 1.0
    for (name, a), (_, b) in zip(
        with_stats.model.state_dict().items(), without.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_validation_interval_reads_fewer_epochs_and_trains_the_same_model(workdir):
    """``train.val_interval``: a run validated every second epoch and through its last quarter reads
    the same validation rows at those epochs as a run validated every epoch, writes no validation
    at the others, and ends with the same weights and BatchNorm statistics (precise BN)."""

    def fit(interval: int):
        overrides = [
            "tracking.enabled=false",
            "train.precise_bn=true",
            "train.epochs=6",
            f"train.val_interval={interval}",
        ]
        cfg = load_config(workdir / "params.yaml", variant="dsts", seed=0, overrides=overrides)
        return Trainer(cfg, workdir / f"interval{interval}").fit()

    every, sparse = fit(1), fit(2)
    kept = [2, 4, 5, 6]  # every second epoch, and the last quarter: q = 2 of 6, epochs 4 to 6
    assert [int(r["epoch"]) for r in sparse.history if "val/top1" in r] == kept
    for a, b in zip(every.history, sparse.history, strict=True):
        assert b == (
            a if int(a["epoch"]) in kept else {k: v for k, v in a.items() if not k.startswith("val/")}
        )
    assert sparse.val_correct == [row for row in every.val_correct if row[0] in kept]
    for (name, a), (_, b) in zip(
        every.model.state_dict().items(), sparse.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


STATISTICS = ("running_mean", "running_var", "num_batches_tracked", "_mean", "_var")


@pytest.mark.parametrize("variant", ["baseline", "dsts_udl"])
def test_precise_bn_changes_what_validation_reads_never_what_training_does(workdir, variant):
    """``train.precise_bn``: the same seed trains the same weights and training losses, with or
    without it; only the statistics differ, and validation reads the recomputed ones. For the
    backbone's BatchNorm layers the oracle is written out: each statistic is the average over the
    last epoch's training batches of that batch's own mean and unbiased variance of the layer's
    input, the model otherwise in evaluation mode (``baseline`` only: a DSTS neuron after the
    backbone does not change the backbone's inputs, but its own statistics have their own test in
    tests/test_engine.py)."""

    def config(precise: bool):
        overrides = ["tracking.enabled=false", f"train.precise_bn={str(precise).lower()}"]
        return load_config(workdir / "params.yaml", variant=variant, seed=0, overrides=overrides)

    plain = Trainer(config(False), workdir / f"pbn_off_{variant}").fit()
    trainer = Trainer(config(True), workdir / f"pbn_on_{variant}")
    precise = trainer.fit()
    for a, b in zip(plain.history, precise.history, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("val/")} == {
            k: v for k, v in b.items() if not k.startswith("val/")
        }
    before, after = plain.model.state_dict(), precise.model.state_dict()
    stats = [k for k in before if k.endswith(STATISTICS)]
    assert stats and all(torch.equal(before[k], after[k]) for k in before if k not in stats)
    assert any(not torch.equal(before[k], after[k]) for k in stats if not k.endswith("num_batches_tracked"))

    data = trainer._data()
    last = precise.history[-1]
    val = predict(precise.model, data.val_loader, torch.device("cpu"))
    assert (
        last["val/loss"] == val.loss
        and last["val/top1"] == (val.scores.argmax(1) == val.labels).float().mean().item()
    )
    if variant != "baseline":
        return
    data.set_epoch(len(precise.history) - 1)
    model = copy.deepcopy(precise.model).eval()
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm3d)}
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in norms}

    def by_hand(name, bn):
        def forward(z):
            out, mean, var = by_hand_batch_norm(z, bn)
            seen[name].append((mean, var))
            return out

        return forward

    for name, bn in norms.items():
        bn.forward = by_hand(name, bn)
    with torch.no_grad():
        for clips, _ in data.train_loader:
            model(clips)
    for name, bn in dict(precise.model.named_modules()).items():
        if name in norms:
            means, variances = zip(*seen[name], strict=True)
            torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-5, atol=1e-6)
