"""Train a ResNet (ResNet-152 by default) on FFCV shards: one process or many under torchrun.

Read top to bottom: `train(config)` sets up (distributed context, shards, model, recipe, resume), then runs
`Trainer.train_one_epoch` and `Trainer.evaluate` per epoch with progressive resizing, checkpoints every N
steps and at each epoch end, and writes the Model (weights.pt + model.json) plus MLflow records on rank 0.

SIGTERM (a pre-empted node) sets a flag; at the next step boundary every rank stops together, rank 0 writes
a checkpoint and `train` returns with status "preempted" (the CLI then exits with PREEMPTED_EXIT_CODE = 143,
which Kubeflow's PyTorchJob `restartPolicy: ExitCode` treats as retryable; the retry resumes with
`--resume auto`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionnode.components.common.artifacts import ShardManifest
from visionnode.components.common.errors import ConfigError, DataError, IntegrityError
from visionnode.components.common.jsonio import to_jsonable
from visionnode.components.common.progress import console, progress_bar
from visionnode.components.common.stats import accuracy_interval
from visionnode.components.common.tracking import Tracker, save_figure, tracked_run
from visionnode.components.common.training.archs import depth_from_arch
from visionnode.components.common.training.lr_probe import (
    LRProbeConfig,
    LRProbeResult,
    lr_probe_figure,
    probe_lr,
    promise_note,
)
from visionnode.components.common.training.model import build_resnet, count_parameters
from visionnode.components.common.training.recipe import (
    LRPlan,
    build_optimizer,
    build_scheduler,
    resolution_for_epoch,
)
from visionnode.components.train.checkpoint import CheckpointStore
from visionnode.components.train.config import TrainConfig
from visionnode.components.train.distributed import (
    DistContext,
    barrier,
    gather_floats,
    init_distributed,
    shutdown_distributed,
)
from visionnode.components.train.finetune import InitWeights, load_init_weights, set_backbone_trainable
from visionnode.components.train.outputs import (
    TRAIN_LOG_FILE,
    plot_training_curves,
    register_model,
    write_confusion_views,
    write_model,
    write_train_log,
)
from visionnode.components.train.precision import autocast, grad_scaler, resolve_precision
from visionnode.components.train.resume import ResumePoint, result_settings, resume_point, run_stamp
from visionnode.components.train.trainer import StopSignal, Trainer, set_loader_epoch

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped by a signal after saving a checkpoint; retry resumes"
RESUME_MODES = ("auto", "never")
LR_PROBE_FILE = "lr_probe.png"
PROBE_HELDOUT_BATCHES = 2  # 64 images at batch 32: as many as validate holds out of its 256-image subset


@dataclass
class TrainResult:
    status: str                      # completed | max_steps | preempted
    out_dir: str
    arch: str
    epochs_completed: int
    steps: int
    steps_this_run: int
    precision: str
    world_size: int
    global_batch: int
    peak_lr: float
    lr_plan: LRPlan                  # the peak LR, its source, warm-up and schedule
    lr_probe: LRProbeResult | None   # the probe `--lr auto` ran (None otherwise)
    init_weights: InitWeights | None
    top1: float | None
    top5: float | None
    val_images: int | None
    top1_ci_low: float | None        # 95 % Wilson interval of top1 over val_images
    top1_ci_high: float | None
    note: str | None                 # one line when top-1 is far below what the LR probe promised
    val_loss: float | None
    initial_loss: float | None
    final_loss: float | None
    images_per_second: float | None  # median over this run's steps (all ranks together)
    training_cores: float | None     # CPU cores busy while its epochs trained (process CPU time / wall)
    checkpoint: str | None           # newest checkpoint written
    resumed_from: str | None
    resumed_step: int | None
    mlflow_run_id: str | None
    registered_model: str | None     # "name/version"
    replica_fingerprints: list[float]
    wall_s: float

    def metrics(self) -> dict[str, float]:
        """The scalar figures a dashboard (KFP Metrics, MLflow) shows;
        figures a run did not produce are left out."""
        names = ("top1", "top5", "top1_ci_low", "top1_ci_high", "val_images", "val_loss", "final_loss",
                 "images_per_second", "training_cores", "steps", "steps_this_run", "wall_s", "peak_lr")
        return {name: float(getattr(self, name)) for name in names if getattr(self, name) is not None}


def local_shards(config: TrainConfig, ctx: DistContext) -> Path:
    """Verified local shards (FFCV needs local files): one download per node, the other ranks reuse it."""
    from visionnode.components.common.storage.shard_cache import materialize_shards

    if ctx.local_rank == 0:
        directory = materialize_shards(config.shards, config.cache_dir)
    barrier(ctx)
    if ctx.local_rank != 0:
        directory = materialize_shards(config.shards, config.cache_dir)
    return Path(directory)


def shard_files(directory: Path, manifest: ShardManifest, split: str) -> list[Path]:
    files = [directory / s.file for s in manifest.shards_for(split) if s.count > 0]
    if not files:
        raise DataError(f"{directory} has no {split} shards",
                        "create shards with `visionnode shard --split both`")
    return files


def announce_resume(resume: ResumePoint, trainer: Trainer, tracker: Tracker, ctx: DistContext) -> None:
    """Continuing another run's training is allowed (identical configuration and data) but never silent."""
    tracker.set_tags({"resumed_from": resume.source, "resumed_because": resume.why})
    if not ctx.is_main:
        return
    done = (f"epoch {trainer.epoch + 1}, step {trainer.step}, {trainer.batch_in_epoch} batches of that epoch "
            "already done")
    if resume.why == "this run's own":
        console.print(f"resumed from {resume.source} (this run's own checkpoint): {done}")
    else:
        console.print(f"[bold yellow]RESUMING ANOTHER RUN'S TRAINING[/] from {resume.source} ({resume.why}): "
                      f"{done}; {max(0, trainer.config.epochs - trainer.epoch)} of {trainer.config.epochs} "
                      "epochs left to train")


