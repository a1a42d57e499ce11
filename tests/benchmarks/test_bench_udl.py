"""One UDL iteration against one plain joint training step, on the CPU default model and batch.

Model: ``build_model`` on ``params.yaml``'s defaults (small3d backbone, DSTS with ``C = 64``,
``L = 2``, ``N = 4``), 12 classes, training mode; batch ``(16, 3, 8, 56, 56)``; AdamW for both
groups, as the trainer builds them. The plain step is what the trainer's joint step does
(forward, backward, one optimizer step over every parameter).

Passes, counted before measuring (F / B: a forward / backward through the whole model; Fd / Bd:
through the DSTS module and the head only; Fb / Bb: the backbone; Tb: the backbone output's
derivative along v, from the activations its forward on D_train left (``dsts.functional.tangent``:
about 2 Fb of convolutions plus the BatchNorm tangents, no forward again; a backbone that is not a
chain of convs, BatchNorm and ReLU takes a forward-mode pass instead, Fb + Tb); Hd: the double
backward through step 1's gradient graph of the DSTS module and head). UDLStep runs the backbone
forward on D_train once for steps 1 and 3; step 3 is then Fd + Bd + Bb:

=================  ================================================  ==========================================
method             scope "all"                                       scope "dsts"
=================  ================================================  ==========================================
plain step         F + B                                             (same)
autograd           step 1 F + B (create_graph in DSTS/head),          Fb (D_val, no grad) + step 1 Fd + Bd
                   step 2 F + B (v) + Tb + Hd, step 3:                (create_graph) + step 2 Fd + Bd + Hd +
                   = 3 (F + B) + Tb + Hd - Fb   (first count,         step 3 = (F + B) + Fb + 2 (Fd + Bd) + Hd
                   before the forward-mode split: 4 (F + B) - Fb,
                   the H going through the backbone too)
finite_difference  step 1 F + B, v F + B, two passes F + Bd           Fb + step 1, v and the two passes
                   (grad_u only: no backward into the backbone),      4 (Fd + Bd), step 3:
                   step 3: 3 (F + B) + 2 (F + Bd) - Fb                (F + B) + Fb + 4 (Fd + Bd)
first_order        step 1 F + B, step 2 F + Bd, step 3:               Fb + step 1 Fd + Bd, step 2 Fd + Bd,
                   2 (F + B) + F + Bd - Fb                            step 3: (F + B) + Fb + 2 (Fd + Bd)
=================  ================================================  ==========================================

``tests/test_metagrad.py::test_backbone_passes_per_method_and_scope`` checks the backbone part of these
counts. Run ``python -m pytest tests/benchmarks/test_bench_udl.py --benchmark-only`` for the timings;
``python tests/benchmarks/test_bench_udl.py`` prints the ratios to the plain step measured
interleaved (the machine is shared, so alternating the two is fairer than timing them apart) and
the peak memory of each, each in a fresh process (see :func:`peak_memory`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dsts.config import load_config
from dsts.model import build_model
from dsts.module import relaxed
from dsts.udl import METHODS, SCOPES, UDLStep, meta_gradient, split_parameters

ROOT = Path(__file__).resolve().parents[2]
BATCH = (16, 3, 8, 56, 56)
CLASSES = 12
INNER_LR = 0.01


def default_setup(seed: int = 0):
    """The default model in training mode, its two AdamW optimizers and two batches."""
    cfg = load_config(ROOT / "params.yaml")
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes=CLASSES).train()
    upstream, downstream = split_parameters(model)
    opt_up = torch.optim.AdamW(
        upstream.values(), lr=cfg.train.upstream_lr, weight_decay=cfg.train.weight_decay
    )
    opt_down = torch.optim.AdamW(downstream.values(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [
        (torch.randn(BATCH, generator=gen), torch.randint(0, CLASSES, (BATCH[0],), generator=gen))
        for _ in range(2)
    ]
    return cfg, model, opt_up, opt_down, batches


def plain_step(model, optimizers, x, y) -> dict[str, float]:
    """The trainer's joint step: forward, backward, one step of each optimizer."""
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for o in optimizers:
        o.step()
    return {"loss": loss.item()}


def make_runner(kind: str, scope: str = "all"):
    """``(callable that runs one step, the model, its upstream parameters)`` for ``kind`` ("plain"
    or a UDL method)."""
    cfg, model, opt_up, opt_down, (train, val) = default_setup()
    upstream, _ = split_parameters(model)
    if kind == "plain":
        return (lambda: plain_step(model, (opt_up, opt_down), *train)), model, upstream
    step = UDLStep(model, opt_up, opt_down, INNER_LR, method=kind, fd_eps=cfg.udl.fd_eps, scope=scope)
    return (lambda: step.step(train, val)), model, upstream


