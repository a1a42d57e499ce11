"""One way to derive seeds: every independent random stream is a pure function of integers."""

from __future__ import annotations

import numpy as np


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence hashing), the same
    on every platform: (seed, stream, epoch) -> the seed of that stream in that epoch."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
