"""Timings of the DSTS hot paths at the CPU default shapes (small3d features (16, 64, 4, 7, 7)).

Run ``python -m pytest tests/benchmarks/test_bench_dsts.py --benchmark-only``; the normal suite
runs each body once (``--benchmark-disable``) and checks what it timed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from dsts.config import Config
from dsts.layers import DSTSLayer
from dsts.model import build_model

B, C, T, H, W = 16, 64, 4, 7, 7


def _features(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(seed)).relu()


def _literal_spikes(layer: DSTSLayer, x: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [
            F.conv3d(x, layer.score_weight[i].view(C, C, 1, 1, 1)).sum(dim=(1, 2, 3, 4))
            for i in range(layer.num_neurons)
        ],
        dim=1,
    )


def layer_step(neurons: int, routing: str) -> tuple[Callable[[], torch.Tensor], DSTSLayer, torch.Tensor]:
    """``(one forward and backward of a training-mode layer, the layer, its input)``; the step
    reseeds, so every call draws the same noise."""
    torch.manual_seed(0)
    layer = DSTSLayer(C, neurons, routing=routing).train()
    x = _features().requires_grad_()

    def step() -> torch.Tensor:
        torch.manual_seed(1)
        y = layer(x)
        y.sum().backward()
        return y

    return step, layer, x


def spike_step(method: str) -> tuple[Callable[[], torch.Tensor], DSTSLayer, torch.Tensor]:
    """``(the spikes' forward and backward by ``method``, the layer, its input)``: ``"identity"``
    (``DSTSLayer.spikes``) or ``"conv_then_sum"`` (a conv per neuron, then the sum)."""
    torch.manual_seed(0)
    layer = DSTSLayer(C, 4)
    x = _features().requires_grad_()
    spikes = layer.spikes if method == "identity" else (lambda z: _literal_spikes(layer, z))

    def step() -> torch.Tensor:
        v = spikes(x)
        v.sum().backward()
        return v

    return step, layer, x


@pytest.mark.parametrize("routing", ["dense", "sparse"])
@pytest.mark.parametrize("neurons", [4, 8, 16])
def test_bench_layer_forward_backward(benchmark, neurons, routing):
    benchmark.group = f"DSTS layer fwd+bwd, N={neurons}"
    step, layer, x = layer_step(neurons, routing)
    reference = copy.deepcopy(layer)
    y = benchmark(step)
    # What was timed is the layer's forward: the other routing gives it under the same draws.
    reference.routing = "sparse" if routing == "dense" else "dense"
    reference.load_state_dict(layer.state_dict())
    reference.bn_num_batches_tracked.zero_()
    torch.manual_seed(1)
    torch.testing.assert_close(reference(x), y, rtol=1e-4, atol=1e-4)
    assert len(layer.last_selection.unique()) > 1


@pytest.mark.parametrize("method", ["identity", "conv_then_sum"])
def test_bench_spike(benchmark, method):
    benchmark.group = "spike fwd+bwd, N=4"
    step, layer, x = spike_step(method)
    v = benchmark(step)
    torch.testing.assert_close(v, _literal_spikes(layer, x).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("routing", ["dense", "sparse"])
def test_bench_training_step_of_the_cpu_default_model(benchmark, routing):
    benchmark.group = "training step, CPU default model, batch 16"
    cfg = Config()
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=10).train()
    model.dsts.set_routing(routing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(
        cfg.train.batch_size, 3, cfg.data.num_frames, cfg.data.crop, cfg.data.crop, generator=gen
    )
    labels = torch.randint(0, 10, (cfg.train.batch_size,), generator=gen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(clips), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    loss = benchmark(step)
    assert loss == loss and 0 < loss < 100
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "head.weight" in moved and any(".spatial_weight" in n for n in moved)
