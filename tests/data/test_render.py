"""Rendering a dive: spatial cues show in a few frames only, temporal cues over the whole flight,
and a clip is a pure function of its class and seed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dsts.data.dives import ClassSpec, class_specs
from dsts.data.render import render_clip


def variant(spec: ClassSpec, **changes) -> ClassSpec:
    return dataclasses.replace(spec, **changes)


def differing_frames(a: np.ndarray, b: np.ndarray) -> list[int]:
    return [t for t in range(len(a)) if not np.array_equal(a[t], b[t])]


@pytest.mark.parametrize("seed", range(6))
def test_spatial_cues_show_in_a_few_frames_only(seed):
    """With the same seed, the two values of a spatial cue give clips that differ only in a few frames:
    the take-off (facing) or a few frames of the flight (position)."""
    base = class_specs(16)[0]
    front = render_clip(variant(base, facing="front"), (seed,))
    back = render_clip(variant(base, facing="back"), (seed,))
    frames = differing_frames(front, back)
    assert frames == list(range(len(frames))) and 3 <= len(frames) <= 5  # the take-off frames
    straight = render_clip(variant(base, position="STR"), (seed,))
    piked = render_clip(variant(base, position="PIKE"), (seed,))
    frames = differing_frames(straight, piked)
    assert 3 <= len(frames) <= 5 and frames == list(range(frames[0], frames[0] + len(frames)))
    assert frames[0] >= 4 and frames[-1] <= 13  # inside the flight


@pytest.mark.parametrize("seed", range(6))
def test_temporal_cues_change_the_whole_flight_but_not_the_take_off(seed):
    base = class_specs(16)[2]
    for attribute, (a, b) in (("rotation", ("forward", "backward")), ("somersaults", ("05som", "10som"))):
        one = render_clip(variant(base, **{attribute: a}), (seed,))
        two = render_clip(variant(base, **{attribute: b}), (seed,))
        frames = differing_frames(one, two)
        assert frames[0] >= 3  # the take-off is the same
        assert len(frames) >= 8  # every flight frame (bar a coincidence of angles)


def test_render_is_a_pure_function_of_the_seed():
    spec = class_specs(16)[5]
    a = render_clip(spec, (1, 2, 3), 12, 48)
    assert a.shape == (12, 48, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_clip(spec, (1, 2, 3), 12, 48))
    assert not np.array_equal(a, render_clip(spec, (1, 2, 4), 12, 48))
