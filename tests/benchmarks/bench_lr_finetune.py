"""Top-1 on generated data: batch-rule LR vs the LR range-test LR, and fine-tuning vs training from scratch.

Three comparisons, each trained by the real `train` on real FFCV shards, and printed side by side with the
wall clock of every run and the CPU it ran on:

1. demo dataset (`make demo`'s: 10 classes x 60 images), the demo's epochs and batch, median of `--seeds`
   seeds: (a) the batch-rule LR (0.1 x batch / 256) vs (b) validate's range-test suggestion, found on the
   same 96-image subset validate uses in the demo (the LR the DAG hands to train when `lr` is 0);
2. a dataset with a stronger class signal (the demo's 10 classes x 60 images without distractor shapes and
   pixel noise) for `--strong-epochs` epochs, (a) vs (b) again, median over the same seeds, and (b) with a
   gentler crop (`--strong-crop-min-scale`: the class object spans 18-60 % of the short side, and an 8 % crop
   often misses it);
3. fine-tuning: a source model trained on the demo dataset for `--source-epochs`, then (c) fine-tuned for 2
   epochs on another generated dataset with another class count (6 classes x 60, other seed) vs training from
   scratch on it for 2 and 6 epochs with the range-test LR.

Default run (ResNet-18, 64 px, 3 seeds): about 25 minutes on 2 cores. `--arch resnet152` runs the demo's
model (much slower). Run:  .venv/bin/python tests/benchmarks/bench_lr_finetune.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.imagenet import open_imagenet
from visionnode.components.common.synth import SynthConfig, synthesize_dataset
from visionnode.components.shard.shard import ShardConfig, shard_dataset
from visionnode.components.common.recipe import Recipe
from visionnode.components.train.train import TrainConfig, TrainResult, train
from visionnode.components.validate.validate import (
    ValidateConfig,
    choose_subset,
    decode_subset,
    lr_range_on_subset,
)
from visionnode.pipeline.local_run import DEMO_DATA, DEMO_PARAMS

STRONG_DATA = SynthConfig(classes=10, train_per_class=60, val_per_class=10, seed=3, min_side=64, max_side=128,
                          clutter=False)
TARGET_DATA = SynthConfig(classes=6, train_per_class=60, val_per_class=10, seed=5, min_side=64, max_side=128)


@dataclass
class Run:
    top1: float
    lr: float
    wall_s: float


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def make_shards(root: Path, name: str, data: SynthConfig) -> tuple[Path, Path]:
    synthesize_dataset(root / name, data)
    shards = shard_dataset(ShardConfig(data=root / name, out=root / f"{name}-shards", images_per_shard=256,
                                       max_resolution=96, workers=2, readback=False)).out
    return root / name, shards


def range_test_lr(data: Path, args: argparse.Namespace, seed: int) -> tuple[float, float]:
    """validate's suggestion, as the DAG computes it (its subset, image size and batch): (lr, seconds)."""
    config = ValidateConfig(data=data, subset=DEMO_PARAMS["validate_subset"], image_size=args.resolution,
                            batch_size=args.batch_size, seed=seed)
    layout = open_imagenet(data)
    records = choose_subset(layout.scan("train").records, config.subset, seed)
    images, labels, _ = decode_subset(records, config.image_size, config.batch_size, workers=2)
    result = lr_range_on_subset(images, labels, layout.classes.num_classes, config)
    return result.suggested_lr, result.seconds


def run_train(shards: Path, out: Path, args: argparse.Namespace, epochs: int, lr: float, seed: int,
              init_weights: str = "", crop_min_scale: float = 0.08) -> Run:
    started = time.perf_counter()
    result: TrainResult = train(TrainConfig(
        shards=str(shards), out_dir=out, epochs=epochs, batch_size=args.batch_size, arch=args.arch,
        res_start=args.resolution, res_end=args.resolution, precision="auto", resume="never", workers=1,
        seed=seed, tracking=False, checkpoint_uri=str(out / "checkpoints"), recipe=Recipe(lr=lr),
        init_weights=init_weights, crop_min_scale=crop_min_scale))
    return Run(result.top1 or 0.0, result.peak_lr, time.perf_counter() - started)


