"""How the LR probe's ranking changes with its horizon: held-out loss of each LR after N steps, per dataset.

The probe (components/common/training/lr_probe.py) judges its last two candidates after 30 steps. On the LR
panel (bench_lr_panel.py) its choice was one grid step too low on textures, where runs of 56-112 steps did
best at 0.3. This benchmark trains each of a few LRs by the probe's own procedure (validate's subset, image
size, batch, held-out quarter, train's recipe with the probe's one-cycle over N steps) for each horizon N and
prints each LR's held-out loss with its standard error, the lowest per horizon and the seconds each horizon
cost: what a longer final round would choose, and what it would cost.

It is validate's `lr_probe_on_subset` with one round only: a probe of `len(--lrs)` candidates whose first
round is N steps long and keeps one (3 candidates, eta 3), so every LR is trained and judged after N steps.
Run (textures and scenes, 3 seeds, 30 and 90 steps: about 6 minutes on 2 cores):
    .venv/bin/python benchmarks/bench_lr_horizon.py --datasets textures,scenes --steps 30,90
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench_lr_finetune import cpu_name
from real_datasets import write_digits, write_faces, write_scenes, write_textures

from visionnode.components.common.cpus import keep_torch_threads
from visionnode.components.common.data.imagenet import open_imagenet
from visionnode.components.common.training.lr_probe import LRProbeConfig, LRProbeResult
from visionnode.components.validate.validate import (
    ValidateConfig,
    choose_subset,
    decode_subset,
    lr_probe_on_subset,
)
from visionnode.pipeline.local_run import DEMO_PARAMS

# the panel's sizes (bench_lr_panel.prepare)
WRITERS = {
    "digits": lambda out, size: write_digits(out, train_per_class=50, val_per_class=30, size=size),
    "textures": lambda out, size: write_textures(out, train_per_class=60, val_per_class=24),
    "scenes": lambda out, size: write_scenes(out, train_per_class=60, val_per_class=24),
    "faces": lambda out, size: write_faces(out, train_per_class=70, val_per_class=30, size=size),
}


@dataclass
class OneRoundConfig(ValidateConfig):
    """validate's settings with a one-round probe: every LR of `lrs` trained and judged after `horizon`."""

    horizon: int = 30
    lrs: tuple[float, ...] = (0.03, 0.1, 0.3)

    def lr_probe(self) -> LRProbeConfig:
        return LRProbeConfig(first_round_steps=self.horizon, candidates=self.lrs)


def probe_at(data: Path, horizon: int, lrs: tuple[float, ...], resolution: int, seed: int) -> LRProbeResult:
    keep_torch_threads()  # as validate's process has them (importing FFCV set one thread)
    config = OneRoundConfig(data=data, subset=DEMO_PARAMS["validate_subset"], image_size=resolution,
                            seed=seed, lr_probe_steps=horizon, horizon=horizon, lrs=lrs)
    layout = open_imagenet(data)
    records = choose_subset(layout.scan("train").records, config.subset, seed)
    images, labels, _ = decode_subset(records, config.image_size, config.batch_size, workers=2)
    return lr_probe_on_subset(images, labels, layout.classes.num_classes, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="textures,scenes", help=f"of {', '.join(WRITERS)}")
    parser.add_argument("--steps", default="30,90", help="the horizons")
    parser.add_argument("--lrs", default="0.03,0.1,0.3", help="at most 3, so one round judges them all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    lrs = tuple(float(v) for v in args.lrs.split(","))
    unknown = set(names) - set(WRITERS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}; choose from {', '.join(WRITERS)}")
    if not 2 <= len(lrs) <= 3:
        parser.error("give 2 or 3 LRs: one round of successive halving (eta 3) judges at most 3")
    os.environ.setdefault("VISIONNODE_PROGRESS", "0")
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; "
          f"{args.resolution} px; LRs {lrs}", flush=True)
    print("| dataset | seed | steps | " + " | ".join(f"{lr:g}" for lr in lrs) + " | lowest | seconds |")
    print("|---|---|---|" + "---|" * len(lrs) + "---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-lr-horizon-") as tmp:
        for name in names:
            data = WRITERS[name](Path(tmp) / name, args.resolution)
            for seed in range(args.seeds):
                for steps in (int(v) for v in args.steps.split(",")):
                    result = probe_at(data, steps, lrs, args.resolution, seed)
                    losses = {j.lr: j for j in result.judgements}
                    lowest = min(losses.values(), key=lambda j: j.heldout_loss)
                    cells = [f"{losses[lr].heldout_loss:.3f} ± {losses[lr].heldout_loss_se:.3f}"
                             for lr in lrs]
                    print(f"| {name} | {seed} | {steps} | " + " | ".join(cells)
                          + f" | {lowest.lr:g} | {result.seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
