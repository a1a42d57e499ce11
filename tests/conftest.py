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
