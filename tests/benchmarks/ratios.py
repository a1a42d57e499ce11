"""``make bench-ratios``: every ratio goal of ``tests/benchmarks/README.md`` measured and set against it.

The goal table in that README is the one statement of the goals: this script reads each row's goal
and known-miss mark from it, measures the row, prints measured against goal, and exits non-zero
when a row misses a goal it is not marked as missing. A ratio is what it is on one machine at one
moment; two things timed apart on a shared machine see different loads, so each ratio alternates
its two sides in one process (the portable cost alternates fresh processes, as the kernel pins are
read when torch loads) and takes the median of the per-round ratios. Run by hand, never in CI.

    python -m tests.benchmarks.ratios [ROW ...]
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dsts.config import load_config
from dsts.data import build_dataset, build_loader, set_epoch
from dsts.model import build_model
from tests.benchmarks.test_bench_data import generated_data
from tests.benchmarks.test_bench_dsts import layer_step, spike_step
from tests.benchmarks.test_bench_portable import portable_ratio
from tests.benchmarks.test_bench_udl import interleaved_ratio, plain_step

README = Path(__file__).with_name("README.md")
ROOT = Path(__file__).resolve().parents[2]
NONE = ("", "-", "—")


@dataclass(frozen=True)
class Goal:
    row: str
    op: str  # "≥" or "≤"
    bound: float
    known_miss: str  # the reason, "" when the row is expected to meet its goal

    def met(self, measured: float) -> bool:
        return measured >= self.bound if self.op == "≥" else measured <= self.bound


def read_goals(text: str) -> list[Goal]:
    """The rows of the table whose header starts ``| row |``: the row name (in backquotes), the
    goal (``≥ 25``, ``≤ 4.0``, anything after the number is a remark) and the known-miss reason."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*row\s*\|", line))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    row_at, goal_at, miss_at = header.index("row"), header.index("goal"), header.index("known miss")
    goals = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        found = re.match(r"(≥|≤)\s*([0-9.]+)", cells[goal_at])
        if found is None:
            raise ValueError(f"{README.name}: goal {cells[goal_at]!r} is not '≥ number' or '≤ number'")
        miss = cells[miss_at]
        goals.append(Goal(cells[row_at].strip("`"), found[1], float(found[2]), "" if miss in NONE else miss))
    return goals


def verdict(goal: Goal, measured: float) -> tuple[str, bool]:
    """``(what to print, whether it fails the run)``: only a miss that is not marked fails."""
    if goal.met(measured):
        return ("met" if not goal.known_miss else "met (marked a known miss: drop the mark)"), False
    if goal.known_miss:
        return f"known miss: {goal.known_miss}", False
    return "MISSED", True


# -- the measurements


def _timed(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def _calls_for(fn: Callable[[], object], seconds: float = 0.02) -> int:
    """How many calls make one timing last ``seconds`` at least (short calls are timed in a loop)."""
    fn()
    number = 1
    while _timed(fn, number) * number < seconds:
        number *= 2
    return number


def interleaved(slow: Callable[[], object], fast: Callable[[], object], rounds: int) -> float:
    """The median over rounds of time(slow) / time(fast), the two timed in alternation."""
    n_slow, n_fast = _calls_for(slow), _calls_for(fast)
    return statistics.median(_timed(slow, n_slow) / _timed(fast, n_fast) for _ in range(rounds))


def spike() -> float:
    return interleaved(spike_step("conv_then_sum")[0], spike_step("identity")[0], rounds=30)


def sparse() -> float:
    return interleaved(layer_step(8, "dense")[0], layer_step(8, "sparse")[0], rounds=20)


def udl(method: str) -> Callable[[], float]:
    return lambda: interleaved_ratio(method, "all", rounds=15)["ratio"]


def loader(rounds: int = 7) -> float:
    """The default training step's time over the cached loader's time for the same 64 clips, one
    epoch each in alternation (the loader as the trainer builds it: ``data.num_workers``)."""
    cfg = load_config(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        data = generated_data(Path(tmp) / "generated")
        data.cache = True
        dataset = build_dataset(data, "train", train=True, seed=0)
        batches = build_loader(dataset, cfg.train.batch_size, shuffle=True, num_workers=data.num_workers)
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=dataset.num_classes).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

        def train(epoch: list) -> None:
            for x, y in epoch:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

        ratios = []
        for r in range(rounds + 1):
            set_epoch(batches, r)
            t0 = time.perf_counter()
            epoch = list(batches)
            t1 = time.perf_counter()
            train(epoch)
            t2 = time.perf_counter()
            if r:  # the first round warms up
                ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)


def layout_step(channels_last: bool) -> Callable[[], None]:
    """One default training step (the default variant, batch and clip size) with the weights in the
    default layout or channels-last (``train.channels_last``)."""
    cfg = load_config(ROOT / "params.yaml", seed=0)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, channels_last=channels_last))
    model = build_model(cfg, num_classes=16, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.train.batch_size, 3, cfg.data.num_frames, cfg.data.crop, cfg.data.crop, generator=g)
    y = torch.randint(0, 16, (cfg.train.batch_size,), generator=g)
    return lambda: plain_step(model, (opt,), x, y)


MEASURES: dict[str, Callable[[], float]] = {
    "spike": spike,
    "sparse": sparse,
    "udl-autograd": udl("autograd"),
    "udl-finite-difference": udl("finite_difference"),
    "udl-first-order": udl("first_order"),
    "loader": loader,
    "portable": lambda: portable_ratio("dsts")["ratio"],
    "channels-last": lambda: interleaved(layout_step(False), layout_step(True), rounds=15),
}


def main(rows: list[str]) -> int:
    goals = read_goals(README.read_text())
    if {g.row for g in goals} != set(MEASURES):
        raise SystemExit(f"{README.name}'s goal rows {sorted(g.row for g in goals)} != {sorted(MEASURES)}")
    unknown = set(rows) - set(MEASURES)
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(sorted(unknown))}; rows: {', '.join(MEASURES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {_load()}")
    print(f"{'row':24s} {'goal':>8s} {'measured':>9s}  verdict", flush=True)
    failed = False
    for goal in goals:
        if rows and goal.row not in rows:
            continue
        measured = MEASURES[goal.row]()
        text, fails = verdict(goal, measured)
        failed |= fails
        print(f"{goal.row:24s} {goal.op} {goal.bound:6g} {measured:9.2f}  {text}", flush=True)
    print(_load())
    return 1 if failed else 0


def _load() -> str:
    """The machine's load, printed before and after: a ratio measured on a busy machine says so."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
