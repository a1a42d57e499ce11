"""One way to derive seeds: every independent random stream is a pure function of integers.

Each stream has a name and one arity. Variants that share a seed share the streams they have in
common: the data order, the augmentation draws, the initial weights of the parts they share (the
backbone, the head), so that comparisons paired by seed see the same data and the same start (common
random numbers); the DSTS module's Gumbel and Semhash draws and dropout have streams of their own.
"""

from __future__ import annotations

import numpy as np

# Stream tags: distinct and non-zero (numpy's SeedSequence ignores trailing zeros, so a zero tag
# could collide with a shorter key).
STREAMS = {
    "batches": 11,  # the training order: (seed, epoch)
    "meta_batches": 12,  # UDL's D_val order: (seed, epoch)
    "augment": 13,  # one clip's frame choice and crop: (dataset seed, epoch, index)
    "meta_augment": 14,  # the base seed of D_val's augmentation
    "init/backbone": 15,
    "init/dsts": 16,
    "init/head": 17,
    "routing": 18,  # the DSTS module's Gumbel and Semhash draws
    "dropout": 19,  # the global RNG after the model is built: dropout
    "rank": 20,  # data parallelism: each rank's own draws, (seed, rank, epoch)
}


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence hashing), the same
    on every platform."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def stream_seed(seed: int, stream: str, *parts: int) -> int:
    """The seed of the named ``stream`` of run seed ``seed`` (and of ``parts``: an epoch, an index)."""
    return mix_seed(seed, STREAMS[stream], *parts)
