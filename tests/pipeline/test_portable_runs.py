"""The kernel pins hold end to end: the outer environment cannot change a portable run's bytes,
and without the pins it does (the control that shows the check can fail)."""

from __future__ import annotations

import pytest

from tests.pipeline.e2e import stage

pytestmark = pytest.mark.slow


def metrics_bytes(workdir, name: str, *settings: str, **env: str) -> bytes:
    out = workdir / "portable" / name
    args = ["--variant", "dsts", "--seed", "0", "--out", str(out), "--set", "tracking.enabled=false"]
    for setting in settings:
        args += ["--set", setting]
    stage(workdir, "pipeline.train", *args, env=env)
    stage(workdir, "pipeline.evaluate", *args, env=env)
    return (out / "metrics.json").read_bytes()


def test_the_outer_environment_cannot_change_a_portable_run(workdir):
    native = metrics_bytes(workdir, "pinned")
    assert metrics_bytes(workdir, "asks-avx512", ATEN_CPU_CAPABILITY="avx512") == native
    assert (
        metrics_bytes(workdir, "asks-default", ATEN_CPU_CAPABILITY="default", MKL_CBWR="COMPATIBLE") == native
    )


def test_without_the_pins_the_dispatch_changes_the_bytes(workdir):
    unpinned = metrics_bytes(workdir, "native", "train.portable=false")
    assert (
        metrics_bytes(workdir, "default", "train.portable=false", ATEN_CPU_CAPABILITY="default") != unpinned
    )