def replica_fingerprint(model: nn.Module) -> float:
    """A float64 digest of the parameters; DDP replicas must agree on it exactly."""
    total = torch.zeros((), dtype=torch.float64)
    for index, param in enumerate(model.parameters(), start=1):
        total += index * param.detach().double().abs().sum().cpu()
    return float(total)


def train(config: TrainConfig) -> TrainResult:
    config.validate()
    if config.resume not in RESUME_MODES and not config.resume:
        raise ConfigError("--resume is empty", "use auto, never or a checkpoint path")
    # The SIGTERM handler goes in first (main thread), before the process group, shard download and FFCV/numba
    # threads exist: a pre-emption during set-up is then recorded too, never the default "die with -15".
    with StopSignal() as stop:
        ctx = init_distributed()
        try:
            return _train(config, ctx, stop)
        finally:
            shutdown_distributed(ctx)


def _train(config: TrainConfig, ctx: DistContext, stop: StopSignal) -> TrainResult:
    from visionnode.components.common.data.ffcv_io import train_loader, val_loader

    started = time.perf_counter()
    if ctx.distributed and config.head_epochs:
        # DDP expects a gradient for every parameter it was built with: a frozen backbone stalls its reducer.
        raise ConfigError("--head-epochs freezes the backbone, which a DDP run cannot do mid-run",
                          "fine-tune under torchrun with --head-epochs 0, or warm the head up in one process")
    precision = resolve_precision(config.precision, ctx.device)
    torch.manual_seed(config.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    shard_dir = local_shards(config, ctx)
    manifest = ShardManifest.load(shard_dir)
    train_files, val_files = shard_files(shard_dir, manifest, "train"), shard_files(shard_dir, manifest,
                                                                                    "val")

    model = build_resnet(depth_from_arch(config.arch), manifest.classes.num_classes)
    store = CheckpointStore(config.checkpoint_location, keep=config.keep_checkpoints)
    settings = result_settings(config, ctx.world_size, precision)
    stamp = run_stamp(config, manifest, ctx.world_size, precision)
    resume = resume_point(config, store, stamp, settings)
    source = resume.source if resume else None
    init = None
    if config.init_weights and not source:  # a resumed run's weights come from its checkpoint
        init = load_init_weights(model, config.init_weights, config.arch)
    model = model.to(ctx.device, memory_format=torch.channels_last)
    global_batch = config.batch_size * ctx.world_size
    first_res = resolution_for_epoch(0, config.epochs, config.res_start, config.res_end)
    train_data = train_loader(train_files, config.batch_size, first_res, config.workers,
                              distributed=ctx.distributed, seed=config.seed, augmentation=config.augmentation)
    lr_probe = None
    if config.auto_lr and not source:  # a resumed run keeps the LR its checkpoint's scheduler holds
        lr_probe = probe_on_shards(model, train_data, config, ctx, precision)
        config = replace(config, recipe=replace(config.recipe, lr=lr_probe.suggested_lr),
                         lr_source="probe" if lr_probe.suggested_lr is not None else "batch rule")
    optimizer = build_optimizer(model, config.recipe, global_batch)
    val_data = val_loader(val_files, config.batch_size, config.res_end, config.workers,
                          distributed=ctx.distributed)
    steps_per_epoch = len(train_data)
    if steps_per_epoch == 0:
        raise DataError(f"the train shards hold fewer images than one global batch ({global_batch})",
                        "lower --batch-size or add images")
    total_steps = config.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, config.recipe, steps_per_epoch, total_steps, global_batch)
    lr_plan = config.recipe.lr_plan(global_batch, steps_per_epoch, total_steps, config.resolved_lr_source)
    if ctx.is_main:
        console.print(f"LR plan: {lr_plan.describe()}")

    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model,
                                                  device_ids=[ctx.local_rank] if ctx.device.type == "cuda"
                                                  else None)
    if config.compile:
        net = torch.compile(net)

    tracking = (tracked_run("train", tags={"arch": config.arch, "phase": "train"}, system_metrics=True)
                if ctx.is_main and config.tracking else contextlib.nullcontext(Tracker()))
    with tracking as tracker:
        trainer = Trainer(config=config, ctx=ctx, precision=precision, model=model, net=net,
                          optimizer=optimizer,
                          scheduler=scheduler, scaler=grad_scaler(precision, ctx.device),
                          criterion=nn.CrossEntropyLoss(label_smoothing=config.recipe.label_smoothing),
                          store=store, tracker=tracker, stop=stop, steps_per_epoch=steps_per_epoch,
                          class_index=to_jsonable(manifest.classes),
                          identity={"run": stamp.to_dict(), "result_settings": settings})
        if resume:
            trainer.restore(resume.state, resume.source)
            announce_resume(resume, trainer, tracker, ctx)
        resumed_step = trainer.step if source else None
        start_step = trainer.step
        tracker.log_params(_params(config, ctx, precision, global_batch, optimizer, steps_per_epoch, model))
        tracker.log_params({f"lr_plan.{k}": v for k, v in to_jsonable(lr_plan).items()})
        if lr_probe is not None and ctx.is_main:
            log_lr_probe(lr_probe, config, tracker)
        if init is not None:
            tracker.set_tags({"init_weights": init.source, "init_head_replaced": init.head_replaced})

        status = _run_epochs(trainer, train_data, val_data)
        if status == "preempted":
            trainer.save_checkpoint()
        elif trainer.step != trainer.last_saved_step or trainer.batch_in_epoch:
            trainer.save_checkpoint()

        fingerprints = gather_floats(replica_fingerprint(model), ctx)
        if len(set(fingerprints)) > 1:
            raise IntegrityError(f"DDP replicas disagree on the weights: {fingerprints}",
                                 "report this; the run's checkpoints hold rank 0's weights")
        run_rates = [r[4] for r in trainer.history if r[0] > start_step + 1]
        losses = [r[2] for r in trainer.history]
        result = TrainResult(
            status=status, out_dir=str(config.out_dir), arch=config.arch,
            epochs_completed=trainer.epoch, steps=trainer.step, steps_this_run=trainer.step - start_step,
            precision=precision, world_size=ctx.world_size, global_batch=global_batch,
            peak_lr=trainer.scheduler.base_lrs[0], lr_plan=lr_plan, lr_probe=lr_probe, init_weights=init,
            top1=trainer.last_metrics.get("top1"), top5=trainer.last_metrics.get("top5"),
            val_images=None, top1_ci_low=None, top1_ci_high=None, note=None,
            val_loss=trainer.last_metrics.get("val_loss"),
            initial_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
            images_per_second=statistics.median(run_rates) if run_rates else None,
            training_cores=trainer.training_cores,
            checkpoint=trainer.latest_checkpoint, resumed_from=source, resumed_step=resumed_step,
            mlflow_run_id=tracker.run_id, registered_model=None, replica_fingerprints=fingerprints,
            wall_s=0.0,
        )
        describe_quality(result, trainer.last_metrics)
        if ctx.is_main and status != "preempted":
            write_model(trainer, manifest, {k: v for k, v in to_jsonable(result).items()
                                            if k in ("status", "steps", "epochs_completed", "precision",
                                                     "world_size",
                                                     "global_batch", "peak_lr", "mlflow_run_id")})
            write_train_log(trainer)
            tracker.log_artifact(Path(config.out_dir) / TRAIN_LOG_FILE)
            plot_training_curves(trainer)
            write_confusion_views(trainer)
            result.registered_model = register_model(trainer)
        result.wall_s = round(time.perf_counter() - started, 2)
        tracker.log_metrics({**result.metrics(), "final_top1": result.top1 or 0.0,
                             "final_top5": result.top5 or 0.0,
                             "median_img_per_s": result.images_per_second or 0.0})
        tracker.set_tags({"status": status, **({"quality_note": result.note} if result.note else {})})
    barrier(ctx)
    return result


