"""The engine's pieces: the learning-rate schedule, the validated epochs, evaluation-mode prediction over views, the
evaluation metrics against literal values, and BatchNorm statistics recomputed against a by-hand
BatchNorm."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from dsts.config import Config, load_config
from dsts.engine import (
    Predictions,
    evaluation_metrics,
    lr_factor,
    predict,
    recompute_bn_statistics,
    validated,
)
from dsts.layers import DSTSLayer
from dsts.model import build_model
from dsts.report.verdicts import late_gain


@given(step=st.integers(0, 199), warmup=st.sampled_from([0.0, 0.5, 2.0]))
def test_schedule_warmup_then_cosine(step, warmup):
    cfg = load_config(
        "params.yaml", overrides=["train.epochs=4", "train.schedule=cosine", f"train.warmup_epochs={warmup}"]
    )
    per_epoch = 50
    w = int(round(warmup * per_epoch))
    f = lr_factor(cfg, step, per_epoch)
    if step < w:
        assert f == pytest.approx((step + 1) / w)
    else:
        expected = 0.5 * (1 + math.cos(math.pi * (step - w) / (200 - w)))
        assert f == pytest.approx(expected)
    assert 0.0 <= f <= 1.0


def test_step_schedule():
    cfg = load_config(
        "params.yaml",
        overrides=["train.schedule=step", "train.step_size=2", "train.gamma=0.5", "train.warmup_epochs=0"],
    )
    assert [lr_factor(cfg, e * 10, 10) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]


@given(epochs=st.integers(1, 300), interval=st.integers(1, 40))
def test_validation_covers_every_epoch_the_convergence_check_reads(epochs, interval):
    """Every ``interval``-th epoch and the last quarter, ``q = max(1, E/4 rounded half up)`` epochs
    after ``E - q`` (exact rationals here), are validated, and nothing else; so the late gain of a run
    validated only there is known whenever the run has such a quarter."""
    q = max(1, math.floor(Fraction(epochs, 4) + Fraction(1, 2)))
    seen = [e for e in range(1, epochs + 1) if validated(e, epochs, interval)]
    assert seen == [e for e in range(1, epochs + 1) if e % interval == 0 or e >= epochs - q]
    assert seen[-1] == epochs
    history = [{"epoch": float(e), **({"val/top1": 0.5} if e in seen else {})} for e in range(1, epochs + 1)]
    gain, last, start = late_gain(history)
    assert (last, start) == (epochs, epochs - q)
    assert math.isfinite(gain) == (epochs - q >= 1)


def test_evaluation_metrics_against_literal_values():
    # 4 samples, 3 classes: the argmax is right for samples 0 and 2; sample 1's label is second best
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 1, 2, 2])
    selection = torch.tensor([[0], [0], [1], [1]])
    pred = Predictions(scores, labels, loss=0.25, selection=selection, gates=None)
    got = evaluation_metrics(pred, num_classes=3, num_neurons=2, top_k=2, prefix="test/")
    assert got["test/top1"] == 0.5
    assert got["test/top2"] == 0.75  # sample 3's label is third
    assert got["test/mean_class_accuracy"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert got["test/loss"] == 0.25
    assert got["test/layer0/usage/neuron0"] == 0.5 and got["test/layer0/max_usage"] == 0.5
    assert all(k.startswith("test/") for k in got) and all(v == v for v in got.values())


class Views(nn.Module):
    """Logits that depend on the clip's first value only, so each view's answer is known."""

    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0, 0], -x[:, 0, 0, 0, 0]], dim=1)


def test_predict_averages_probabilities_over_views_and_restores_the_mode():
    model = Views().train()
    clips = torch.zeros(2, 3, 3, 1, 1, 1)  # 2 samples, 3 views each
    clips[0, :, 0, 0, 0, 0] = torch.tensor([1.0, 2.0, -1.0])
    clips[1, :, 0, 0, 0, 0] = torch.tensor([0.0, 0.0, 0.0])
    pred = predict(model, [(clips, torch.tensor([0, 1]))], torch.device("cpu"))

    def p0(v):
        return 1.0 / (1.0 + math.exp(-2.0 * v))  # softmax([v, -v])[0]

    assert pred.scores[0, 0].item() == pytest.approx((p0(1.0) + p0(2.0) + p0(-1.0)) / 3)
    assert pred.scores[1].tolist() == [0.5, 0.5]
    expected_loss = -(math.log(pred.scores[0, 0].item()) + math.log(0.5)) / 2
    assert pred.loss == pytest.approx(expected_loss)
    assert model.training and pred.selection is None


# ------------------------------------------------------------------ recomputed BatchNorm statistics


def by_hand_batch_norm(
    z: torch.Tensor, bn: nn.BatchNorm3d
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm written out: the batch's own mean and biased variance normalise it;
    returns the output, the mean and the unbiased variance."""
    mean = z.mean(dim=(0, 2, 3, 4))
    centred = z - mean.view(1, -1, 1, 1, 1)
    biased = centred.square().mean(dim=(0, 2, 3, 4))
    n = z.numel() // z.shape[1]
    out = centred / torch.sqrt(biased + bn.eps).view(1, -1, 1, 1, 1)
    out = out * bn.weight.view(1, -1, 1, 1, 1) + bn.bias.view(1, -1, 1, 1, 1)
    return out, mean, biased * n / (n - 1)


