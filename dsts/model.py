"""The whole network: backbone, DSTS (with its skip connection), global average pooling, dropout, head."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from dsts.backbones import BACKBONE_CHANNELS, build_backbone
from dsts.config import Config, ConfigError
from dsts.module import DSTS
from dsts.seeding import stream_seed

# model.dsts settings that are DSTS's own arguments (the others, like enabled, are the trainer's)
DSTS_ARGUMENTS = frozenset(inspect.signature(DSTS).parameters)


class DSTSNet(nn.Module):
    """``(B, 3, T, H, W) -> logits (B, num_classes)``. ``dsts`` is None for the baseline."""

    def __init__(
        self, backbone: nn.Module, dsts: DSTS | None, channels: int, num_classes: int, dropout: float
    ):
        super().__init__()
        self.backbone = backbone
        self.dsts = dsts
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The pooled ``(B, C)`` features the head classifies."""
        f = self.backbone(x)
        if self.dsts is not None:
            f = self.dsts(f)
        return f.mean(dim=(2, 3, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


@contextlib.contextmanager
def _initialised_from(seed: int | None, stream: str) -> Iterator[None]:
    """While open, the global RNG (what ``nn`` initialisers draw from) is ``stream`` of ``seed``; the
    state before comes back on exit. ``seed=None``: the global RNG as it is."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, stream))
        yield


def build_model(config: Config, num_classes: int | None = None, seed: int | None = None) -> DSTSNet:
    """Backbone, DSTS (``model.dsts.enabled``; ``static`` is ``num_neurons = 1``), pooling, dropout and
    a linear head. ``num_classes`` overrides ``config.data.num_classes`` (the trainer takes it from
    the data set). ``model.dsts.channels`` must equal the backbone's output width (64 for small3d,
    512 for the torchvision ResNets): it is checked, not silently replaced.

    With a ``seed``, each part is initialised from its own stream of it (:mod:`dsts.seeding`), so
    variants built with one seed share the backbone and head they have in common, and the DSTS
    module gets a generator of its own for its Gumbel and Semhash draws; without one, everything
    draws from the global RNG in turn.

    ``train.channels_last`` stores the weights channels-last (``channels_last_3d``), on every device:
    the convolutions then run on kernels for that layout, which on the CPU are the faster ones
    (docs/reproducibility.md). The layout changes the floating-point path, so it is part of what a
    run's bytes depend on, like the device."""
    classes = num_classes if num_classes is not None else config.data.num_classes
    if classes is None or classes < 1:
        raise ConfigError(
            f"data.num_classes: {classes!r}; build_model needs the number of classes (set it, or pass num_classes)"
        )
    m = config.model
    width = BACKBONE_CHANNELS[m.backbone]
    with _initialised_from(seed, "init/backbone"):
        backbone = build_backbone(m.backbone, m.pretrained)
    dsts = None
    if m.dsts.enabled:
        d = m.dsts
        if d.channels != width:
            raise ConfigError(
                f"model.dsts.channels: {d.channels} does not match backbone {m.backbone}'s {width} output "
                f"channels (set model.dsts.channels: {width})"
            )
        with _initialised_from(seed, "init/dsts"):
            dsts = DSTS(**{k: v for k, v in dataclasses.asdict(d).items() if k in DSTS_ARGUMENTS})
        if seed is not None:
            dsts.generator = torch.Generator().manual_seed(stream_seed(seed, "routing"))
    with _initialised_from(seed, "init/head"):
        net = DSTSNet(backbone, dsts, width, classes, m.dropout)
    return net.to(memory_format=torch.channels_last_3d) if config.train.channels_last else net
