"""The load generator's own cost, and how well its open loop holds a schedule: the speed figures that
tests/test_benchmark.py no longer asserts (a shared 2-core machine moves them; the tests check counts).

    .venv/bin/python benchmarks/bench_loadgen.py [--rounds 3] [--sleep-ms 25] [--requests 200]

Against the embedded stack on free ports, two python-backend models, one instance each, no batching: a no-op
model (the baseline: what a request costs the generator, the client library and Triton) and one that sleeps S
ms per request, measured side by side in each round (alternating), over gRPC and HTTP. Prints medians over
rounds: client mean latency, Triton's own mean request time, their difference (the generator's overhead),
Little's law (QPS x mean latency = requests in flight), and QPS at concurrency 4 over QPS at 1; for the sleep
model its latency over S + the no-op latency (1.00: the overhead only adds). Then the open loop at a fixed
rate on the no-op model: achieved QPS / target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serving_helpers import random_images, serve_models, server_counts, write_sleep_model
from tests.stack_fixtures import stack_session
from visionnode.components.benchmark.loadgen import LevelPlan, Target, run_level

SIZE = 32


def closed_level(target: Target, http_url: str, concurrency: int, requests: int) -> dict[str, float]:
    before = server_counts(http_url, target.model)
    stats = run_level(target, random_images(8, SIZE), LevelPlan("closed", concurrency, duration_s=600.0,
                                                                 warmup_s=0.0, max_requests=requests))
    served = server_counts(http_url, target.model) - before
    server_ms = served.request_ns / served.requests / 1e6
    return {"client mean ms": stats.mean_ms, "client p50 ms": stats.p50_ms, "server mean ms": server_ms,
            "overhead ms": stats.mean_ms - server_ms, "in flight (Little)": stats.qps * stats.mean_ms / 1000,
            "qps": stats.qps}


def one_round(targets: dict[str, Target], http_url: str, requests: int) -> dict[str, dict[str, float]]:
    figures = {}
    for name, target in targets.items():
        one = closed_level(target, http_url, 1, requests)
        four = closed_level(target, http_url, 4, requests)
        figures[name] = {**{f"c1 {k}": v for k, v in one.items()},
                         "c4 in flight (Little)": four["in flight (Little)"],
                         "c4 qps / c1 qps": four["qps"] / one["qps"]}
    return figures


def open_loop_ratio(target: Target, rate: float, duration_s: float) -> float:
    stats = run_level(target, random_images(8, SIZE), LevelPlan("open", 64, rate=rate, duration_s=duration_s,
                                                                 warmup_s=0.5))
    return stats.qps / rate


def median_table(rounds: list[dict[str, dict[str, float]]], protocol: str, sleep_ms: float) -> None:
    noop, slow = f"noop_{protocol}", f"sleep_{protocol}"
    print(f"\n{protocol}: medians of {len(rounds)} rounds")
    print(f"{'figure':<26}{'no-op (baseline)':>18}{f'sleep {sleep_ms:g} ms':>16}")
    for key in rounds[0][noop]:
        base = statistics.median(r[noop][key] for r in rounds)
        other = statistics.median(r[slow][key] for r in rounds)
        print(f"{key:<26}{base:>18.2f}{other:>16.2f}")
    additive = statistics.median(r[slow]["c1 client mean ms"] / (sleep_ms + r[noop]["c1 client mean ms"])
                                 for r in rounds)
    print(f"{'sleep latency / (S + no-op latency)':<44}{additive:>16.2f}")


def measure_protocol(endpoints, protocol: str, args: argparse.Namespace) -> None:
    url = endpoints.triton_grpc if protocol == "grpc" else endpoints.triton_http
    targets = {name: Target(url, name, protocol, "images", "logits")
               for name in (f"noop_{protocol}", f"sleep_{protocol}")}
    began = time.monotonic()
    rounds = [one_round(targets, endpoints.triton_http, args.requests) for _ in range(args.rounds)]
    median_table(rounds, protocol, args.sleep_ms)
    ratios = [open_loop_ratio(targets[f"noop_{protocol}"], args.rate, 3.0) for _ in range(args.rounds)]
    print(f"open loop at {args.rate:g}/s, no-op model: achieved / target QPS "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); "
          f"{time.monotonic() - began:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sleep-ms", type=float, default=25.0)
    parser.add_argument("--requests", type=int, default=200, help="requests per level")
    parser.add_argument("--rate", type=float, default=60.0, help="open-loop rate on the no-op model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vn-bench-loadgen-") as tmp:
        session = stack_session(Path(tmp) / "stack")
        stack = next(session)
        try:
            repo = Path(tmp) / "models"
            names = []
            for protocol in ("grpc", "http"):
                for kind, sleep_ms in (("noop", 0.0), ("sleep", args.sleep_ms)):
                    names.append(f"{kind}_{protocol}")
                    write_sleep_model(repo, names[-1], sleep_ms, SIZE)
            serve_models(repo, names, stack.endpoints.triton_http)
            for protocol in ("grpc", "http"):
                measure_protocol(stack.endpoints, protocol, args)
        finally:
            session.close()


if __name__ == "__main__":
    main()
