"""The data package: every exported name resolves, and importing it loads neither PyAV nor pandas."""

from __future__ import annotations

import subprocess
import sys

import dsts.data


def test_every_export_resolves():
    for name in dsts.data.__all__:
        assert getattr(dsts.data, name) is not None, name


def test_importing_the_package_is_light():
    code = "import sys, dsts.data; print([m for m in ('av', 'pandas', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
