"""Resolve and validate one variant's config; print it as YAML (what a run would use)."""

from __future__ import annotations

import argparse

import yaml

from pipeline._cli import add_config_args, config_from_args, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.check_config", description=__doc__)
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print(f"# training-settings hash on the CPU: {cfg.train_hash('cpu')}")
    return 0


if __name__ == "__main__":
    run(main)