def describe_quality(result: TrainResult, last_metrics: dict[str, float]) -> None:
    """top-1's 95 % Wilson interval over the val images, and the note when it falls far short of the
    probe's promise; printed on rank 0."""
    images = int(last_metrics.get("val_images", 0))
    if result.top1 is None or not images:
        return
    interval = accuracy_interval(result.top1, images)
    result.val_images, result.top1_ci_low, result.top1_ci_high = images, interval.low, interval.high
    if result.lr_probe is not None:
        result.note = promise_note(result.top1, images, result.lr_probe.promised_top1,
                                   result.lr_probe.heldout_images)
    console.print(f"top-1 {result.top1:.1f} % (95 % CI {interval}, {images} val images)"
                  + (f"\nnote: {result.note}" if result.note else ""))


def probe_on_shards(model: nn.Module, train_data: Any, config: TrainConfig, ctx: DistContext,
                    precision: str) -> LRProbeResult:
    """`--lr auto`: the LR probe (lr_probe.py) on copies of this model with the recipe's optimizer and loss:
    the first train batches are held out, the next ones train every candidate on the same images."""
    if ctx.distributed:
        raise ConfigError("--lr auto runs its LR probe in one process",
                          "run `visionnode validate` (its suggested_lr) or `train --lr auto` on one process, "
                          "then pass that --lr to the distributed run")
    probe = LRProbeConfig(steps=config.lr_probe_steps)
    heldout_batches = PROBE_HELDOUT_BATCHES
    stream = itertools.chain.from_iterable(itertools.repeat(train_data))  # as many epochs as it needs
    batches = [(images.to(ctx.device).contiguous(memory_format=torch.channels_last),
                labels.to(ctx.device).long().view(-1))
               for images, labels in itertools.islice(stream, heldout_batches + probe.steps)]
    with progress_bar(probe.total_steps, f"LR probe {config.arch}", unit="step") as advance:
        result = probe_lr(lambda: copy.deepcopy(model), batches[heldout_batches:], batches[:heldout_batches],
                          config.recipe, probe, precision=lambda: autocast(precision, ctx.device),
                          advance=advance)
    console.print(result.summary_line())
    return result


