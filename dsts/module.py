"""The DSTS module (``L`` DSTS layers and the skip connection) and relaxed mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
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
    """Dynamic Spatio-Temporal Specialization: ``x + layers(x)`` on ``(B, C, T, H, W)``.

    The selection logits are ``v / tau`` (training: hard Gumbel-Softmax at temperature 1, which
    samples ``softmax(v / tau)``; relaxed: ``softmax(v / tau)``; evaluation: argmax of ``v``). The
    spike is a sum over ``C_out * T * H * W`` terms, so ``v / tau`` is the mean spike at temperature
    ``tau / P``: ``tau`` alone decides how peaked the selection is, at initialisation and during
    training. Defaults, by measurement on the generated benchmark at the CPU default shapes (small3d
    features ``(16, 64, 4, 7, 7)``, ``N = 4``; numbers in report 3b):

    - ``tau = 1000``, scoring kernels ``N(0, score_init_std^2)`` with ``score_init_std = 0.1``.
      At initialisation only ``score_init_std / tau`` matters: the mean entropy of
      ``softmax(v / tau)`` is 0.98 (layer 1) and 0.93 (layer 2) of ``log N`` on real clips (seeds
      0-4). During training only ``lr / tau`` matters (Adam's step does not depend on the gradient's
      scale), and one Adam step moves every spike by up to about ``lr * C_out * |sum_p x|_1``: with
      ``tau = 1`` and the default ``lr = 2e-3`` the routing collapsed onto one neuron within five
      steps, with ``tau = 100`` within ten; with ``tau = 1000`` the hard selection still used every
      neuron after 40 steps (entropy of softmax(v / tau) 0.73 and 0.16-0.6 of ``log N``), so the
      upstream parameters (the gates too) keep an ordinary learning rate. Scaling ``tau``,
      ``score_init_std`` and the upstream ``lr`` together gives the same training.
    - Evaluation routes by the argmax of ``v_i = w_i . sum_p x``; that sends every clip to one
      neuron when ``sum_p x`` has a large common mode (positive features after a ReLU). small3d
      therefore ends at a BatchNorm (:class:`dsts.backbones.Small3D`); layer 2 sees layer 1's
      fusion output, which keeps some common mode. The torchvision trunks end with a ReLU.
    - ``routing = "sparse"``: the same forward as dense, a cheaper backward (about N times fewer
      operator FLOPs; 2x on the whole CPU training step in report 3). On the generated benchmark at
      6 epochs both routings stay at chance accuracy, as does everything else (report 3b), so the
      choice rests on speed; the two are different gradient estimators for the scoring kernels
      (dense: exact straight-through to every spike; sparse: through ``h_a`` only).

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
        self.generator: torch.Generator | None = None
        self.last_selection: Tensor | None = None
        self.last_gates: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        y = x
        selections: list[Tensor] = []
        gates: list[Tensor] = []
        for layer in self.layers:
            y = layer(y, generator=self.generator)
            selections.append(layer.last_selection)
            if layer.last_gates is not None:
                gates.append(layer.last_gates)
        self.last_selection = torch.stack(selections, dim=1)
        self.last_gates = torch.stack(gates, dim=1) if gates else None
        return x + y

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
