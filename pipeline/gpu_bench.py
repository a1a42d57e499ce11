"""GPU benchmark: training clips per second for r2plus1d_18 + DSTS at 16 x 112 x 112.

Measures dense against sparse routing and the UDL iteration against the plain joint step, counts
the FLOPs per clip (forward, ``torch.utils.flop_counter``) and reports the achieved TFLOP/s of a
training step (taken as 3x the forward FLOPs). Imports only torch, torchvision and the DSTS core
(no PyAV, MLflow or DVC), so it runs on a bare GPU machine. Without CUDA it prints one line and
exits 0. Finishes within about 5 minutes on one H100.

    python -m pipeline.gpu_bench [--batch 8] [--steps 10] [--bf16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dsts.config import Config, DSTSConfig, ModelConfig, TrainConfig
from dsts.model import build_model
from dsts.udl import UDLStep, split_parameters


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.gpu_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch", type=int, default=8, help="clips per step (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--classes", type=int, default=48)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the plain steps")
    parser.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("gpu_bench: skipped, no CUDA device is available")
        return 0

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    shape = (args.batch, 3, args.frames, args.size, args.size)

    def model_for(routing: str):
        cfg = Config(
            model=ModelConfig(backbone="r2plus1d_18", dsts=DSTSConfig(channels=512, routing=routing)),
            train=TrainConfig(channels_last=args.channels_last),
        )
        torch.manual_seed(0)
        return build_model(cfg, num_classes=args.classes).to(device).train()

    def batch():
        x = torch.randn(shape, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x, torch.randint(0, args.classes, (args.batch,), device=device)

    def timed(step) -> float:
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / args.steps

    def plain(model):
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        data = batch()

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
                loss = F.cross_entropy(model(data[0]), data[1])
            loss.backward()
            opt.step()

        return step

    def udl(model, method: str, scope: str):
        up, down = split_parameters(model)
        runner = UDLStep(
            model,
            torch.optim.AdamW(up.values(), lr=1e-4),
            torch.optim.AdamW(down.values(), lr=1e-4),
            inner_lr=0.01,
            method=method,
            scope=scope,
        )
        train, val = batch(), batch()
        return lambda: runner.step(train, val)

    results: dict = {
        "device": torch.cuda.get_device_name(0),
        "batch": args.batch,
        "clip": list(shape[1:]),
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "cases": {},
    }
    forward_flops = {}
    with torch.no_grad():
        for routing in ("dense", "sparse"):
            counter = FlopCounterMode(display=False)
            with counter:
                model_for(routing).eval()(torch.randn(1, *shape[1:], device=device))
            forward_flops[routing] = counter.get_total_flops()
    results["forward_gflops_per_clip"] = {k: v / 1e9 for k, v in forward_flops.items()}

    cases = [("plain", "dense", None, None), ("plain", "sparse", None, None)]
    cases += [
        ("udl", "sparse", m, s)
        for m in ("autograd", "finite_difference", "first_order")
        for s in ("dsts", "all")
    ]
    for kind, routing, method, scope in cases:
        name = f"{kind}-{routing}" + (f"-{method}-{scope}" if method else "")
        model = model_for(routing)
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(plain(model) if kind == "plain" else udl(model, method, scope))
        entry = {
            "seconds_per_step": seconds,
            "clips_per_second": args.batch / seconds,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        if kind == "plain":
            entry["achieved_tflops"] = 3 * forward_flops[routing] * args.batch / seconds / 1e12
        results["cases"][name] = entry
        print(
            f"{name:40s} {entry['clips_per_second']:8.1f} clips/s  {entry['peak_memory_gib']:6.2f} GiB",
            flush=True,
        )
        del model
        torch.cuda.empty_cache()
    plain_sparse = results["cases"]["plain-sparse"]["seconds_per_step"]
    for entry in results["cases"].values():
        entry["cost_in_plain_sparse_steps"] = entry["seconds_per_step"] / plain_sparse
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
