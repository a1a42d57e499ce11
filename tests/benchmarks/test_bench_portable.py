"""The cost of portable determinism: the default training step with the kernel pins against the
machine's native dispatch.

The pins are read when torch loads, so each timing runs in a fresh process; pinned and native
processes alternate, and the ratio is the median over rounds of pinned / native (each process
reports the median of its timed steps). ``python tests/benchmarks/test_bench_portable.py`` prints
it; under pytest the body runs once per mode as a correctness check (the pinned process dispatches
to AVX2), never as a timing assertion.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STEP = """
import json, sys, time
from dsts.portable import pin_environment, pin_torch
portable = sys.argv[1] == "pinned"
pin_environment(portable, 2)
import torch
import torch.nn.functional as F
pin_torch(portable, 2)
if not portable:
    torch.set_num_threads(2)
from dsts.config import load_config
from dsts.model import build_model
cfg = load_config("params.yaml", variant=sys.argv[2], seed=0)
torch.manual_seed(0)
model = build_model(cfg, num_classes=16).train()
opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
x = torch.randn(cfg.train.batch_size, 3, cfg.data.num_frames, cfg.data.crop, cfg.data.crop)
y = torch.randint(0, 16, (cfg.train.batch_size,))
def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
steps = int(sys.argv[3])
for _ in range(min(3, steps)):
    step()
times = []
for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"seconds": times[len(times) // 2], "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def step_in_fresh_process(mode: str, variant: str = "dsts", steps: int = 15) -> dict:
    """``{"seconds": median step, "capability": ...}`` of ``steps`` default training steps in a new
    process, ``mode`` "pinned" (train.portable) or "native" (the machine's own dispatch)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATEN_", "MKL_", "ONEDNN_", "OMP_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", STEP, mode, variant, str(steps)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def portable_ratio(variant: str = "dsts", rounds: int = 5, steps: int = 15) -> dict[str, float]:
    """Median seconds per step, pinned and native, and the median over rounds of their ratio."""
    pinned, native, ratios = [], [], []
    for _ in range(rounds):
        n = step_in_fresh_process("native", variant, steps)["seconds"]
        p = step_in_fresh_process("pinned", variant, steps)["seconds"]
        native.append(n)
        pinned.append(p)
        ratios.append(p / n)
    return {
        "pinned_seconds": statistics.median(pinned),
        "native_seconds": statistics.median(native),
        "ratio": statistics.median(ratios),
    }


def test_pinned_process_dispatches_to_avx2():
    assert step_in_fresh_process("pinned", steps=1)["capability"] == "AVX2"
    assert step_in_fresh_process("native", steps=1)["capability"]


if __name__ == "__main__":
    for name in ("dsts", "baseline"):
        r = portable_ratio(name)
        print(
            f"{name}: pinned {1000 * r['pinned_seconds']:.1f} ms, native {1000 * r['native_seconds']:.1f} ms "
            f"per step, ratio {r['ratio']:.2f}"
        )
