"""Helpers shared by the tests."""

from __future__ import annotations

import os

IN_CI = os.environ.get("CI", "").lower() == "true"


def expensive(ci: int = 30, dev: int = 8) -> int:
    """``max_examples`` for an expensive (float64 gradient or finite-difference) property:
    cheap properties take the profile's 200 under CI; these cap themselves at 20 to 50."""
    return ci if IN_CI else dev
