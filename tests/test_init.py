"""The public API that outside checks call: the names import from where they are documented."""

from __future__ import annotations

import subprocess
import sys

import dsts
from dsts.estimators import gumbel_select, improved_semhash, saturating_sigmoid
from dsts.layers import DSTSLayer
from dsts.module import DSTS, relaxed
from dsts.udl import UDLStep, meta_gradient, split_parameters


def test_public_names():
    assert {
        "DSTS",
        "DSTSLayer",
        "relaxed",
        "build_model",
        "split_parameters",
        "meta_gradient",
        "UDLStep",
    } <= set(dsts.__all__)
    assert dsts.DSTS is DSTS and dsts.DSTSLayer is DSTSLayer and dsts.relaxed is relaxed
    assert dsts.UDLStep is UDLStep and dsts.meta_gradient is meta_gradient
    assert dsts.split_parameters is split_parameters
    assert all(callable(f) for f in (gumbel_select, improved_semhash, saturating_sigmoid, dsts.relaxed))


def test_import_dsts_loads_no_heavy_package():
    code = "import sys, dsts; bad = [m for m in ('torch', 'av', 'mlflow', 'pandas') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
