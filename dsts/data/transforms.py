"""Clip transforms on uint8 frames ``(T, H, W, 3)``; outputs are float32 ``(3, T, h, w)``.

Training: resize the short side, a random crop, a horizontal flip (optional: switch it off where a
flip changes the label), normalize. Testing: resize the short side, a centre crop (or three crops
along the long side), normalize. Randomness comes only from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The Kinetics statistics torchvision's video models were trained with.
MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with the short side ``size`` and the aspect ratio kept (rounded)."""
    if height <= width:
        return size, max(size, int(round(width * size / height)))
    return max(size, int(round(height * size / width))), size


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(T, H, W, C)`` -> uint8 ``(T, h, w, C)`` with ``min(h, w) == size`` (bilinear,
    antialiased); unchanged when the short side is already ``size``."""
    t, h, w, c = frames.shape
    out_h, out_w = short_side_size(h, w, size)
    if (out_h, out_w) == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def crop(frames: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return frames[:, top : top + size, left : left + size]


def random_crop_box(height: int, width: int, size: int, generator: torch.Generator | None) -> tuple[int, int]:
    if size > height or size > width:
        raise ValueError(f"crop {size} is larger than the frame {height}x{width}")
    top = int(torch.randint(height - size + 1, (1,), generator=generator).item())
    left = int(torch.randint(width - size + 1, (1,), generator=generator).item())
    return top, left


def view_crop_boxes(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """``(top, left)`` of the test crops: the centre (1), or start, centre and end along the long
    side (3), as in the usual three-crop testing."""
    if size > height or size > width:
        raise ValueError(f"crop {size} is larger than the frame {height}x{width}")
    top, left = (height - size) // 2, (width - size) // 2
    if num_crops == 1:
        return [(top, left)]
    if num_crops != 3:
        raise ValueError(f"test crops must be 1 or 3, got {num_crops}")
    if width >= height:
        return [(top, 0), (top, left), (top, width - size)]
    return [(0, left), (top, left), (height - size, left)]


_SCALE = (1.0 / (255.0 * np.array(STD, dtype=np.float64))).astype(np.float32)
_SHIFT = (-np.array(MEAN, dtype=np.float64) / np.array(STD, dtype=np.float64)).astype(np.float32)


def normalize(frames: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float32 ``(3, T, H, W)``: ``(x / 255 - mean) / std`` per channel,
    mirrored left-right when ``flip``. Computed with numpy, one thread: per-clip work this small only
    loses time to torch's intra-op threads (they contend with the training step's)."""
    array = frames.numpy()
    if flip:
        array = array[:, :, ::-1]
    out = np.empty((3, *array.shape[:3]), dtype=np.float32)
    for c in range(3):
        np.multiply(array[..., c], _SCALE[c], out=out[c], dtype=np.float32)
        out[c] += _SHIFT[c]
    return torch.from_numpy(out)


def train_transform(
    frames: torch.Tensor, resize: int, size: int, flip: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Short-side resize, random crop, random horizontal flip (if ``flip``), normalize."""
    frames = resize_short_side(frames, resize)
    top, left = random_crop_box(frames.shape[1], frames.shape[2], size, generator)
    mirror = flip and bool(torch.rand((), generator=generator) < 0.5)
    return normalize(crop(frames, top, left, size), flip=mirror)


def test_transform(frames: torch.Tensor, resize: int, size: int, num_crops: int = 1) -> torch.Tensor:
    """Short-side resize, ``num_crops`` crops, normalize: ``(num_crops, 3, T, size, size)``."""
    frames = resize_short_side(frames, resize)
    boxes = view_crop_boxes(frames.shape[1], frames.shape[2], size, num_crops)
    return torch.stack([normalize(crop(frames, top, left, size)) for top, left in boxes])
