"""dsts.cost: FLOPs against the literal formula, latency as the median of the timed forwards."""

from __future__ import annotations

import pytest
import torch

import dsts.cost as C


def test_count_flops_against_the_literal_formula():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 5, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
    t, h, w = 4, 6, 6
    assert C.count_flops(conv, (1, 3, t, h, w)) == 2 * 5 * t * h * w * 3 * 3  # 2 per multiply-add
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2 * 2, 7))
    assert C.count_flops(lin, (1, 3, 2, 2, 2)) == 2 * 24 * 7
    lin.train()
    C.count_flops(lin, (1, 3, 2, 2, 2))
    assert lin.training  # the mode is restored


class Counting(torch.nn.Module):
    """Records the mode of every forward."""

    def __init__(self):
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


def test_latency_is_the_median_of_the_timed_forwards(monkeypatch):
    # a fake clock, read before and after each timed forward: 3, 1, 5, 2 and 4 ms
    stamps = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.005, 3.0, 3.002, 4.0, 4.004])
    monkeypatch.setattr(C.time, "perf_counter", lambda: next(stamps))
    model = Counting().train()
    assert C.cpu_latency_ms(model, (1, 3, 2, 2, 2), repeats=5, warmup=2) == pytest.approx(3.0)
    assert model.modes == [False] * 7  # 2 untimed, 5 timed, all in evaluation mode
    assert model.training


def test_latency_needs_a_timed_repeat():
    with pytest.raises(C.CostError, match="repeats: 0 must be >= 1"):
        C.cpu_latency_ms(Counting(), (1, 1), repeats=0)