def compare_lrs(label: str, data: Path, shards: Path, root: Path, args: argparse.Namespace,
                epochs: int, crop_min_scale: float = 0.0) -> list[str]:
    """(a) vs (b) per seed; with `crop_min_scale` also (b) with that gentler crop."""
    batch_rule, range_test, gentle, costs = [], [], [], []
    for seed in range(args.seeds):
        suggested, seconds = range_test_lr(data, args, seed)
        costs.append(seconds)
        batch_rule.append(run_train(shards, root / f"{label}-batch-{seed}", args, epochs, 0.0, seed))
        range_test.append(run_train(shards, root / f"{label}-range-{seed}", args, epochs, suggested, seed))
        print(f"  {label} seed {seed}: batch rule {batch_rule[-1].top1:.1f} % (lr {batch_rule[-1].lr:.3g}), "
              f"range test {range_test[-1].top1:.1f} % (lr {suggested:.3g}, test {seconds:.1f} s)", flush=True)
        if crop_min_scale:
            gentle.append(run_train(shards, root / f"{label}-gentle-{seed}", args, epochs, suggested, seed,
                                    crop_min_scale=crop_min_scale))
            print(f"  {label} seed {seed}: range test + crop min scale {crop_min_scale} {gentle[-1].top1:.1f} %",
                  flush=True)
    rows = [_row(f"{label}, {epochs} ep", "(a) batch rule", batch_rule),
            _row(f"{label}, {epochs} ep", "(b) range test", range_test,
                 f"{_ratio(range_test, batch_rule)} (a); the range test took {statistics.median(costs):.1f} s")]
    if gentle:
        rows.append(_row(f"{label}, {epochs} ep", f"(b) + --crop-min-scale {crop_min_scale}", gentle,
                         f"{_ratio(gentle, batch_rule)} (a)"))
    return rows


def compare_finetune(root: Path, demo_shards: Path, target_data: Path, target_shards: Path,
                     args: argparse.Namespace) -> list[str]:
    suggested, _ = range_test_lr(target_data, args, 0)
    source = run_train(demo_shards, root / "source", args, args.source_epochs, 0.0, 0)
    print(f"  source model: {source.top1:.1f} % on the demo dataset after {args.source_epochs} epochs", flush=True)
    weights = str(root / "source" / "weights.pt")
    scratch = {epochs: run_train(target_shards, root / f"scratch-{epochs}", args, epochs, suggested, 0)
               for epochs in (2, 6)}
    tuned = run_train(target_shards, root / "finetune-2", args, 2, suggested, 0, init_weights=weights)
    return [_row("6 classes, 2 ep", "from scratch (range-test LR)", [scratch[2]]),
            _row("6 classes, 6 ep", "from scratch (range-test LR)", [scratch[6]]),
            _row("6 classes, 2 ep", "(c) fine-tuned from the demo model", [tuned],
                 f"{_ratio([tuned], [scratch[6]])} scratch 6 ep; source model {source.top1:.1f} % on its data")]


def _ratio(runs: list[Run], baseline: list[Run]) -> str:
    base = statistics.median(r.top1 for r in baseline)
    return f"{statistics.median(r.top1 for r in runs) / base:.2f}x" if base else "-"


def _row(dataset: str, setting: str, runs: list[Run], note: str = "") -> str:
    top1 = statistics.median(r.top1 for r in runs)
    lr = statistics.median(r.lr for r in runs)
    wall = statistics.median(r.wall_s for r in runs)
    spread = f"{min(r.top1 for r in runs):.1f}-{max(r.top1 for r in runs):.1f}" if len(runs) > 1 else "-"
    return f"| {dataset} | {setting} | {top1:.1f} | {spread} | {lr:.3g} | {wall:.0f} | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--demo-epochs", type=int, default=DEMO_PARAMS["epochs"])
    parser.add_argument("--strong-epochs", type=int, default=10)
    parser.add_argument("--source-epochs", type=int, default=6)
    parser.add_argument("--strong-crop-min-scale", type=float, default=0.35,
                        help="also train the strong dataset with this gentler crop (0: skip)")
    parser.add_argument("--batch-size", type=int, default=DEMO_PARAMS["batch_size"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--skip", choices=("demo", "strong", "finetune"), action="append", default=[])
    args = parser.parse_args()
    os.environ.setdefault("VISIONNODE_PROGRESS", "0")  # one line per run, not a bar per epoch

    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; {args.arch}, {args.resolution} px, batch {args.batch_size}, "
          f"{args.seeds} seeds", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-lr-") as tmp:
        root = Path(tmp)
        os.environ["VISIONNODE_STATE_DIR"] = str(root / "state")  # no embedded stack: nothing logs to MLflow
        demo_data, demo_shards = make_shards(root, "demo", DEMO_DATA)
        rows = []
        if "demo" not in args.skip:
            rows += compare_lrs("demo 10 classes", demo_data, demo_shards, root, args, args.demo_epochs)
        if "strong" not in args.skip:
            strong_data, strong_shards = make_shards(root, "strong", STRONG_DATA)
            rows += compare_lrs("strong 10 classes", strong_data, strong_shards, root, args, args.strong_epochs,
                                crop_min_scale=args.strong_crop_min_scale)
        if "finetune" not in args.skip:
            target_data, target_shards = make_shards(root, "target", TARGET_DATA)
            rows += compare_finetune(root, demo_shards, target_data, target_shards, args)
    print()
    print("| dataset, epochs | LR / start | top-1 % (median) | min-max | peak LR | wall s | note |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
