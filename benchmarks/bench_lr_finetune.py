"""Top-1 on generated data: batch-rule LR vs the LR probe's LR, and fine-tuning vs training from scratch.

Three comparisons, each trained by the real `train` on real FFCV shards, medians of `--seeds` seeds (run one
after another), printed side by side with the wall clock of every run and the CPU it ran on:

1. the cluttered dataset (`make demo`'s before it took the strong kind: 10 classes x 60 images), the demo's
   epochs and batch: (a) the batch-rule LR (0.1 x batch / 256) vs (b) validate's LR probe suggestion, found
   as the DAG finds it (validate's smoke model on the 96-image subset validate uses in the demo, that seed),
   the LR the DAG hands to train when `lr` is auto;
2. the same on a dataset with a strong class signal (`SynthConfig(clutter=False)`: the class shape large on
   a plain grey background, no distractors or noise) for `--strong-epochs` epochs; optionally (b) with a
   gentler crop (`--strong-crop-min-scale`);
3. fine-tuning on a target dataset with another class count (6 classes x 60, cluttered like the demo's, other
   seed, `--target-val-per-class` val images per class): (c) a model trained on the demo dataset (10 classes,
   cluttered: the same kind of data; `--source-epochs` epochs, its probe LR, seed 0) fine-tuned for 2
   epochs vs training from scratch for 2 and 6 epochs, all with the target's probe LR, per seed. The
   6 target classes draw the same shape, hue and texture as source classes 0-5 (synth derives them from the
   class index), rendered from another seed. Also reported, not chosen after the fact: (c) with
   `--head-epochs 1`, and (c) from the strong dataset's (b) model of seed 0 (plain shapes on grey: another
   kind of data; `--skip strong-source` leaves it out).

Default run (ResNet-18, 64 px, 3 seeds): about 30 minutes on 2 cores shared with other jobs; the fine-tuning
part alone (`--skip demo --skip strong`, both sources trained) took 560 s at load 2-3.
`--arch resnet152` trains the demo's model (several times slower). Run:
    .venv/bin/python benchmarks/bench_lr_finetune.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from visionnode.components.common.cpus import keep_torch_threads
from visionnode.components.common.data.imagenet import open_imagenet
from visionnode.components.common.training.lr_probe import CANDIDATE_LRS, LRProbeConfig, LRProbeResult
from visionnode.components.common.training.recipe import Recipe
from visionnode.components.local.synth import SynthConfig, synthesize_dataset
from visionnode.components.shard.shard import ShardConfig, shard_dataset
from visionnode.components.train.config import TrainConfig
from visionnode.components.train.train import TrainResult, train
from visionnode.components.validate.smoke import PROBE_WIDTH
from visionnode.components.validate.validate import (
    ValidateConfig,
    choose_subset,
    decode_subset,
    lr_probe_on_subset,
)
from visionnode.pipeline.local_run import DEMO_DATA, DEMO_PARAMS

STRONG_DATA = SynthConfig(classes=10, train_per_class=60, val_per_class=10, seed=3, min_side=64, max_side=128,
                          clutter=False)
TARGET_SEED = 5  # the fine-tuning target: 6 cluttered classes, val images per class set by the command line


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
    return root / name, shard_images(root / name, root / f"{name}-shards")


def shard_images(data: Path, out: Path) -> Path:
    return shard_dataset(ShardConfig(data=data, out=out, images_per_shard=256, max_resolution=96, workers=2,
                                     readback=False)).out


@dataclass
class SweepConfig(ValidateConfig):
    """validate's settings with the probe's candidates set to `lrs`."""

    lrs: tuple[float, ...] = CANDIDATE_LRS

    def lr_probe(self) -> LRProbeConfig:
        return LRProbeConfig(steps=self.lr_probe_steps, candidates=self.lrs)


def probe_suggestion(data: Path, batch_size: int, resolution: int, seed: int, arch: str = "",
                     lrs: tuple[float, ...] = CANDIDATE_LRS) -> tuple[float, float]:
    """validate's suggestion, as the DAG computes it (its subset, image size and batch): (lr, seconds); lr 0
    when the probe suggests nothing (train's batch rule). An `arch` (empty: validate's default) or other
    `lrs`: the same probe on that model (a ResNet-18 or -34 at validate's half width, any deeper one at full
    width) over those LRs."""
    config = SweepConfig(data=data, subset=DEMO_PARAMS["validate_subset"], image_size=resolution,
                         batch_size=batch_size, seed=seed, lrs=lrs)
    result = run_validate_probe(replace(config, arch=arch) if arch else config)
    return result.suggested_lr or 0.0, result.seconds


def run_validate_probe(config: ValidateConfig, width: int = PROBE_WIDTH) -> LRProbeResult:
    """validate's LR probe on its subset of `config.data` (its probe model at `width`), with validate's
    threads: this process imported FFCV, which set torch to one thread; validate's own process does not."""
    keep_torch_threads()
    layout = open_imagenet(Path(config.data))
    records = choose_subset(layout.scan("train").records, config.subset, config.seed)
    images, labels, _ = decode_subset(records, config.image_size, config.batch_size, workers=2)
    return lr_probe_on_subset(images, labels, layout.classes.num_classes, config, width=width)


