"""The LR probe's choice by horizon and by its model's width: held-out loss per LR after N steps.

The probe (components/common/training/lr_probe.py) trains each candidate LR 60 steps on validate's subset
with a half-width ResNet-18 and keeps the lowest held-out loss, unless it is not two standard errors below
chance. This benchmark runs that probe (validate's subset, image size, batch, held-out quarter, train's recipe
with the probe's one-cycle over N steps) for each horizon N and prints each LR's held-out loss with its
standard error, chance (the held-out labels' entropy), the probe's choice ("-": none, the batch rule) and
the seconds each probe cost. `--width 64` runs the full-width ResNet-18 instead: what the half-width one
stands in for.
Run (textures and scenes, 3 seeds, 60 and 90 steps: about 3 minutes on 2 cores, 9 at `--width 64`):
    .venv/bin/python benchmarks/bench_lr_horizon.py --datasets textures,scenes --steps 60,90
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench_lr_finetune import SweepConfig, cpu_name, run_validate_probe
from bench_lr_panel import DATASETS, write_images

from visionnode.components.common.training.lr_probe import CANDIDATE_LRS, LRProbeResult
from visionnode.components.validate.smoke import PROBE_WIDTH
from visionnode.pipeline.local_run import DEMO_PARAMS


def probe_at(data: Path, horizon: int, lrs: tuple[float, ...], args: argparse.Namespace,
             seed: int) -> LRProbeResult:
    return run_validate_probe(SweepConfig(data=data, subset=DEMO_PARAMS["validate_subset"],
                                          image_size=args.resolution, seed=seed, lr_probe_steps=horizon,
                                          lrs=lrs), width=args.width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="textures,scenes", help=f"of {', '.join(DATASETS)}")
    parser.add_argument("--steps", default="60", help="the horizons")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in CANDIDATE_LRS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--width", type=int, default=PROBE_WIDTH, help="the probe ResNet-18's first stage")
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    lrs = tuple(float(v) for v in args.lrs.split(","))
    unknown = set(names) - set(DATASETS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    os.environ.setdefault("VISIONNODE_PROGRESS", "0")
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; {args.resolution} px; "
          f"ResNet-18 of width {args.width}; LRs {lrs}", flush=True)
    print("| dataset | seed | steps | " + " | ".join(f"{lr:g}" for lr in lrs)
          + " | chance | chosen | seconds |")
    print("|---|---|---|" + "---|" * len(lrs) + "---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-lr-horizon-") as tmp:
        for name in names:
            data, _ = write_images(name, Path(tmp), args.resolution)
            for seed in range(args.seeds):
                for steps in (int(v) for v in args.steps.split(",")):
                    result = probe_at(data, steps, lrs, args, seed)
                    cells = [f"{j.heldout_loss:.3f} ± {j.heldout_loss_se:.3f}" for j in result.judgements]
                    chosen = "-" if result.suggested_lr is None else f"{result.suggested_lr:g}"
                    print(f"| {name} | {seed} | {steps} | " + " | ".join(cells)
                          + f" | {result.chance_loss:.3f} | {chosen} | {result.seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
