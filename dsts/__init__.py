"""DSTS-Bench: Dynamic Spatio-Temporal Specialization and Upstream-Downstream Learning.

``import dsts`` needs only torch (and pyyaml for the config): the data, tracking and report
parts import their own heavier dependencies (PyAV, pandas, MLflow) when they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DSTS": "dsts.module",
    "DSTSLayer": "dsts.layers",
    "relaxed": "dsts.module",
    "build_model": "dsts.model",
    "split_parameters": "dsts.udl",
    "meta_gradient": "dsts.udl",
    "UDLStep": "dsts.udl",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dsts' has no attribute {name!r}")