def probe_lr_for(data: Path, args: argparse.Namespace, seed: int) -> tuple[float, float]:
    return probe_suggestion(data, args.batch_size, args.resolution, seed)


def run_train(shards: Path, out: Path, args: argparse.Namespace, epochs: int, lr: float, seed: int,
              init_weights: str = "", crop_min_scale: float = 0.08, head_epochs: int = 0,
              warmup_epochs: float | None = None) -> Run:
    started = time.perf_counter()
    result: TrainResult = train(TrainConfig(
        shards=str(shards), out_dir=out, epochs=epochs, batch_size=args.batch_size, arch=args.arch,
        res_schedule=f"{args.resolution}:{args.resolution}", precision="auto", resume="never", workers=1,
        seed=seed, tracking=False, checkpoint_uri=str(out / "checkpoints"),
        recipe=Recipe(lr=lr or None, warmup_epochs=warmup_epochs),  # lr 0: the batch rule; warm-up None: auto
        init_weights=init_weights, crop_min_scale=crop_min_scale, head_epochs=head_epochs))
    if result.status == "preempted":  # train saved a checkpoint on SIGTERM: no top-1 to record as a result
        raise SystemExit(f"stopped by SIGTERM: the run at LR {lr:g}, seed {seed}, after {result.steps} steps "
                         "(bench_lr_panel's --results keeps the runs that finished)")
    return Run(result.top1 or 0.0, result.peak_lr, time.perf_counter() - started)


def compare_lrs(label: str, data: Path, shards: Path, root: Path, args: argparse.Namespace,
                epochs: int, crop_min_scale: float = 0.0) -> list[str]:
    """(a) vs (b) per seed; with `crop_min_scale` also (b) with that gentler crop."""
    batch_rule, probe, gentle, costs = [], [], [], []
    for seed in range(args.seeds):
        suggested, seconds = probe_lr_for(data, args, seed)
        costs.append(seconds)
        batch_rule.append(run_train(shards, root / f"{label}-batch-{seed}", args, epochs, 0.0, seed))
        probe.append(run_train(shards, root / f"{label}-range-{seed}", args, epochs, suggested, seed))
        print(f"  {label} seed {seed}: batch rule {batch_rule[-1].top1:.1f} % (lr {batch_rule[-1].lr:.3g}), "
              f"LR probe {probe[-1].top1:.1f} % (lr {suggested:.3g}, test {seconds:.1f} s)",
              flush=True)
        if crop_min_scale:
            gentle.append(run_train(shards, root / f"{label}-gentle-{seed}", args, epochs, suggested, seed,
                                    crop_min_scale=crop_min_scale))
            print(f"  {label} seed {seed}: LR probe + crop min scale {crop_min_scale} "
                  f"{gentle[-1].top1:.1f} %",
                  flush=True)
    rows = [_row(f"{label}, {epochs} ep", "(a) batch rule", batch_rule),
            _row(f"{label}, {epochs} ep", "(b) LR probe", probe,
                 f"{_ratio(probe, batch_rule)} (a); the probe took "
                 f"{statistics.median(costs):.1f} s")]
    if gentle:
        rows.append(_row(f"{label}, {epochs} ep", f"(b) + --crop-min-scale {crop_min_scale}", gentle,
                         f"{_ratio(gentle, batch_rule)} (a)"))
    return rows