def log_lr_probe(result: LRProbeResult, config: TrainConfig, tracker: Tracker) -> None:
    tracker.log_metrics(result.metrics())
    figure = lr_probe_figure(result, f"LR probe {config.arch}, batch {config.batch_size}")
    save_figure(figure, Path(config.out_dir) / LR_PROBE_FILE, tracker)
    figure.clear()


def _run_epochs(trainer: Trainer, train_data: Any, val_data: Any) -> str:
    config = trainer.config
    status = "completed"
    while trainer.epoch < config.epochs:
        if config.max_steps and trainer.step >= config.max_steps:
            status = "max_steps"
            break
        resolution = resolution_for_epoch(trainer.epoch, config.epochs, config.res_start, config.res_end)
        if config.head_epochs:
            set_backbone_trainable(trainer.model, trainable=trainer.epoch >= config.head_epochs)
        train_data.set_resolution(resolution)
        set_loader_epoch(train_data, trainer.epoch)
        outcome = trainer.train_one_epoch(train_data)
        if outcome == "preempted":
            return "preempted"
        if outcome == "max_steps" and trainer.batch_in_epoch < trainer.steps_per_epoch:
            status = "max_steps"
            break
        trainer.epoch += 1
        trainer.batch_in_epoch = 0
        trainer.last_metrics = trainer.evaluate(val_data)
        epoch_rates = [r[4] for r in trainer.history if r[1] == trainer.epoch - 1]
        trainer.tracker.log_metrics({**trainer.last_metrics, "resolution": resolution,
                                     "epoch_img_per_s": statistics.median(epoch_rates) if epoch_rates
                                     else 0.0},
                                    step=trainer.epoch)
        if trainer.ctx.is_main:
            console.print(f"epoch {trainer.epoch}/{config.epochs} @ {resolution}px: "
                          f"top-1 {trainer.last_metrics['top1']:.2f}%  top-5 "
                          f"{trainer.last_metrics['top5']:.2f}%")
        trainer.save_checkpoint()
        if outcome == "max_steps":
            status = "max_steps"
            break
    # also when a finished checkpoint was resumed: the outputs (top-1, confusion matrix) come from this model
    mid_epoch_stop = status == "max_steps" and trainer.batch_in_epoch
    if not trainer.last_metrics or trainer.last_confusion is None or mid_epoch_stop:
        trainer.last_metrics = trainer.evaluate(val_data)
        trainer.tracker.log_metrics(trainer.last_metrics, step=trainer.epoch + 1)
    return status


def _params(config: TrainConfig, ctx: DistContext, precision: str, global_batch: int,
            optimizer: torch.optim.Optimizer, steps_per_epoch: int, model: nn.Module) -> dict[str, Any]:
    flat = {k: v for k, v in to_jsonable(config).items() if k != "recipe"}
    flat.update({f"recipe.{k}": v for k, v in to_jsonable(config.recipe).items()})
    flat.update({"precision_resolved": precision, "world_size": ctx.world_size, "global_batch": global_batch,
                 "peak_lr": optimizer.defaults["lr"], "steps_per_epoch": steps_per_epoch,
                 "parameters": count_parameters(model), "device": str(ctx.device),
                 "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                 "hostname": os.uname().nodename})
    return flat
