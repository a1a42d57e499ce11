"""The DSTS module (``L`` DSTS layers and the skip connection) and relaxed mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsts.estimators import GateNoise
from dsts.layers import (
    DEFAULT_ROUTING,
    DEFAULT_SCORE_INIT_STD,
    DEFAULT_TAU,
    DSTSLayer,
    Routing,
    Specialization,
)


class DSTS(nn.Module):
    """Dynamic Spatio-Temporal Specialization: ``x + layers(x)`` on ``(B, C, T, H, W)``, with a
    BatchNorm between consecutive layers (docs/method.md, sections 2 to 4).

    Each layer's selection logits are its spikes over a scale common to a sample's neurons, over
    ``tau`` (:meth:`DSTSLayer.selection_logits`): training samples their softmax by a hard
    Gumbel-Softmax, relaxed mode uses their softmax, evaluation their argmax (that of the spikes).
    Being dimensionless, one ``tau`` means the same on every backbone and channel count. The defaults
    of ``tau`` and ``routing`` were chosen by measurement (docs/routing.md): ``tau`` keeps the
    training-time choice between a coin toss (no specialization) and a saturated softmax (almost no
    straight-through gradient to the scoring kernels).

    ``generator`` (None: the global CPU RNG) feeds every layer's Gumbel and Semhash draws.
    After each forward: ``last_selection (B, L)`` (long) and ``last_gates (B, L, C)`` (the gate
    values the selected neuron applied, detached: binary in evaluation, the Semhash mix of hard
    bits and soft values in training, soft in relaxed mode; None for ``"3d"``).
    """

    def __init__(
        self,
        channels: int,
        num_layers: int,
        num_neurons: int,
        specialization: Specialization = "st",
        routing: Routing = DEFAULT_ROUTING,
        tau: float = DEFAULT_TAU,
        gate_noise_std: float = 1.0,
        gate_noise: GateNoise = "normal",
        p_hard: float = 0.5,
        score_init_std: float = DEFAULT_SCORE_INIT_STD,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DSTS: num_layers must be >= 1, got {num_layers}")
        self.channels = channels
        self.specialization: Specialization = specialization
        self.layers = nn.ModuleList(
            DSTSLayer(
                channels,
                num_neurons,
                specialization=specialization,
                routing=routing,
                tau=tau,
                gate_noise_std=gate_noise_std,
                gate_noise=gate_noise,
                p_hard=p_hard,
                score_init_std=score_init_std,
            )
            for _ in range(num_layers)
        )
        # Between layers, a BatchNorm centres each channel, so that the next layer's spikes carry no
        # mode common to every clip (docs/method.md, section 3): a fusion output is W z + b with z >= 0.
        self.norms = nn.ModuleList(nn.BatchNorm3d(channels) for _ in range(num_layers - 1))
        self.generator: torch.Generator | None = None
        self.last_selection: Tensor | None = None
        self.last_gates: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        y = x
        selections: list[Tensor] = []
        gates: list[Tensor] = []
        for j, layer in enumerate(self.layers):
            if j > 0:
                y = self._between(j - 1, y)
            y = layer(y, generator=self.generator)
            selections.append(layer.last_selection)
            if layer.last_gates is not None:
                gates.append(layer.last_gates)
        self.last_selection = torch.stack(selections, dim=1)
        self.last_gates = torch.stack(gates, dim=1) if gates else None
        return x + y

    def _between(self, j: int, y: Tensor) -> Tensor:
        """The BatchNorm after layer ``j``; in relaxed training mode it normalises with the batch's
        statistics and leaves the running ones alone, as the neurons' BatchNorms do there."""
        norm = self.norms[j]
        if self.training and self.layers[j + 1].relaxed:
            return F.batch_norm(y, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
        return norm(y)

    def set_p_hard(self, value: float) -> None:
        """Set every layer's share of hard Semhash entries (see :func:`p_hard_schedule`)."""
        for layer in self.layers:
            layer.set_p_hard(value)

    def set_routing(self, routing: Routing) -> None:
        """Switch every layer between ``"dense"`` and ``"sparse"`` (same parameters, same forward)."""
        if routing not in ("dense", "sparse"):
            raise ValueError(f"DSTS: routing must be 'dense' or 'sparse', got {routing!r}")
        for layer in self.layers:
            layer.routing = routing


def p_hard_schedule(epoch: float, p_hard: float, warmup_epochs: int) -> float:
    """The hard share at (0-based, possibly fractional) ``epoch``: a linear ramp from 0 at epoch 0
    to ``p_hard`` at ``warmup_epochs`` (tensor2tensor's warm-up), then constant; ``warmup_epochs =
    0`` gives ``p_hard`` from the start."""
    if warmup_epochs <= 0:
        return p_hard
    return p_hard * min(1.0, max(0.0, epoch) / warmup_epochs)


@contextmanager
def relaxed(model: nn.Module) -> Iterator[nn.Module]:
    """Relaxed mode for every :class:`DSTSLayer` in ``model``: ``softmax(v / tau)`` selection and
    saturating-sigmoid gates without noise, every neuron computed (dense), whatever the routing.
    BatchNorm: training mode uses each neuron's whole-batch statistics and leaves the running ones
    alone; evaluation mode uses the running ones. The previous flags come back on exit."""
    layers = [m for m in model.modules() if isinstance(m, DSTSLayer)]
    previous = [layer.relaxed for layer in layers]
    try:
        for layer in layers:
            layer.relaxed = True
        yield model
    finally:
        for layer, flag in zip(layers, previous, strict=True):
            layer.relaxed = flag
