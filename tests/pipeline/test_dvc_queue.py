"""DESIGN anchors the MLflow store on ``DVC_ROOT``: check that DVC really sets it to the workspace
inside a queued experiment, which runs in a temporary clone (so the current folder is not it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.workspaces import queue_workers

pytestmark = pytest.mark.slow

RECORD = """
import json, os, sys
with open(sys.argv[1], "a") as handle:
    handle.write(json.dumps({
        "cwd": os.getcwd(),
        "DVC_ROOT": os.environ.get("DVC_ROOT"),
        "DVC_EXP_NAME": os.environ.get("DVC_EXP_NAME"),
        "DVC_STAGE": os.environ.get("DVC_STAGE"),
        "x": open("params.yaml").read().strip(),
    }) + "\\n")
open("out.txt", "w").write("done")
"""


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_dvc_root_is_the_workspace_inside_queued_experiments(tmp_path):
    if shutil.which("dvc") is None:
        pytest.skip("dvc is not on PATH")
    work = tmp_path / "ws"
    work.mkdir()
    log = tmp_path / "roots.jsonl"
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    (work / "record.py").write_text(RECORD)
    (work / "params.yaml").write_text("x: 1\n")
    (work / "dvc.yaml").write_text(
        f"stages:\n  record:\n    cmd: python record.py {log}\n    deps: [record.py]\n"
        "    params: [x]\n    outs: [out.txt]\n"
    )
    run(["git", "init", "-q"], work, env)
    run(["dvc", "init", "-q"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-q", "-m", "init"], work, env)
    run(["dvc", "exp", "run", "--queue", "-S", "x=2"], work, env)
    run(["dvc", "exp", "run", "--queue", "-S", "x=3"], work, env)
    # One worker: where a stage runs does not depend on how many there are, and one worker cannot
    # meet the race between workers that queue_workers describes (test_dvc_experiments runs two).
    records: list[dict] = []
    with queue_workers(work, 1, env):
        deadline = time.time() + 240
        while time.time() < deadline:
            records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            if len(records) == 2:
                break
            time.sleep(1)
    assert len(records) == 2, f"queued experiments did not both run: {records}"
    assert sorted(r["x"] for r in records) == ["x: 2", "x: 3"]
    for record in records:
        assert Path(record["DVC_ROOT"]).resolve() == work.resolve()
        assert Path(record["cwd"]).resolve() != work.resolve(), "queued runs execute in a temporary clone"
        assert record["DVC_EXP_NAME"] and record["DVC_STAGE"] == "record"
