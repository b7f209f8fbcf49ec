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

from bench_lr_finetune import cpu_name, run_validate_probe
from bench_lr_panel import DATASETS, write_images

from visionnode.components.common.training.lr_probe import LRProbeConfig, LRProbeResult
from visionnode.components.validate.validate import ValidateConfig
from visionnode.pipeline.local_run import DEMO_PARAMS


@dataclass
class OneRoundConfig(ValidateConfig):
    """validate's settings with a one-round probe: every LR of `lrs` trained and judged after `horizon`."""

    horizon: int = 30
    lrs: tuple[float, ...] = (0.03, 0.1, 0.3)

    def lr_probe(self) -> LRProbeConfig:
        return LRProbeConfig(first_round_steps=self.horizon, candidates=self.lrs)


def probe_at(data: Path, horizon: int, lrs: tuple[float, ...], resolution: int, seed: int) -> LRProbeResult:
    return run_validate_probe(OneRoundConfig(data=data, subset=DEMO_PARAMS["validate_subset"],
                                             image_size=resolution, seed=seed, lr_probe_steps=horizon,
                                             horizon=horizon, lrs=lrs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="textures,scenes", help=f"of {', '.join(DATASETS)}")
    parser.add_argument("--steps", default="30,90", help="the horizons")
    parser.add_argument("--lrs", default="0.03,0.1,0.3", help="at most 3, so one round judges them all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    lrs = tuple(float(v) for v in args.lrs.split(","))
    unknown = set(names) - set(DATASETS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    if not 2 <= len(lrs) <= 3:
        parser.error("give 2 or 3 LRs: one round of successive halving (eta 3) judges at most 3")
    os.environ.setdefault("VISIONNODE_PROGRESS", "0")
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; "
          f"{args.resolution} px; LRs {lrs}", flush=True)
    print("| dataset | seed | steps | " + " | ".join(f"{lr:g}" for lr in lrs) + " | lowest | seconds |")
    print("|---|---|---|" + "---|" * len(lrs) + "---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-lr-horizon-") as tmp:
        for name in names:
            data, _ = write_images(name, Path(tmp), args.resolution)
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
