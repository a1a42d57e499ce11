"""A tiny workspace shared by the end-to-end tests: params shrunk to seconds, generated data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.profile import write_ablations
from tests.pipeline.e2e import ROOT, TINY, deep_update, stage


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """A tiny workspace: params.yaml shrunk to seconds, the real ablations, generated data."""
    work = tmp_path_factory.mktemp("e2e")
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    params["data"]["root"] = str(work / "data" / "generated")
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    write_ablations(work / "ablations", TINY)  # the real ablations, at the tiny profile's epochs
    stage(work, "pipeline.prepare", "--out", params["data"]["root"])
    return work