def _check(out: dict[str, float], upstream: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> None:
    assert out and all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert all(torch.isfinite(p).all() for p in upstream.values())
    assert any(not torch.equal(p.detach(), before[n]) for n, p in upstream.items()), (
        "no upstream parameter moved"
    )


def test_bench_plain_step(benchmark):
    run, _, upstream = make_runner("plain")
    before = {n: p.detach().clone() for n, p in upstream.items()}
    benchmark.group = "udl-cpu-default"
    out = benchmark.pedantic(run, rounds=10, warmup_rounds=2)
    _check(out, upstream, before)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("method", METHODS)
def test_bench_udl_iteration(benchmark, method, scope):
    run, model, upstream = make_runner(method, scope)
    before = {n: p.detach().clone() for n, p in upstream.items()}
    benchmark.group = "udl-cpu-default"
    benchmark.extra_info.update(method=method, scope=scope)
    out = benchmark.pedantic(run, rounds=10, warmup_rounds=2)
    _check(out, upstream, before)
    assert set(out) == {"loss", "meta_loss", "train_loss_sim"}
    assert model.training


# -- the interleaved ratios and the peak memory, as a script


def interleaved_ratio(method: str, scope: str = "all", rounds: int = 15, plain=None) -> dict[str, float]:
    """Median seconds of one UDL iteration and of the plain step timed in alternation, and their
    ratio (the median over rounds of UDL time / the plain step right before it)."""
    plain = plain or make_runner("plain")[0]
    run, _, _ = make_runner(method, scope)
    for _ in range(2):
        plain()
        run()
    ratios, times, base = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        base.append(t1 - t0)
        times.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return {
        "seconds": statistics.median(times),
        "plain_seconds": statistics.median(base),
        "ratio": statistics.median(ratios),
    }


def interleaved_ratios(rounds: int = 15) -> dict[str, dict[str, float]]:
    """:func:`interleaved_ratio` of every method and scope, keyed ``"method/scope"``."""
    plain, _, _ = make_runner("plain")
    return {
        f"{method}/{scope}": interleaved_ratio(method, scope, rounds, plain)
        for scope in SCOPES
        for method in METHODS
    }


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_child(kind: str, scope: str) -> None:
    """In a fresh process: one warm-up step (optimizer state, allocator), then the peak resident
    memory of one more step above the resident memory before it (VmHWM reset through clear_refs)."""
    run, _, _ = make_runner(kind, scope)
    run()
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    run()
    print(json.dumps({"peak_extra_mib": (_rss_kib("VmHWM") - base) / 1024}))


def peak_memory(kind: str, scope: str = "all") -> float:
    """MiB of resident memory one step needs above the steady state, in a fresh process with glibc's
    mmap threshold fixed at 128 KiB so that freed tensors go back to the system at once (RSS then
    follows the live tensors; without it, freed memory is kept and the peak is understated)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONPATH=str(ROOT))
    code = f"from tests.benchmarks.test_bench_udl import _peak_child; _peak_child({kind!r}, {scope!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_mib"])


def finite_difference_error(fd_eps: float, scope: str = "dsts") -> float:
    """``|fd - autograd| / |autograd|`` of the meta-gradient on the default model in float32,
    relaxed training mode (where the two methods estimate the same quantity)."""
    _, model, _, _, (train, val) = default_setup()
    with relaxed(model):
        exact = meta_gradient(model, train, val, INNER_LR, method="autograd", scope=scope)
        fd = meta_gradient(
            model, train, val, INNER_LR, method="finite_difference", fd_eps=fd_eps, scope=scope
        )
    num = sum(float((fd[n] - exact[n]).double().pow(2).sum()) for n in exact)
    den = sum(float(exact[n].double().pow(2).sum()) for n in exact)
    return (num / den) ** 0.5


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}")
    plain_mib = peak_memory("plain")
    print(f"plain step: peak extra memory {plain_mib:.0f} MiB")
    ratios = interleaved_ratios()
    print(
        f"{'method/scope':28s} {'s/iter':>8s} {'plain s':>8s} {'ratio':>6s} {'peak MiB':>9s} {'x plain':>8s}"
    )
    for key, row in ratios.items():
        method, scope = key.split("/")
        mib = peak_memory(method, scope)
        print(
            f"{key:28s} {row['seconds']:8.3f} {row['plain_seconds']:8.3f} {row['ratio']:6.2f} {mib:9.0f} "
            f"{mib / plain_mib:8.2f}"
        )
    for eps in (1e-4, 1e-3, 1e-2, 1e-1):
        print(
            f"finite difference, relaxed, fd_eps {eps:g}: relative error {finite_difference_error(eps):.3g}"
        )


if __name__ == "__main__":
    main()
