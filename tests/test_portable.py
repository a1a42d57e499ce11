"""The kernel pins: what they set, that they come before torch, that the outer environment cannot
undo them, and the fingerprint of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dsts.portable import ISA_PINS, fingerprint, pinned_environment
from tests.pipeline.e2e import ROOT


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in (*ISA_PINS, "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    full.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=ROOT)


def test_the_pins_cap_every_dispatcher_and_fix_the_threads():
    env = pinned_environment(True, 3)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert pinned_environment(False, 3) == {}


def test_pinned_torch_dispatches_to_avx2_whatever_the_outer_environment_asks():
    code = (
        "from dsts.portable import pin_environment, pin_torch\n"
        "pin_environment(True, 1)\n"
        "import torch\n"
        "pin_torch(True, 1)\n"
        "print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
    )
    done = run_python(code, ATEN_CPU_CAPABILITY="default")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AVX2", "1"]


def test_a_portable_run_refuses_a_torch_loaded_before_the_pins():
    code = (
        "import torch\nfrom dsts.portable import pin_environment\n"
        "try:\n    pin_environment(True, 2)\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        "pin_environment(False, 2)\nprint('unpinned is fine')"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first.startswith("DSTSError train.portable: torch was imported before the kernel pins")
    assert second == "unpinned is fine"


@pytest.mark.parametrize("stage", ["train", "evaluate", "predict"])
def test_stage_scripts_pin_before_torch_is_loaded(stage, tmp_path):
    """Import the stage, parse its arguments (which applies the pins), and look at sys.modules then."""
    extra = "'video.mp4', " if stage == "predict" else ""
    code = (
        "import argparse, os, sys\n"
        f"import pipeline.{stage} as stage\n"
        "from pipeline._cli import parse_run_stage\n"
        "assert 'torch' not in sys.modules, 'the stage module loaded torch'\n"
        f"sys.argv = ['x', {extra}'--variant', 'dsts', '--params', 'params.yaml']\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('video') if 'video.mp4' in sys.argv else None\n"
        "parse_run_stage(parser)\n"
        "print('torch' in sys.modules, os.environ['ATEN_CPU_CAPABILITY'], os.environ['OMP_NUM_THREADS'])"
    )
    done = run_python(code, ATEN_CPU_CAPABILITY="avx512")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "avx2", "2"]


def test_fingerprint_names_the_floating_point_path():
    fp = fingerprint(True, 2)
    assert all(isinstance(v, str) for v in fp.values())
    for key in ("cpu", "cpu_capability", "threads", "torch", "torchvision", "numpy", "pyav", "ffmpeg", "mkl"):
        assert fp[key], key
    assert fp["setting.portable"] == "true" and fp["setting.threads"] == "2"
    assert json.loads(json.dumps(fp)) == fp


@pytest.mark.parametrize("warn_only", [False, True])
def test_deterministic_kernels_set_the_public_calls_flags_without_loading_the_compiler(warn_only):
    """The flags torch reports after use_deterministic_kernels equal those after the public
    torch.use_deterministic_algorithms (the oracle, in a second process), and the compiler stack that
    the public call imports stays unloaded."""
    report = (
        "import sys, torch\n"
        "print(torch.are_deterministic_algorithms_enabled(), "
        "torch.is_deterministic_algorithms_warn_only_enabled(), 'torch._dynamo' in sys.modules)"
    )
    ours = run_python(
        f"from dsts.portable import use_deterministic_kernels\nimport torch\n"
        f"use_deterministic_kernels(torch, warn_only={warn_only})\n{report}"
    )
    public = run_python(
        f"import torch\ntorch.use_deterministic_algorithms(True, warn_only={warn_only})\n{report}"
    )
    assert ours.returncode == 0 and public.returncode == 0, ours.stderr + public.stderr
    assert ours.stdout.split() == ["True", str(warn_only), "False"]
    assert public.stdout.split() == ["True", str(warn_only), "True"]
