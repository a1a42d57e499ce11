"""An MLflow server for the end-to-end tests: started on a free loopback port, read over its REST
API, stopped by its PID (tests/pipeline/test_mlflow_server.py, tests/pipeline/test_mlflow_study.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def call(url: str, body: dict | None = None, **query: str) -> dict:
    """GET ``url`` (with ``query``), or POST ``body`` as JSON; a JSON answer as a dict, else
    ``{"text": ...}``."""
    if query:
        url = f"{url}?{urllib.parse.urlencode(query)}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith("{") else {"text": text}


def mlflow_command() -> str:
    found = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if found is None:
        pytest.skip("mlflow is not installed")
    return found


@contextlib.contextmanager
def mlflow_server(*args: str, cwd: Path | None = None, command: str = "server") -> Iterator[str]:
    """``mlflow <command> --host 127.0.0.1 --port <free> --workers 1 <args>``: yields its base URL
    once ``/health`` answers; stops it by its PID and waits until the port is free again."""
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [mlflow_command(), command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *args]
    server = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if call(f"{base}/health").get("text", "").strip() == "OK":
                    break
            except OSError:
                pass
            assert server.poll() is None, "the server exited while starting"
            assert time.time() < deadline, "the server did not answer /health in 120 s"
            time.sleep(0.5)
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        deadline = time.time() + 60
        while port_in_use(port) and time.time() < deadline:
            time.sleep(0.2)
    assert not port_in_use(port), "the port is still taken after the server stopped"