def compare_finetune(root: Path, sources: dict[str, Path], target_data: Path, target_shards: Path,
                     args: argparse.Namespace) -> list[str]:
    """(c) fine-tuned for 2 epochs vs from scratch for 2 and 6, per seed, with the target's probe LR.

    `sources`: label -> weights; the first is fine-tuned with head_epochs 0 and 1, the others with 0."""
    scratch_2, scratch_6 = [], []
    arms: dict[tuple[str, int], list[Run]] = {}
    for seed in range(args.seeds):
        suggested, _ = probe_lr_for(target_data, args, seed)
        scratch_2.append(run_train(target_shards, root / f"scratch-2-{seed}", args, 2, suggested, seed))
        scratch_6.append(run_train(target_shards, root / f"scratch-6-{seed}", args, 6, suggested, seed))
        line = (f"  6 classes seed {seed} (lr {suggested:.3g}): scratch 2 ep {scratch_2[-1].top1:.1f} %, "
                f"6 ep {scratch_6[-1].top1:.1f} %")
        for i, (label, weights) in enumerate(sources.items()):
            for head_epochs in (0, 1) if i == 0 else (0,):
                run = run_train(target_shards, root / f"finetune-{i}-{head_epochs}-{seed}", args, 2,
                                suggested, seed, init_weights=str(weights), head_epochs=head_epochs)
                arms.setdefault((label, head_epochs), []).append(run)
                line += f"; from {label}, head {head_epochs}: {run.top1:.1f} %"
        print(line, flush=True)
    rows = [_row("6 classes, 2 ep", "from scratch (probe LR)", scratch_2),
            _row("6 classes, 6 ep", "from scratch (probe LR)", scratch_6)]
    for (label, head_epochs), runs in arms.items():
        setting = f"(c) fine-tuned from the {label} model, --head-epochs {head_epochs}"
        rows.append(_row("6 classes, 2 ep", setting, runs, f"{_ratio(runs, scratch_6)} scratch 6 ep"))
    return rows


def source_model(root: Path, label: str, data: Path, shards: Path, args: argparse.Namespace,
                 epochs: int, compared_epochs: int) -> Path:
    """The (b) model of seed 0 on `data` (probe LR) for `epochs`: compare_lrs's when it ran that long."""
    weights = root / f"{label}-range-0" / "weights.pt"
    if not weights.is_file() or epochs != compared_epochs:
        weights = root / f"{label}-source" / "weights.pt"
        suggested, _ = probe_lr_for(data, args, 0)
        run = run_train(shards, weights.parent, args, epochs, suggested, 0)
        print(f"  source {label}: {epochs} ep, lr {suggested:.3g}, {run.top1:.1f} % on its own val, "
              f"{run.wall_s:.0f} s", flush=True)
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
    parser.add_argument("--demo-epochs", type=int, default=3, help="epochs on the cluttered dataset")
    parser.add_argument("--strong-epochs", type=int, default=10)
    parser.add_argument("--strong-crop-min-scale", type=float, default=0.0,
                        help="also train the strong dataset with this gentler crop, e.g. 0.35 (0: skip)")
    parser.add_argument("--batch-size", type=int, default=DEMO_PARAMS["train_batch_size"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--source-epochs", type=int, default=10,
                        help="epochs of the cluttered 10-class (demo dataset) model that (c) fine-tunes")
    parser.add_argument("--target-val-per-class", type=int, default=30,
                        help="val images per class of the 6-class fine-tuning target")
    parser.add_argument("--skip", choices=("demo", "strong", "finetune", "strong-source"), action="append",
                        default=[])
    args = parser.parse_args()
    os.environ.setdefault("VISIONNODE_PROGRESS", "0")  # one line per run, not a bar per epoch

    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; {args.arch}, {args.resolution} px, "
          f"batch {args.batch_size}, {args.seeds} seeds", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-lr-") as tmp:
        root = Path(tmp)
        os.environ["VISIONNODE_STATE_DIR"] = str(root / "state")  # no embedded stack: nothing logs to MLflow
        rows = []
        finetune = "finetune" not in args.skip
        strong_source = finetune and "strong-source" not in args.skip
        if "demo" not in args.skip or finetune:
            demo_data, demo_shards = make_shards(root, "demo", replace(DEMO_DATA, clutter=True))
        if "demo" not in args.skip:
            rows += compare_lrs("demo 10 classes", demo_data, demo_shards, root, args, args.demo_epochs)
        if "strong" not in args.skip or strong_source:
            strong_data, strong_shards = make_shards(root, "strong", STRONG_DATA)
        if "strong" not in args.skip:
            rows += compare_lrs("strong 10 classes", strong_data, strong_shards, root, args,
                                args.strong_epochs, crop_min_scale=args.strong_crop_min_scale)
        if finetune:
            target = SynthConfig(classes=6, train_per_class=60, val_per_class=args.target_val_per_class,
                                 seed=TARGET_SEED, min_side=64, max_side=128)
            target_data, target_shards = make_shards(root, "target", target)
            sources = {"cluttered demo 10-class": source_model(
                root, "demo 10 classes", demo_data, demo_shards, args, args.source_epochs, args.demo_epochs)}
            if strong_source:
                sources["strong 10-class"] = source_model(
                    root, "strong 10 classes", strong_data, strong_shards, args, args.strong_epochs,
                    args.strong_epochs)
            rows += compare_finetune(root, sources, target_data, target_shards, args)
    print()
    print("| dataset, epochs | LR / start | top-1 % (median) | min-max | peak LR | wall s | note |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
