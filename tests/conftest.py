"""Shared test set-up: hypothesis profiles (``dev`` locally, ``ci`` under ``CI=true``)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Cheap properties run at least 200 examples under CI; expensive float64 gradient properties
# cap themselves with @settings(max_examples=expensive()) (tests/helpers.py) at 20 to 50.
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


@pytest.fixture(autouse=True)
def _quiet_tools(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def pytest_collection_modifyitems(items):
    """The files with end-to-end (``slow``) tests first, each file's tests kept together and in order:
    under ``--dist loadfile --no-loadscope-reorder`` (Makefile) xdist hands files out in this order,
    so the few files that take minutes start at once and the many short files fill in beside them,
    instead of one long file starting last while the other worker idles."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
