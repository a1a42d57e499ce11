"""Point a SQLite MLflow store's artifact locations at the ``mlartifacts`` folder beside it.

MLflow stores every experiment's and run's artifact location as an absolute path, so a moved or
copied workspace would show runs without their artifacts. Every stage fixes this when it opens the
store (dsts/tracking); ``make ui`` and ``make mlflow-server`` run this first, for a store no stage
has opened since it moved. Other stores (a server, PostgreSQL) are left alone.
"""

from __future__ import annotations

import argparse

from dsts.tracking import relocate_artifacts, retry, store_lock, tracking_uri
from pipeline._cli import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.relocate_mlflow", description=__doc__)
    parser.add_argument(
        "--uri",
        default=None,
        help="the store (default: as the stages choose, MLFLOW_TRACKING_URI or sqlite:///<DVC_ROOT or .>/mlflow.db)",
    )
    args = parser.parse_args()
    uri = args.uri or tracking_uri()
    with store_lock(uri):
        moved = retry(lambda: relocate_artifacts(uri))
    for experiment_id, (old, new) in sorted(moved.items()):
        print(f"experiment {experiment_id}: artifacts {old} -> {new}")
    return 0


if __name__ == "__main__":
    run(main)
