"""Portable determinism: what decides the floating-point path, pinned in one place.

On the CPU the same code and seed give different bits on different machines when the kernels
dispatch to different instruction sets (AVX-512 on one CPU, AVX2 on another), when a math library
picks its blocking from the cache sizes, or when a reduction is split over another number of
threads. With ``train.portable: true`` a stage pins, *before torch is imported* (the libraries
read these settings once, when they load):

- ``ATEN_CPU_CAPABILITY=avx2``: PyTorch's own vectorised kernels;
- ``MKL_CBWR=AVX2``: MKL's conditional numerical reproducibility on its AVX2 branch (fixed cache
  sizes, deterministic reductions, static scheduling);
- ``ONEDNN_MAX_CPU_ISA=AVX2``: the oneDNN kernels (convolutions, BatchNorm) no wider than AVX2;
- the thread counts: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and torch's intra-op threads at
  ``train.threads``, one inter-op thread.

These values override the outer environment, so a user's ``ATEN_CPU_CAPABILITY=avx512`` cannot
change the result of a portable run. ``train.portable: false`` leaves every one of them to the
machine (faster where AVX-512 is available; the cost is in docs/reproducibility.md).

On CUDA the equivalent is :func:`pin_cuda`: ``torch.use_deterministic_algorithms(True)``,
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (set before CUDA starts) and cuDNN without autotuning; it makes a
run repeatable on one GPU model and is not yet verified on a GPU (docs/reproducibility.md).

:func:`fingerprint` records what a run's numbers came from.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata

from dsts.errors import DSTSError

# The instruction-set caps: AVX2 is the widest set that every x86-64 server of the last decade has.
ISA_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results


def pinned_environment(portable: bool, threads: int) -> dict[str, str]:
    """The environment variables a run with these settings must start torch under."""
    if not portable:
        return {}
    env = dict(ISA_PINS)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    return env


def pin_environment(portable: bool, threads: int) -> dict[str, str]:
    """Set the pins in ``os.environ``; call it before anything imports torch. A portable run whose
    torch is already loaded would silently run unpinned, so that is an error."""
    env = pinned_environment(portable, threads)
    if env and "torch" in sys.modules:
        raise DSTSError(
            "train.portable: torch was imported before the kernel pins were applied; "
            "apply dsts.portable.pin_environment first (stage scripts do)"
        )
    os.environ.update(env)
    return env


def pin_torch(portable: bool, threads: int) -> None:
    """The settings torch takes after it is imported: its thread pools (and, on CUDA, the
    deterministic algorithms). Safe to call more than once."""
    import torch  # after pin_environment, by design: this module itself must not load torch

    if not portable:
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started: it can be set only once
        pass
    pin_cuda(torch)


def pin_cuda(torch_module) -> None:
    """Deterministic CUDA kernels: an error rather than a silent nondeterministic kernel."""
    if not torch_module.cuda.is_available():
        return
    use_deterministic_kernels(torch_module)
    torch_module.backends.cudnn.deterministic = True
    torch_module.backends.cudnn.benchmark = False


def use_deterministic_kernels(torch_module, warn_only: bool = False) -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=...)`` for the kernels alone. The public
    call also sets torch.compile's own flag, and imports the whole compiler stack to do it (seconds
    of every stage's start-up); nothing here compiles, and the kernels' flag it sets is this one."""
    torch_module._C._set_deterministic_algorithms(True, warn_only=warn_only)


# CPU features that change which kernels a library may pick
FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def _cpu() -> dict[str, str]:
    """The CPU's name, identity (family, model, stepping: a virtual machine's name is often
    generic) and the features that matter for dispatch, from /proc/cpuinfo where there is one."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": " ".join(
            f"{k.split()[-1]} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields
        ),
        "cpu_features": " ".join(f for f in FEATURES if f in flags),
    }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def fingerprint(portable: bool, threads: int) -> dict[str, str]:
    """What decides the floating-point path of this process: CPU, the dispatch torch chose, the
    thread counts, library versions and the pinned settings. Strings only (MLflow tags)."""
    import av  # the decoder's FFmpeg is part of what a run's input bytes came from
    import torch

    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    onednn = re.search(r"MKL-DNN v([\d.]+)", config)
    out = {
        **_cpu(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": str(torch.get_num_threads()),
        "interop_threads": str(torch.get_num_interop_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "pyav": av.__version__,
        "ffmpeg": str(getattr(av, "ffmpeg_version_info", "unknown")),
        "mkl": mkl.group(1) if mkl else "absent",
        "onednn": onednn.group(1) if onednn else "absent",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    for name in (*ISA_PINS, *THREAD_VARIABLES):
        out[f"env.{name}"] = os.environ.get(name, "")
    out.update({"setting.portable": str(portable).lower(), "setting.threads": str(threads)})
    return out