@given(
    batches=st.integers(1, 4),
    size=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    training=st.booleans(),
)
def test_recomputed_bn_statistics_average_each_batchs_own_statistics(batches, size, seed, training):
    """Each BatchNorm's running mean and variance become the average over the batches of the
    statistics that training-mode BatchNorm computes from each batch (the later layers see the
    earlier ones normalised that way), whatever they were before; the momenta, the mode, the
    parameters and the global random state are as they were."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv3d(2, 3, 1),
        nn.BatchNorm3d(3),
        nn.ReLU(),
        nn.Conv3d(3, 2, (1, 2, 2)),
        nn.BatchNorm3d(2, momentum=0.3),
    ).double()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype).abs() + 0.1)
    model.train(training)
    params = {k: v.clone() for k, v in model.named_parameters()}
    clips = [torch.randn(size, 2, 2, 3, 3, generator=gen, dtype=torch.float64) for _ in range(batches)]
    conv1, bn1, _, conv2, bn2 = model
    stats = {1: ([], []), 2: ([], [])}
    with torch.no_grad():
        for x in clips:
            y, m, v = by_hand_batch_norm(conv1(x), bn1)
            stats[1][0].append(m), stats[1][1].append(v)
            _, m, v = by_hand_batch_norm(conv2(torch.relu(y)), bn2)
            stats[2][0].append(m), stats[2][1].append(v)
    state = torch.get_rng_state()
    recompute_bn_statistics(model, [(x, torch.zeros(len(x))) for x in clips], torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    for k, bn in ((1, bn1), (2, bn2)):
        torch.testing.assert_close(bn.running_mean, torch.stack(stats[k][0]).mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, torch.stack(stats[k][1]).mean(0), rtol=1e-12, atol=1e-12)
    assert (bn1.momentum, bn2.momentum) == (0.1, 0.3)
    assert all(m.training == training for m in model.modules())
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())


def test_recomputing_a_dsts_models_statistics_draws_nothing_and_moves_every_statistic():
    """On the whole model: every BatchNorm of the backbone and every DSTS neuron that gets samples has
    new statistics, the weights and the routing generator are untouched, and it evaluates as a model
    whose running statistics were set to those values."""
    cfg = Config()
    model = build_model(cfg, num_classes=4, seed=0)
    with torch.no_grad():  # statistics far from any batch's, so that each must move
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "_mean")):
                buffer.fill_(5.0)
            elif name.endswith(("running_var", "_var")):
                buffer.fill_(9.0)
    assert sum(isinstance(m, DSTSLayer) for m in model.modules()) == cfg.model.dsts.num_layers
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    clips = [torch.randn(4, 3, 4, 16, 16, generator=gen) for _ in range(3)]
    routing = model.dsts.generator.get_state()
    recompute_bn_statistics(model.train(), [(x, None) for x in clips], torch.device("cpu"))
    assert torch.equal(model.dsts.generator.get_state(), routing) and model.training
    after = model.state_dict()
    moved = [k for k in before if k.endswith(("mean", "var")) and not torch.equal(before[k], after[k])]
    norms = [k for k, m in model.named_modules() if isinstance(m, nn.BatchNorm3d)]
    assert {k.rsplit(".", 1)[0] for k in moved if k.endswith("running_mean")} == set(norms)
    for name, layer in model.named_modules():
        if isinstance(layer, DSTSLayer):
            for bn in layer._bn_names:
                assert f"{name}.{bn}_mean" in moved and f"{name}.{bn}_var" in moved
    for k, v in after.items():
        if not k.endswith(("mean", "var", "num_batches_tracked")):
            assert torch.equal(v, before[k]), k
    copy = build_model(cfg, num_classes=4, seed=0)
    copy.load_state_dict(after)
    torch.testing.assert_close(model.eval()(clips[0]), copy.eval()(clips[0]), rtol=0, atol=0)
