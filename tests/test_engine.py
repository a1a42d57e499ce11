"""The engine's pieces: the learning-rate schedule, evaluation-mode prediction over views, and the
evaluation metrics against literal values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from dsts.config import load_config
from dsts.engine import Predictions, evaluation_metrics, lr_factor, predict


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
