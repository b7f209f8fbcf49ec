"""Start-up and shut-down times of the embedded stack, per service (medians over a few rounds).

    .venv/bin/python benchmarks/bench_stack.py [--rounds 3]

Baseline: a cold start (fresh state dir: MLflow creates its SQLite schema, SeaweedFS formats its volumes)
measured side by side with a warm restart (same state dir after `down`). Prints medians and warm/cold ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.stack_fixtures import free_stack_config
from visionnode.components.local.stack import LocalStack


def one_round(state_dir: Path) -> dict[str, float]:
    stack = LocalStack(free_stack_config(state_dir))
    began = time.monotonic()
    statuses = stack.up()
    figures = {f"{s.name} start s": float(s.startup_s or 0.0) for s in statuses}
    figures["up total s"] = time.monotonic() - began
    began = time.monotonic()
    stack.down()
    figures["down total s"] = time.monotonic() - began
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="vn-bench-stack-") as tmp:
            cold.append(one_round(Path(tmp)))
            warm.append(one_round(Path(tmp)))
    print(f"{'figure':<16}{'cold (median)':>15}{'warm (median)':>15}{'warm/cold':>11}")
    for key in cold[0]:
        c = statistics.median(r[key] for r in cold)
        w = statistics.median(r[key] for r in warm)
        print(f"{key:<16}{c:>15.2f}{w:>15.2f}{w / c if c else float('nan'):>11.2f}")


if __name__ == "__main__":
    main()
