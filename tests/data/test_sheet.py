"""The contact sheet: one row per class, its size known in advance, written whole or not at all."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from dsts.data import DataError, contact_sheet
from tests.data.conftest import TINY


def test_one_row_per_class(tiny_root, tmp_path):
    out = contact_sheet(tiny_root, tmp_path / "sheet.png", frames=4)
    image = imread(out)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    four = imread(contact_sheet(tiny_root, tmp_path / "four.png", frames=8))
    assert four.shape[1] > image.shape[1]  # more frames per row: a wider sheet
    assert image.shape[0] > 40 * TINY["classes"] / 2  # a row per class, each of some height
    assert np.ptp(image[..., :3]) > 0.5  # frames, not a blank page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["four.png", "sheet.png"]


def test_a_missing_annotation_writes_nothing(tmp_path):
    with pytest.raises(DataError):
        contact_sheet(tmp_path, tmp_path / "sheet.png")
    assert list(tmp_path.iterdir()) == []
