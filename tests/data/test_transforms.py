"""Clip transforms: shapes, value ranges, the normalization formula, crops, flips and resizing."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from dsts.data import transforms
from dsts.data.transforms import MEAN, STD, normalize, resize_short_side, short_side_size, view_crop_boxes

train_transform = transforms.train_transform

LOW = min((0 - m) / s for m, s in zip(MEAN, STD))
HIGH = max((1 - m) / s for m, s in zip(MEAN, STD))


def frames_of(t: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), generator=g, dtype=torch.uint8)


@given(
    t=st.integers(1, 6),
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    seed=st.integers(0, 10**6),
    flip=st.booleans(),
)
def test_train_transform_shape_and_range(t, h, w, seed, flip):
    frames = frames_of(t, h, w, seed)
    resize = min(h, w)
    crop = max(1, resize - 3)
    clip = train_transform(frames, resize, crop, flip, torch.Generator().manual_seed(seed))
    assert clip.shape == (3, t, crop, crop) and clip.dtype == torch.float32
    assert clip.min() >= LOW - 1e-5 and clip.max() <= HIGH + 1e-5


@given(t=st.integers(1, 5), h=st.integers(10, 40), w=st.integers(10, 40), seed=st.integers(0, 10**6))
def test_train_crop_is_a_window_of_the_frames(t, h, w, seed):
    """Undoing the normalization gives back a crop (possibly mirrored) of the input, exactly."""
    frames = frames_of(t, h, w, seed)
    crop = min(h, w) - 2
    clip = train_transform(frames, min(h, w), crop, True, torch.Generator().manual_seed(seed))
    mean = torch.tensor(MEAN).view(3, 1, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1, 1)
    raw = (clip * std + mean).mul(255).round().to(torch.uint8).permute(1, 2, 3, 0)
    windows = [
        frames[:, y : y + crop, x : x + crop] for y in range(h - crop + 1) for x in range(w - crop + 1)
    ]
    assert any(torch.equal(raw, win) or torch.equal(raw, win.flip(2)) for win in windows)


def test_flip_happens_about_half_the_time_and_only_when_asked():
    frames = frames_of(2, 12, 12, 0)
    flips = 0
    for seed in range(400):
        a = train_transform(frames, 12, 12, True, torch.Generator().manual_seed(seed))
        b = train_transform(frames, 12, 12, False, torch.Generator().manual_seed(seed))
        if not torch.equal(a, b):
            assert torch.equal(a, b.flip(3))
            flips += 1
    assert 150 < flips < 250


def test_normalize_is_the_literal_formula():
    frames = frames_of(3, 5, 7, 1)
    out = normalize(frames)
    for c in range(3):
        expected = (frames[..., c].double() / 255.0 - MEAN[c]) / STD[c]
        torch.testing.assert_close(out[c].double(), expected, atol=2e-6, rtol=0)


@given(crops=st.sampled_from([1, 3]), t=st.integers(1, 4), h=st.integers(16, 40), w=st.integers(16, 40))
def test_test_transform_views(crops, t, h, w):
    frames = frames_of(t, h, w, 3)
    size = min(h, w) - 4
    out = transforms.test_transform(frames, min(h, w), size, crops)
    assert out.shape == (crops, 3, t, size, size)
    boxes = view_crop_boxes(h, w, size, crops)
    for view, (top, left) in zip(out, boxes):
        torch.testing.assert_close(view, normalize(frames[:, top : top + size, left : left + size]))
    centre = view_crop_boxes(h, w, size, 1)[0]
    assert centre == ((h - size) // 2, (w - size) // 2)
    if crops == 3:  # start, centre and end along the long side
        assert boxes[1] == centre
        if w >= h:
            assert [left for _, left in boxes] == [0, (w - size) // 2, w - size]
        else:
            assert [top for top, _ in boxes] == [0, (h - size) // 2, h - size]


@given(h=st.integers(4, 300), w=st.integers(4, 300), size=st.integers(4, 128))
def test_short_side_size(h, w, size):
    out_h, out_w = short_side_size(h, w, size)
    assert min(out_h, out_w) == size
    assert abs(out_h / out_w - h / w) <= 1.0 / size + 1e-9 or abs(out_w / out_h - w / h) <= 1.0 / size + 1e-9


def test_resize_short_side():
    frames = torch.full((2, 40, 60, 3), 200, dtype=torch.uint8)
    out = resize_short_side(frames, 20)
    assert out.shape == (2, 20, 30, 3) and out.dtype == torch.uint8
    assert torch.all(out == 200)  # a constant image stays constant
    assert resize_short_side(frames, 40) is frames  # already the size: untouched
    ramp = torch.from_numpy(np.tile(np.arange(64, dtype=np.uint8) * 4, (1, 32, 1))[..., None].repeat(3, -1))
    small = resize_short_side(ramp, 16)
    assert small.shape == (1, 16, 32, 3)
    assert torch.all(small[0, 0, 1:, 0] >= small[0, 0, :-1, 0])  # a ramp stays monotone
