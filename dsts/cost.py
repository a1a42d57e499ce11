"""The cost of a model per clip: FLOPs of one forward and its CPU latency.

The ``evaluate`` stage measures them once per run (``num_parameters`` and ``flops_per_clip`` go
into ``metrics.json``, the latency into ``cost.json``), so that the report only reads files.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from dsts.errors import DSTSError

__all__ = ["CostError", "count_flops", "cpu_latency_ms"]


class CostError(DSTSError, ValueError):
    """A bad measurement setting (for example no timed repeat)."""


def _clip(shape: Sequence[int]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def count_flops(model: torch.nn.Module, shape: Sequence[int]) -> int:
    """FLOPs of one evaluation-mode forward on a ``shape`` input (``torch.utils.flop_counter``:
    2 per multiply-add of the matmuls and convolutions that actually run). The mode is restored."""
    x = _clip(shape)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def cpu_latency_ms(model: torch.nn.Module, shape: Sequence[int], repeats: int = 10, warmup: int = 3) -> float:
    """Median wall time in milliseconds of ``repeats`` evaluation-mode forwards at ``shape``, after
    ``warmup`` untimed ones (the median shrugs off a forward slowed by other work on the machine).
    Threads are left as they are; the mode is restored."""
    if repeats < 1:
        raise CostError(f"latency repeats: {repeats} must be >= 1")
    x = _clip(shape)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)
