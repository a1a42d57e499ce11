"""The data layer: annotation readers, PyAV decoding, sampling, transforms, datasets and loaders,
and the generated fine-grained benchmark.

``DataError`` is defined without heavy imports; everything else (PyAV, pandas) loads on first use,
so a stage that only catches ``DataError`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from dsts.errors import DataError as DataError  # re-exported

_EXPORTS = {
    "read_diving48": "dsts.data.readers",
    "read_finegym": "dsts.data.readers",
    "read_vocab": "dsts.data.readers",
    "read_attributes": "dsts.data.readers",
    "Video": "dsts.data.decode",
    "probe": "dsts.data.decode",
    "read_video": "dsts.data.decode",
    "segment_indices": "dsts.data.sampling",
    "dense_indices": "dsts.data.sampling",
    "sample_indices": "dsts.data.sampling",
    "train_transform": "dsts.data.transforms",
    "test_transform": "dsts.data.transforms",
    "VideoDataset": "dsts.data.dataset",
    "SeededSampler": "dsts.data.sampling",
    "build_dataset": "dsts.data.dataset",
    "build_loader": "dsts.data.dataset",
    "set_epoch": "dsts.data.dataset",
    "generate_benchmark": "dsts.data.generate",
    "class_specs": "dsts.data.dives",
    "contact_sheet": "dsts.data.sheet",
}

__all__ = sorted([*_EXPORTS, "DataError"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dsts.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
