"""Benchmark: one vs two Triton model instances, side by side on one server, in one run.

    .venv/bin/python benchmarks/bench_instances.py [--rounds 3] [--concurrency 1,4,8] [--duration 8]
        [--protocol grpc] [--full-int8]

The same INT8 ResNet-152 as bench_serving.py (its cached models) is deployed twice on one embedded Triton,
as `resnet152_int8_1x` (one instance) and `resnet152_int8_2x` (two), with the same batcher settings otherwise.
Both stay loaded, so both are measured under the same clock, load generator and machine state: every round
runs each concurrency level on both, alternating which goes first. Per variant and level the latencies of all
rounds are pooled for P50/P95/P99, QPS is all answered requests over all measured seconds, and "stalls"
counts requests slower than --stall-ms (the dynamic batcher's 500 ms idle timeout shows up there).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bench_serving import prepare_models, start_stack  # beside this script

from visionnode.components.benchmark.benchmark import BenchmarkConfig, resolve_served
from visionnode.components.benchmark.loadgen import LevelPlan, Target, run_level
from visionnode.components.deploy.config import candidate_name
from visionnode.components.deploy.deploy import DeployConfig, deploy
from visionnode.components.deploy.repository import ServingConfig

VARIANTS = (1, 2)


@dataclass
class Pooled:
    """One variant at one concurrency level, over every round."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    round_qps: list[float] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def stalls(self, threshold_ms: float) -> int:
        return sum(1 for latency in self.latencies_ms if latency >= threshold_ms)


def model_name(instances: int) -> str:
    return f"resnet152_int8_{instances}x"


def cpu_model() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
    cores = re.search(r"^CPU\(s\):\s*(\d+)$", text, re.MULTILINE)
    return f"{match.group(1).strip() if match else 'unknown CPU'}, {cores.group(1) if cores else '?'} CPUs"


def deploy_variants(int8_dir: Path, args: argparse.Namespace) -> None:
    for instances in VARIANTS:
        serving = ServingConfig(max_batch_size=args.max_batch,
                                preferred_batch_sizes=[int(b) for b in args.preferred.split(",")],
                                max_queue_delay_us=args.delay_us, instances=instances)
        deploy(DeployConfig(model_dir=int8_dir, model_name=model_name(instances), serving=serving,
                            check_images=8))


def targets(protocol: str) -> dict[int, Target]:
    found = {}
    for instances in VARIANTS:
        staged = candidate_name(model_name(instances))  # deploy stages each variant as a candidate
        served = resolve_served(BenchmarkConfig(model=staged, protocol=protocol))
        found[instances] = Target(served.url, staged, protocol, served.input_name,
                                  served.output_name)
    return found


def measure(targets_by_variant: dict[int, Target], images: np.ndarray, args: argparse.Namespace,
            levels: list[int]) -> dict[tuple[int, int], Pooled]:
    pooled = {(n, c): Pooled() for n in VARIANTS for c in levels}
    for round_index in range(args.rounds):
        order = VARIANTS if round_index % 2 == 0 else tuple(reversed(VARIANTS))
        for concurrency in levels:
            for instances in order:
                plan = LevelPlan("closed", concurrency, None, args.duration, args.warmup)
                stats = run_level(targets_by_variant[instances], images, plan)
                cell = pooled[(instances, concurrency)]
                cell.requests += stats.requests
                cell.errors += stats.errors
                cell.seconds += stats.duration_s
                cell.latencies_ms += stats.latencies_ms
                cell.round_qps.append(stats.qps)
                print(f"round {round_index + 1}/{args.rounds} conc {concurrency} {instances} instance(s): "
                      f"{stats.qps:.1f} QPS, P99 {stats.p99_ms:.1f} ms", flush=True)
    return pooled


def print_table(pooled: dict[tuple[int, int], Pooled], levels: list[int], args: argparse.Namespace) -> None:
    header = (f"{'conc':>4}{'inst':>5}{'QPS':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'stalls':>8}"
              f"{'err':>5}   per-round QPS")
    print(header)
    for concurrency in levels:
        for instances in VARIANTS:
            cell = pooled[(instances, concurrency)]
            rounds = " ".join(f"{q:.1f}" for q in cell.round_qps)
            slowest = max(cell.latencies_ms, default=0.0)
            print(f"{concurrency:>4}{instances:>5}{cell.qps:>8.1f}{cell.percentile(50):>8.1f}"
                  f"{cell.percentile(95):>8.1f}{cell.percentile(99):>8.1f}{slowest:>8.1f}"
                  f"{cell.stalls(args.stall_ms):>8}{cell.errors:>5}   {rounds}")
        one, two = pooled[(1, concurrency)], pooled[(2, concurrency)]
        print(f"{concurrency:>4} 2/1  QPS {two.qps / one.qps if one.qps else float('nan'):.2f}x, "
              + ", ".join(f"P{q} {two.percentile(q) / one.percentile(q):.2f}x" for q in (50, 95, 99)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "visionnode-bench-serving")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--full-int8", action="store_true")
    parser.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per level and variant")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=ServingConfig.max_batch_size)
    preferred = ",".join(str(b) for b in ServingConfig().preferred_batch_sizes)
    parser.add_argument("--preferred", default=preferred)
    parser.add_argument("--delay-us", type=int, default=ServingConfig.max_queue_delay_us)
    parser.add_argument("--stall-ms", type=float, default=400.0)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    _, int8_dir, images = prepare_models(args.work, args.calibration_images, args.full_int8)
    with tempfile.TemporaryDirectory(prefix="bench-instances-stack-") as state:
        stack = start_stack(Path(state))
        try:
            deploy_variants(int8_dir, args)
            started, load_before = time.perf_counter(), os.getloadavg()[0]
            pooled = measure(targets(args.protocol), np.ascontiguousarray(images), args, levels)
            measured_s, load_after = time.perf_counter() - started, os.getloadavg()[0]
        finally:
            stack.down()

    print(f"\nResNet-152 INT8{' (--full-int8)' if args.full_int8 else ''} on one Triton, {args.protocol}, "
          f"1 vs 2 instances side by side; max_batch {args.max_batch}, preferred {args.preferred}, "
          f"delay {args.delay_us} us; {args.rounds} rounds x {args.duration:g} s per level and variant "
          f"({measured_s:.0f} s); CPU: {cpu_model()}, shared with the load generator (load average "
          f"{load_before:.1f} before, {load_after:.1f} after); random weights")
    print_table(pooled, levels, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
