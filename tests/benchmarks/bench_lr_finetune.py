"""Top-1 on generated data: batch-rule LR vs the LR range-test LR, and fine-tuning vs training from scratch.

Three comparisons, each trained by the real `train` on real FFCV shards, medians of `--seeds` seeds (run one
after another), printed side by side with the wall clock of every run and the CPU it ran on:

1. demo dataset (`make demo`'s: 10 classes x 60 images), the demo's epochs and batch: (a) the batch-rule LR
   (0.1 x batch / 256) vs (b) validate's range-test suggestion, found as the DAG finds it (validate's smoke
   model on the 96-image subset validate uses in the demo, that seed), the LR the DAG hands to train when
   `lr` is 0;
2. the same on a dataset with a strong class signal (`SynthConfig(clutter=False)`: the class shape large on
   a plain grey background, no distractors or noise) for `--strong-epochs` epochs; optionally (b) with a
   gentler crop (`--strong-crop-min-scale`);
3. fine-tuning: (c) the strong dataset's (b) model of seed 0 (10 classes) fine-tuned for 2 epochs on another
   generated dataset with another class count (6 classes x 60, cluttered like the demo's, other seed) vs
   training from scratch on it for 2 and 6 epochs, all with that dataset's range-test LR, per seed.

Default run (ResNet-18, 64 px, 3 seeds): 25 minutes on 2 cores shared with other jobs (load 6-9).
`--arch resnet152` trains the demo's model (several times slower). Run:
    .venv/bin/python tests/benchmarks/bench_lr_finetune.py
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
from visionnode.components.common.recipe import Recipe
from visionnode.components.common.synth import SynthConfig, synthesize_dataset
from visionnode.components.shard.shard import ShardConfig, shard_dataset
from visionnode.components.train.config import TrainConfig
from visionnode.components.train.train import TrainResult, train
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
              f"range test {range_test[-1].top1:.1f} % (lr {suggested:.3g}, test {seconds:.1f} s)",
              flush=True)
        if crop_min_scale:
            gentle.append(run_train(shards, root / f"{label}-gentle-{seed}", args, epochs, suggested, seed,
                                    crop_min_scale=crop_min_scale))
            print(f"  {label} seed {seed}: range test + crop min scale {crop_min_scale} "
                  f"{gentle[-1].top1:.1f} %",
                  flush=True)
    rows = [_row(f"{label}, {epochs} ep", "(a) batch rule", batch_rule),
            _row(f"{label}, {epochs} ep", "(b) range test", range_test,
                 f"{_ratio(range_test, batch_rule)} (a); the range test took "
                 f"{statistics.median(costs):.1f} s")]
    if gentle:
        rows.append(_row(f"{label}, {epochs} ep", f"(b) + --crop-min-scale {crop_min_scale}", gentle,
                         f"{_ratio(gentle, batch_rule)} (a)"))
    return rows


def compare_finetune(root: Path, source_weights: Path, target_data: Path, target_shards: Path,
                     args: argparse.Namespace) -> list[str]:
    """(c) fine-tuned for 2 epochs vs from scratch for 2 and 6, per seed, with the target's range-test LR."""
    scratch_2, scratch_6, tuned = [], [], []
    for seed in range(args.seeds):
        suggested, _ = range_test_lr(target_data, args, seed)
        scratch_2.append(run_train(target_shards, root / f"scratch-2-{seed}", args, 2, suggested, seed))
        scratch_6.append(run_train(target_shards, root / f"scratch-6-{seed}", args, 6, suggested, seed))
        tuned.append(run_train(target_shards, root / f"finetune-2-{seed}", args, 2, suggested, seed,
                               init_weights=str(source_weights)))
        print(f"  6 classes seed {seed}: scratch 2 ep {scratch_2[-1].top1:.1f} %, "
              f"6 ep {scratch_6[-1].top1:.1f} %, fine-tuned 2 ep {tuned[-1].top1:.1f} % (lr {suggested:.3g})",
              flush=True)
    return [_row("6 classes, 2 ep", "from scratch (range-test LR)", scratch_2),
            _row("6 classes, 6 ep", "from scratch (range-test LR)", scratch_6),
            _row("6 classes, 2 ep", "(c) fine-tuned from the strong 10-class model", tuned,
                 f"{_ratio(tuned, scratch_6)} scratch 6 ep")]


def source_model(root: Path, strong_data: Path, strong_shards: Path, args: argparse.Namespace) -> Path:
    """The strong dataset's (b) model of seed 0; trained here when that comparison was skipped."""
    weights = root / "strong 10 classes-range-0" / "weights.pt"
    if not weights.is_file():
        suggested, _ = range_test_lr(strong_data, args, 0)
        run_train(strong_shards, weights.parent, args, args.strong_epochs, suggested, 0)
    return weights


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
    parser.add_argument("--strong-crop-min-scale", type=float, default=0.0,
                        help="also train the strong dataset with this gentler crop, e.g. 0.35 (0: skip)")
    parser.add_argument("--batch-size", type=int, default=DEMO_PARAMS["batch_size"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--skip", choices=("demo", "strong", "finetune"), action="append", default=[])
    args = parser.parse_args()
    os.environ.setdefault("VISIONNODE_PROGRESS", "0")  # one line per run, not a bar per epoch

    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; {args.arch}, {args.resolution} px, "
          f"batch {args.batch_size}, {args.seeds} seeds", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-lr-") as tmp:
        root = Path(tmp)
        os.environ["VISIONNODE_STATE_DIR"] = str(root / "state")  # no embedded stack: nothing logs to MLflow
        rows = []
        if "demo" not in args.skip:
            demo_data, demo_shards = make_shards(root, "demo", DEMO_DATA)
            rows += compare_lrs("demo 10 classes", demo_data, demo_shards, root, args, args.demo_epochs)
        strong_data, strong_shards = make_shards(root, "strong", STRONG_DATA)
        if "strong" not in args.skip:
            rows += compare_lrs("strong 10 classes", strong_data, strong_shards, root, args,
                                args.strong_epochs, crop_min_scale=args.strong_crop_min_scale)
        if "finetune" not in args.skip:
            target_data, target_shards = make_shards(root, "target", TARGET_DATA)
            source = source_model(root, strong_data, strong_shards, args)
            rows += compare_finetune(root, source, target_data, target_shards, args)
    print()
    print("| dataset, epochs | LR / start | top-1 % (median) | min-max | peak LR | wall s | note |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
