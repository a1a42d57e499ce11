"""Backbones: a small 3D CNN for the CPU default, and torchvision's video ResNets cut before pooling.

Nothing is downloaded: torchvision models are built with ``weights=None`` and pretrained weights
come only from a local file (``model.pretrained``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dsts.errors import DSTSError

TORCHVISION_BACKBONES = ("r3d_18", "mc3_18", "r2plus1d_18")
BACKBONES = ("small3d", *TORCHVISION_BACKBONES)
# Output channels, which the DSTS module's ``channels`` must equal.
BACKBONE_CHANNELS = {"small3d": 64, "r3d_18": 512, "mc3_18": 512, "r2plus1d_18": 512}


def _block(c_in: int, c_out: int, pool: tuple[int, int, int] | None, relu: bool = True) -> nn.Sequential:
    """A 3x3x3 convolution, BatchNorm, ReLU (unless ``relu`` is false) and max pooling (when given;
    lengths rounded up)."""
    layers: list[nn.Module] = [
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True) if relu else nn.Identity(),
    ]
    if pool is not None:
        layers.append(nn.MaxPool3d(pool, ceil_mode=True))
    return nn.Sequential(*layers)


class Small3D(nn.Sequential):
    """The CPU default: ``(B, 3, T, H, W) -> (B, 64, T/2, H/8, W/8)`` in four conv3d blocks.

    Each block is a 3x3x3 convolution at the resolution it receives, BatchNorm and a ReLU; max
    pooling after the first three halves space, then time and space, then space. Widths 16, 32, 64
    and 64. Lengths are rounded up (``ceil``), so ``(8, 56, 56)`` gives ``(4, 7, 7)``. Every block
    sees time, so motion is modelled from the first layer, as in the plain reference
    (``python -m pipeline.reference``), which it matches (docs/study.md).

    The last block ends at its BatchNorm so that the features are centred per channel: after a
    ReLU the DSTS spikes share a common mode and evaluation sends every clip to the same neuron
    (docs/method.md, section 3; measured in docs/routing.md).
    """

    out_channels = 64

    def __init__(self) -> None:
        super().__init__(
            _block(3, 16, (1, 2, 2)),
            _block(16, 32, (2, 2, 2)),
            _block(32, 64, (1, 2, 2)),
            _block(64, 64, None, relu=False),
        )


def _torchvision(name: str) -> nn.Module:
    from torchvision.models import video  # torchvision only when a torchvision backbone is asked for

    return getattr(video, name)(weights=None)


class VideoResNetTrunk(nn.Module):
    """torchvision's ``r3d_18``/``mc3_18``/``r2plus1d_18`` up to ``layer4`` (no pooling, no fc), then a
    BatchNorm: ``(B, 3, T, H, W) -> (B, 512, T/8, H/16, W/16)``; ``mc3_18`` keeps ``T`` (its layers 2
    to 4 are 2D convs with stride ``(1, 2, 2)``).

    ``layer4`` ends with a ReLU, so its features share a large positive mode; the BatchNorm centres
    each channel, as small3d's last block does, so that the DSTS spikes depend on the clip
    (docs/method.md, section 3). Pretrained weights load into ``body`` (torchvision's own names);
    the BatchNorm starts at ``(1, 0)``."""

    out_channels = 512

    def __init__(self, name: str) -> None:
        super().__init__()
        full = _torchvision(name)
        self.body = nn.Sequential()
        for part in ("stem", "layer1", "layer2", "layer3", "layer4"):
            self.body.add_module(part, getattr(full, part))
        self.norm = nn.BatchNorm3d(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.body(x))


def load_weights(module: nn.Module, path: str | Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local ``state_dict`` file into ``module`` (``weights_only``); keys under
    ``ignore_prefixes`` (a classifier the trunk does not have) are dropped. Every problem is one
    :class:`DSTSError` line naming the file."""
    file = Path(path)
    if not file.is_file():
        raise DSTSError(
            f"pretrained weights file not found: {file} (download the state_dict elsewhere and put it there; "
            "nothing is downloaded at run time)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise DSTSError(f"{file}: not a readable PyTorch state_dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DSTSError(f"{file}: expected a state_dict (a mapping of names to tensors)")
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (first {missing[0]!r})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (first {unexpected[0]!r})")
        raise DSTSError(f"{file}: does not match the backbone: {'; '.join(parts)}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise DSTSError(
                f"{file}: {key} has shape {tuple(value.shape)}, the backbone needs {tuple(own[key].shape)}"
            )
    module.load_state_dict(state)


def build_backbone(name: str, pretrained: str | Path | None = None) -> nn.Module:
    """A backbone by name, with weights from the local file ``pretrained`` when given. A torchvision
    file may be the whole classifier's ``state_dict`` (its ``fc.*`` keys are ignored)."""
    if name == "small3d":
        backbone: nn.Module = Small3D()
        target, ignore = backbone, ()
    elif name in TORCHVISION_BACKBONES:
        backbone = VideoResNetTrunk(name)
        target, ignore = backbone.body, ("fc.",)
    else:
        raise DSTSError(f"unknown backbone {name!r} (one of {', '.join(BACKBONES)})")
    if pretrained is not None:
        load_weights(target, pretrained, ignore)
    return backbone
