"""What every stage script shares: the common arguments and the one-line error exit."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dsts.config import Config, load_config
from dsts.errors import DSTSError
from dsts.portable import pin_environment
from dsts.runs import RunFolder, run_folder

EXIT_BAD_INPUT = 2


def add_config_args(parser: argparse.ArgumentParser, variant: bool = True, seed: bool = True) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if variant:
        parser.add_argument("--variant", required=True, help="an ablation variant (ablations/<variant>.yaml)")
    if seed:
        parser.add_argument("--seed", type=int, default=None, help="sets train.seed")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one dotted key, e.g. --set train.epochs=2 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(
        args.params,
        variant=getattr(args, "variant", None),
        overrides=args.overrides,
        seed=getattr(args, "seed", None),
        ablations_dir=Path(args.params).parent / "ablations",
    )


def parse_run_stage(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Config, RunFolder]:
    """The arguments of a stage that works on one run folder (train, evaluate, predict): the config
    options and ``--out``. Applies the kernel pins of ``train.portable`` (dsts/portable.py), so it
    must run before torch is imported. Returns the arguments, the config and the run folder."""
    add_config_args(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<variant>/seed<S>)")
    args = parser.parse_args()
    cfg = config_from_args(args)
    pin_environment(cfg.train.portable, cfg.train.threads)
    folder = RunFolder(Path(args.out)) if args.out else run_folder(cfg.variant, cfg.train.seed)
    return args, cfg, folder


def run(main: Callable[[], int | None]) -> None:
    """Run a stage; bad input (a :class:`DSTSError`) ends in one line on stderr and exit 2, never a
    traceback; anything else is a bug and keeps its traceback."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        code = main()
    except DSTSError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
