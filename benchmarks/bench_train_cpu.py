"""How busy `visionnode train` keeps the CPU, and its images/s against the same model's step rate on synthetic
tensors (no data loading at all), at the thread count the project sets and at the one FFCV would leave.

Side by side in one run: train as shipped, and train with the project's thread setting switched off (the
baseline: torch computes on as many threads as FFCV's decoder count, as before the fix).

FFCV's Loader sets torch's thread count to its decoder count every epoch (ffcv/pipeline/compiler.py);
components/common/cpus.py sets it back to the usable CPUs. Train runs as the CLI runs it, in a process of
its own whose CPU time is sampled from /proc/<pid>/stat every 0.5 s; the synthetic rates come from a second
process that never imports FFCV. Both use one clock (time.perf_counter in this process for the samples,
the train step's own figure for its images/s, the same step for the synthetic one).

    .venv/bin/python benchmarks/bench_train_cpu.py [--arch resnet18] [--resolution 64] [--batch 32]
                                                   [--epochs 6] [--workers 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visionnode.pipeline.cpu_use import STIME, UTIME, stat_cpu_seconds

VISIONNODE = Path(sys.executable).parent / "visionnode"

SYNTHETIC_RATE = """
import json, sys, time, torch
from visionnode.components.common.training.archs import depth_from_arch
from visionnode.components.common.training.model import build_resnet
from visionnode.components.common.training.recipe import Recipe, build_optimizer
from visionnode.components.train.precision import autocast, resolve_precision
arch, resolution, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
cpu = torch.device("cpu")
precision = resolve_precision("auto", cpu)  # as train picks it by default (bf16 where the CPU has it)
torch.manual_seed(0)
model = build_resnet(depth_from_arch(arch), 10).to(memory_format=torch.channels_last).train()
optimizer = build_optimizer(model, Recipe(), batch)
images = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (batch,))
rates = []
for step in range(12):
    started = time.perf_counter()
    with autocast(precision, cpu):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if step >= 2:
        rates.append(batch / (time.perf_counter() - started))
rates.sort()
print(json.dumps({"img_per_s": rates[len(rates) // 2], "precision": precision}))
"""


def cpu_seconds(pid: int) -> float:
    return stat_cpu_seconds((UTIME, STIME), Path(f"/proc/{pid}/stat"))  # every thread of the process


def make_shards(work: Path) -> Path:
    data, shards = work / "data", work / "shards"
    if not (shards / "manifest.json").is_file():
        subprocess.run([str(VISIONNODE), "data", "synth", str(data), "--classes", "10", "--train-per-class",
                        "60", "--val-per-class", "10", "--min-side", "64", "--max-side", "128"], check=True)
        subprocess.run([str(VISIONNODE), "shard", "--data", str(data), "--out", str(shards),
                        "--images-per-shard", "600", "--max-resolution", "128"], check=True)
    return shards


# `visionnode train ...` with keep_torch_threads() a no-op: the thread count FFCV leaves behind
FFCV_THREADS_TRAIN = """
import sys
from visionnode.components.common.data import ffcv_io
ffcv_io.keep_torch_threads = lambda: 0
from visionnode.pipeline.cli import app
app(sys.argv[1:], prog_name="visionnode")
"""


def sampled_train(args: argparse.Namespace, shards: Path, work: Path,
                  variant: str) -> tuple[list[float], dict]:
    """Run train (`project` or `ffcv` threads); return the CPU cores it used per 0.5 s sample and its
    summary."""
    summary = work / f"train-{variant}.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "VISIONNODE_MLFLOW_URI": ""}
    program = [str(VISIONNODE)] if variant == "project" else [sys.executable, "-c", FFCV_THREADS_TRAIN]
    command = [*program, "train", "--shards", str(shards), "--out", str(work / f"model-{variant}"),
               "--arch", args.arch, "--epochs", str(args.epochs), "--batch-size", str(args.batch),
               "--res-schedule", f"{args.resolution}:{args.resolution}", "--workers", str(args.workers),
               "--lr", "0.05", "--resume", "never", "--checkpoint-uri", str(work / f"ckpt-{variant}"),
               "--json", str(summary)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cores: list[float] = []
    last_cpu, last_time = 0.0, time.perf_counter()
    while process.poll() is None:
        time.sleep(0.5)
        try:
            cpu, now = cpu_seconds(process.pid), time.perf_counter()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            break
        cores.append((cpu - last_cpu) / (now - last_time))
        last_cpu, last_time = cpu, now
    if process.wait() != 0:
        raise SystemExit(f"train failed (exit {process.returncode}): {' '.join(command)}")
    return cores, json.loads(summary.read_text())


def synthetic_rate(args: argparse.Namespace, threads: int) -> tuple[float, str]:
    """The train step's median img/s on synthetic tensors, and the precision it ran in (train's default)."""
    done = subprocess.run([sys.executable, "-c", SYNTHETIC_RATE, args.arch, str(args.resolution),
                           str(args.batch), str(threads)], capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return float(figures["img_per_s"]), figures["precision"]


def main() -> None:
    from visionnode.components.common.cpus import compute_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1, help="decoder threads (the demo: 1)")
    parser.add_argument("--work", type=Path, default=None, help="keep the data and shards here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        shards = make_shards(work)
        runs = {variant: sampled_train(args, shards, work, variant) for variant in ("ffcv", "project")}
        threads = compute_threads()
        (project, precision), (ffcv_left, _) = synthetic_rate(args, threads), synthetic_rate(args, 1)
    print(f"CPU: {_cpu_model()}, usable CPUs {threads}")
    print(f"train ({args.arch}, {args.resolution} px, batch {args.batch}, {args.epochs} epochs, "
          f"{args.workers} decoder threads), CPU sampled every 0.5 s from /proc:")
    rates = {}
    for variant, (cores, summary) in runs.items():
        busy = sorted(cores)[len(cores) // 10:] or cores  # leave out start-up's idle samples (imports)
        rates[variant] = float(summary["images_per_second"])
        label = ("torch threads as FFCV leaves them (baseline)" if variant == "ffcv"
                 else "the project's threads")
        print(f"  {label}: {rates[variant]:.1f} img/s; CPU cores in use: mean {statistics.fmean(cores):.2f} "
              f"over the run, median {statistics.median(busy):.2f} while training ({len(cores)} samples)")
    print(f"  ratio project / baseline: {rates['project'] / rates['ffcv']:.2f}x img/s "
          "(target: cores >= 1.7 of 2)")
    print(f"synthetic tensors, same model, batch and precision ({precision}): {project:.1f} img/s at "
          f"{threads} threads, "
          f"{ffcv_left:.1f} at 1: {project / ffcv_left:.2f}x")
    print(f"train / synthetic at {threads} threads: {rates['project'] / project:.2f}")

def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
