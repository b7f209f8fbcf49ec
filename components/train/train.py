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
import csv
import itertools
import math
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from visionnode.components.common.artifacts import (MODEL_METADATA_FILE, WEIGHTS_FILE, ModelMetadata,
                                                     Preprocessing, ShardManifest)
from visionnode.components.common.errors import ConfigError, DataError, IntegrityError
from visionnode.components.common.ffcv_io import Augmentation
from visionnode.components.common.jsonio import atomic_path, to_jsonable
from visionnode.components.common.lr_range import (LRRangeConfig, LRRangeResult, lr_range_figure, lr_range_test,
                                                   preserved_state)
from visionnode.components.common.model import build_resnet, count_parameters, depth_from_arch
from visionnode.components.common.progress import console, progress_bar
from visionnode.components.common.tracking import Tracker, save_figure, tracked_run

from .checkpoint import CheckpointStore, checkpoint_name, load_checkpoint, restore_rng_states, rng_states
from .finetune import InitWeights, load_init_weights, set_backbone_trainable
from .distributed import (DistContext, all_reduce_sum, any_rank, barrier, gather_floats, init_distributed,
                          shutdown_distributed)
from .precision import autocast, grad_scaler, resolve_precision
from .recipe import Recipe, build_optimizer, build_scheduler, resolution_for_epoch

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped by a signal after saving a checkpoint; retry resumes"
RESUME_MODES = ("auto", "never")
TRAIN_LOG_FILE = "train_log.csv"
LOSS_CURVE_FILE = "loss_curve.png"
LR_RANGE_FILE = "lr_range.png"
HISTORY_COLUMNS = ("step", "epoch", "loss", "lr", "img_per_s")


@dataclass
class TrainConfig:
    shards: str                      # s3://bucket/prefix, a shard dir or a remote-manifest dir
    out_dir: Path
    epochs: int = 16
    batch_size: int = 64             # per process; the global batch is batch_size x world size
    arch: str = "resnet152"
    res_start: int = 160             # progressive resizing: first epoch's resolution ...
    res_end: int = 192               # ... last epoch's, also the evaluation and serving input size
    precision: str = "auto"
    checkpoint_uri: str = ""         # local dir or s3://...; empty means <out_dir>/checkpoints
    checkpoint_every: int = 0        # optimiser steps between checkpoints (0: only at each epoch end)
    resume: str = "auto"             # auto (newest in checkpoint_uri, if any), never, or a checkpoint path/URI
    compile: bool = False
    workers: int = 2
    max_steps: int = 0               # stop after this many optimiser steps in total (0: run all epochs)
    seed: int = 0
    log_every: int = 10              # steps between MLflow step metrics
    overfit_batches: int = 0         # >0: repeat the first N batches (a sanity check that the model can learn)
    keep_checkpoints: int = 3
    cache_dir: Path | None = None    # where remote shards are cached (default: the transfer phase's)
    registered_model_name: str = ""  # MLflow model registry name; empty means visionnode-<arch>
    tracking: bool = True            # False: no MLflow run even when a tracking URI is configured
    recipe: Recipe = field(default_factory=Recipe)
    auto_lr: bool = False            # peak LR from an LR range test on the train shards (`--lr auto`)
    lr_range_steps: int = 40
    crop_min_scale: float = 0.08     # RandomResizedCrop keeps this..100 % of the image area
    flip: bool = True                # random horizontal flip
    init_weights: str = ""           # state dict (path or s3://) to fine-tune from; empty: random init
    head_epochs: int = 0             # first epochs train only the classifier head (needs init_weights)

    def validate(self) -> None:
        depth_from_arch(self.arch)
        self.recipe.validate()
        if self.epochs < 1 or self.batch_size < 1 or self.workers < 1:
            raise ConfigError("--epochs, --batch-size and --workers must be at least 1")
        if not 16 <= self.res_start <= self.res_end:
            raise ConfigError(f"resolution schedule {self.res_start}:{self.res_end} is invalid",
                              "use 16 <= START <= END")
        if self.checkpoint_every < 0 or self.max_steps < 0 or self.overfit_batches < 0 or self.log_every < 1:
            raise ConfigError("--checkpoint-every, --max-steps and overfit batches must be >= 0")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be at least 1")
        if self.auto_lr:
            if self.recipe.lr > 0:
                raise ConfigError(f"--lr auto and a given LR {self.recipe.lr:g} exclude each other",
                                  "pass one of them")
            LRRangeConfig(steps=self.lr_range_steps).checked()
        if not 0 < self.crop_min_scale <= 1:
            raise ConfigError(f"--crop-min-scale {self.crop_min_scale} is out of range",
                              "use a value above 0 and at most 1: ImageNet's 0.08, up to 1 for no zoom-in")
        if not 0 <= self.head_epochs <= self.epochs:
            raise ConfigError(f"--head-epochs {self.head_epochs} is out of range",
                              f"use 0..{self.epochs} (the number of epochs)")
        if self.head_epochs and not self.init_weights:
            raise ConfigError("--head-epochs trains a new head on pre-trained features",
                              "pass --init-weights too, or --head-epochs 0")

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(min_scale=self.crop_min_scale, flip=self.flip)

    @property
    def checkpoint_location(self) -> str:
        return self.checkpoint_uri or str(Path(self.out_dir) / "checkpoints")

    @property
    def model_name(self) -> str:
        return self.registered_model_name or f"visionnode-{self.arch}"


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
    lr_range: LRRangeResult | None   # the range test `--lr auto` ran (None otherwise)
    init_weights: InitWeights | None
    top1: float | None
    top5: float | None
    val_loss: float | None
    initial_loss: float | None
    final_loss: float | None
    images_per_second: float | None  # median over this run's steps (all ranks together)
    checkpoint: str | None           # newest checkpoint written
    resumed_from: str | None
    resumed_step: int | None
    mlflow_run_id: str | None
    registered_model: str | None     # "name/version"
    replica_fingerprints: list[float]
    wall_s: float


class StopSignal:
    """Records SIGTERM instead of dying mid-step; the training loop checks `requested` between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# -- data ------------------------------------------------------------------------------------------------


def local_shards(config: TrainConfig, ctx: DistContext) -> Path:
    """Verified local shards (FFCV needs local files): one download per node, the other ranks reuse it."""
    from visionnode.components.transfer.transfer import materialize_shards

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


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """FFCV draws an epoch's order from (seed, epoch): pin it so a resumed epoch replays the same sample
    order, and skipping the batches already done skips exactly those samples."""
    loader.set_epoch(epoch)


# -- the trainer -----------------------------------------------------------------------------------------


@dataclass
class Trainer:
    config: TrainConfig
    ctx: DistContext
    precision: str
    model: nn.Module                 # the plain module: state_dict without DDP/compile prefixes
    net: nn.Module                   # what the training step calls (DDP- and/or compile-wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    store: CheckpointStore
    tracker: Tracker
    stop: StopSignal
    steps_per_epoch: int
    class_index: dict[str, Any]
    epoch: int = 0
    batch_in_epoch: int = 0          # batches of `epoch` already trained
    step: int = 0
    history: list[list[float]] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_saved_step: int = -1
    latest_checkpoint: str | None = None
    _overfit_cache: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.ctx.world_size

    def batches(self, loader: Iterable) -> Iterable:
        """This epoch's remaining batches: skips those a resumed checkpoint already trained."""
        if self.config.overfit_batches:
            if not self._overfit_cache:
                self._overfit_cache = list(itertools.islice(loader, self.config.overfit_batches))
            source: Iterable = itertools.cycle(self._overfit_cache)
        else:
            source = loader
        return itertools.islice(source, self.batch_in_epoch, self.steps_per_epoch)

    def train_one_epoch(self, loader: Iterable) -> str:
        """Returns "epoch_done", "max_steps" or "preempted"."""
        self.net.train()
        remaining = self.steps_per_epoch - self.batch_in_epoch
        with progress_bar(remaining * self.global_batch, f"epoch {self.epoch + 1}/{self.config.epochs}") as advance:
            last = time.perf_counter()
            for images, labels in self.batches(loader):
                loss, lr = self.train_step(images, labels)
                now = time.perf_counter()
                self.record_step(loss, lr, self.global_batch / max(now - last, 1e-9))
                last = now
                advance(self.global_batch)
                if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
                if any_rank(self.stop.requested, self.ctx):
                    return "preempted"
                if self.config.max_steps and self.step >= self.config.max_steps:
                    return "max_steps"
        return "epoch_done"

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        images = images.to(self.ctx.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.ctx.device, non_blocking=True).long().view(-1)
        with autocast(self.precision, self.ctx.device):
            loss = self.criterion(self.net(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        self.batch_in_epoch += 1
        value = float(loss.item())
        if not math.isfinite(value):
            raise DataError(f"training loss became {value} at step {self.step}",
                            "lower --lr, or use --precision fp32 to rule out overflow")
        return value, lr

    def record_step(self, loss: float, lr: float, img_per_s: float) -> None:
        self.history.append([self.step, self.epoch, loss, lr, img_per_s])
        if self.step % self.config.log_every == 0 or self.step == 1:
            self.tracker.log_metrics({"train_loss": loss, "lr": lr, "img_per_s": img_per_s}, step=self.step)

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> dict[str, float]:
        """Top-1/top-5 and loss on the val shards, summed over all ranks."""
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64)  # top-1 hits, top-5 hits, images, loss sum
        k = min(5, self.class_index_size)
        for images, labels in loader:
            images = images.to(self.ctx.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = labels.to(self.ctx.device, non_blocking=True).long().view(-1)
            with autocast(self.precision, self.ctx.device):
                logits = self.model(images)
            loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            hits = logits.topk(k, dim=1).indices.eq(labels.view(-1, 1))
            sums += torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), labels.numel(),
                                  loss.item()], dtype=torch.float64)
        sums = all_reduce_sum(sums, self.ctx)
        if sums[2] == 0:
            raise DataError("the val shards yielded no images", "create shards with `visionnode shard --split both`")
        return {"top1": float(100 * sums[0] / sums[2]), "top5": float(100 * sums[1] / sums[2]),
                "val_loss": float(sums[3] / sums[2]), "val_images": float(sums[2])}

    @property
    def class_index_size(self) -> int:
        return len(self.class_index["wnids"])

    # -- checkpoints -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": rng_states(),
            "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, len(HISTORY_COLUMNS)),
            "metrics": dict(self.last_metrics),
            "config": to_jsonable(self.config),
            "classes": self.class_index,
            "arch": self.config.arch,
            "world_size": self.ctx.world_size,
        }

    def save_checkpoint(self) -> None:
        if self.step == self.last_saved_step and self.batch_in_epoch != 0:
            return
        if self.ctx.is_main:
            self.latest_checkpoint = self.store.save(self.state(), checkpoint_name(self.epoch, self.step))
            self.tracker.set_tags({"latest_checkpoint": self.latest_checkpoint})
        self.last_saved_step = self.step
        barrier(self.ctx)

    def restore(self, state: dict[str, Any], source: str) -> None:
        if state.get("arch") != self.config.arch or state.get("classes", {}).get("wnids") != self.class_index["wnids"]:
            raise ConfigError(f"checkpoint {source} is for {state.get('arch')} with other classes",
                              "use a --checkpoint-uri of its own per model and dataset, or --resume never")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise IntegrityError(f"checkpoint {source} does not fit this model/recipe ({str(exc)[:120]})",
                                 "resume with the settings it was written with, or --resume never") from None
        self.epoch, self.step, self.batch_in_epoch = int(state["epoch"]), int(state["step"]), int(state["batch_in_epoch"])
        self.history = state["history"].tolist() if "history" in state else []
        self.last_metrics = dict(state.get("metrics", {}))
        self.last_saved_step = self.step
        self.latest_checkpoint = source
        restore_rng_states(state["rng"])


def default_checkpoint_uri(shards: Path, pipeline_run_id: str) -> str:
    """Beside the remote shards in the same bucket (survives a retried pod), else a local dir in the state dir."""
    from visionnode.components.common.settings import state_dir

    run = pipeline_run_id or "adhoc"
    manifest_file = Path(shards) / "manifest.json"
    base_uri = ShardManifest.load(manifest_file).base_uri if manifest_file.is_file() else None
    if base_uri:
        from visionnode.components.common.storage import S3Location, parse_s3_uri

        loc = parse_s3_uri(base_uri.rstrip("/"))
        parent = S3Location(loc.bucket, loc.key.rsplit("/", 1)[0] if "/" in loc.key else "")
        return parent.child(f"checkpoints/{run}").uri
    return str(state_dir() / "checkpoints" / run)


def resume_source(config: TrainConfig, store: CheckpointStore) -> str | None:
    if config.resume == "never":
        return None
    if config.resume == "auto":
        return store.latest()
    return config.resume


# -- outputs ---------------------------------------------------------------------------------------------


def resize_size_for(input_size: int) -> int:
    """Resize-then-centre-crop ratio 224/256, as the ImageNet evaluation protocol (and FFCV's val loader)."""
    return int(round(input_size * 256 / 224))


def write_model(trainer: Trainer, manifest: ShardManifest, result_fields: dict[str, Any]) -> Path:
    out = Path(trainer.config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        torch.save(weights, tmp)
    ModelMetadata(
        arch=trainer.config.arch,
        num_classes=manifest.classes.num_classes,
        classes=manifest.classes,
        preprocessing=Preprocessing(input_size=trainer.config.res_end,
                                    resize_size=resize_size_for(trainer.config.res_end)),
        metrics={k: v for k, v in trainer.last_metrics.items()},
        training={"config": to_jsonable(trainer.config), **result_fields},
    ).save(out)
    return out


def write_train_log(trainer: Trainer) -> Path:
    path = Path(trainer.config.out_dir) / TRAIN_LOG_FILE
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HISTORY_COLUMNS)
        writer.writerows([[int(r[0]), int(r[1]), r[2], r[3], r[4]] for r in trainer.history])
    return path


def plot_loss_curve(trainer: Trainer) -> Path | None:
    if not trainer.history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r[0] for r in trainer.history]
    losses = [r[2] for r in trainer.history]
    window = max(1, len(losses) // 50)
    smooth = [statistics.fmean(losses[max(0, i - window + 1): i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.3, label="train loss")
    ax.plot(steps, smooth, label=f"moving mean ({window} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (label smoothing)")
    ax.set_title(f"{trainer.config.arch}: training loss")
    ax.legend()
    path = save_figure(fig, Path(trainer.config.out_dir) / LOSS_CURVE_FILE, trainer.tracker)
    plt.close(fig)
    return path


def register_model(trainer: Trainer) -> str | None:
    """Log weights.pt + model.json as an MLflow 3 logged model of this run and register it as a new version."""
    tracker = trainer.tracker
    if not tracker.enabled:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    out = Path(trainer.config.out_dir)
    name = trainer.config.model_name
    metrics = {k: v for k, v in trainer.last_metrics.items() if isinstance(v, (int, float))}
    logged = mlflow.initialize_logged_model(name=name, source_run_id=tracker.run_id, model_type="image-classifier",
                                            params={"arch": trainer.config.arch})
    client = mlflow.MlflowClient()
    for file_name in (WEIGHTS_FILE, MODEL_METADATA_FILE):
        client.log_model_artifact(logged.model_id, str(out / file_name))
    if metrics:
        mlflow.log_metrics(metrics, model_id=logged.model_id, run_id=tracker.run_id)
    mlflow.finalize_logged_model(logged.model_id, "READY")
    try:
        client.create_registered_model(name, description="VisionNode ResNet classifier (weights.pt + model.json)")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=tracker.run_id,
                                          model_id=logged.model_id,
                                          tags={"top1": str(trainer.last_metrics.get("top1", ""))})
    return f"{name}/{version.version}"


def replica_fingerprint(model: nn.Module) -> float:
    """A float64 digest of the parameters; DDP replicas must agree on it exactly."""
    total = torch.zeros((), dtype=torch.float64)
    for index, param in enumerate(model.parameters(), start=1):
        total += index * param.detach().double().abs().sum().cpu()
    return float(total)


# -- the entry point -------------------------------------------------------------------------------------


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
    from visionnode.components.common.ffcv_io import train_loader, val_loader

    started = time.perf_counter()
    if ctx.distributed and config.head_epochs:
        # DDP expects a gradient for every parameter it was built with: a frozen backbone stalls its reducer.
        raise ConfigError("--head-epochs freezes the backbone, which a DDP run cannot do mid-run",
                          "fine-tune under torchrun with --head-epochs 0, or warm the head up in one process")
    precision = resolve_precision(config.precision, ctx.device)
    torch.manual_seed(config.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    shard_dir = local_shards(config, ctx)
    manifest = ShardManifest.load(shard_dir)
    train_files, val_files = shard_files(shard_dir, manifest, "train"), shard_files(shard_dir, manifest, "val")

    model = build_resnet(depth_from_arch(config.arch), manifest.classes.num_classes)
    store = CheckpointStore(config.checkpoint_location, keep=config.keep_checkpoints)
    source = resume_source(config, store)
    init = None
    if config.init_weights and not source:  # a resumed run's weights come from its checkpoint
        init = load_init_weights(model, config.init_weights, config.arch)
    model = model.to(ctx.device, memory_format=torch.channels_last)
    global_batch = config.batch_size * ctx.world_size
    first_res = resolution_for_epoch(0, config.epochs, config.res_start, config.res_end)
    train_data = train_loader(train_files, config.batch_size, first_res, config.workers,
                              distributed=ctx.distributed, seed=config.seed, augmentation=config.augmentation)
    lr_range = None
    if config.auto_lr and not source:  # a resumed run keeps the LR its checkpoint's scheduler holds
        lr_range = range_test_on_shards(model, train_data, config, ctx, precision)
        config = replace(config, recipe=replace(config.recipe, lr=lr_range.suggested_lr))
    optimizer = build_optimizer(model, config.recipe, global_batch)
    val_data = val_loader(val_files, config.batch_size, config.res_end, config.workers,
                          distributed=ctx.distributed)
    steps_per_epoch = len(train_data)
    if steps_per_epoch == 0:
        raise DataError(f"the train shards hold fewer images than one global batch ({global_batch})",
                        "lower --batch-size or add images")
    scheduler = build_scheduler(optimizer, config.recipe, steps_per_epoch, config.epochs * steps_per_epoch)

    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    tracking = (tracked_run("train", tags={"arch": config.arch, "phase": "train"})
                if ctx.is_main and config.tracking else contextlib.nullcontext(Tracker()))
    with tracking as tracker:
        trainer = Trainer(config=config, ctx=ctx, precision=precision, model=model, net=net, optimizer=optimizer,
                          scheduler=scheduler, scaler=grad_scaler(precision, ctx.device),
                          criterion=nn.CrossEntropyLoss(label_smoothing=config.recipe.label_smoothing),
                          store=store, tracker=tracker, stop=stop, steps_per_epoch=steps_per_epoch,
                          class_index=to_jsonable(manifest.classes))
        if source:
            trainer.restore(load_checkpoint(source), source)
            if ctx.is_main:
                console.print(f"resumed from {source}: epoch {trainer.epoch + 1}, step {trainer.step}, "
                              f"{trainer.batch_in_epoch} batches of that epoch already done")
        resumed_step = trainer.step if source else None
        start_step = trainer.step
        tracker.log_params(_params(config, ctx, precision, global_batch, optimizer, steps_per_epoch, model))
        if lr_range is not None and ctx.is_main:
            log_lr_range(lr_range, config, tracker)
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
            peak_lr=trainer.scheduler.base_lrs[0], lr_range=lr_range, init_weights=init,
            top1=trainer.last_metrics.get("top1"), top5=trainer.last_metrics.get("top5"),
            val_loss=trainer.last_metrics.get("val_loss"),
            initial_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
            images_per_second=statistics.median(run_rates) if run_rates else None,
            checkpoint=trainer.latest_checkpoint, resumed_from=source, resumed_step=resumed_step,
            mlflow_run_id=tracker.run_id, registered_model=None, replica_fingerprints=fingerprints,
            wall_s=0.0,
        )
        if ctx.is_main and status != "preempted":
            write_model(trainer, manifest, {k: v for k, v in to_jsonable(result).items()
                                            if k in ("status", "steps", "epochs_completed", "precision", "world_size",
                                                     "global_batch", "peak_lr", "mlflow_run_id")})
            write_train_log(trainer)
            tracker.log_artifact(Path(config.out_dir) / TRAIN_LOG_FILE)
            plot_loss_curve(trainer)
            result.registered_model = register_model(trainer)
        result.wall_s = round(time.perf_counter() - started, 2)
        tracker.log_metrics({"final_top1": result.top1 or 0.0, "final_top5": result.top5 or 0.0,
                             "median_img_per_s": result.images_per_second or 0.0})
        tracker.set_tags({"status": status})
    barrier(ctx)
    return result


def range_test_on_shards(model: nn.Module, train_data: Any, config: TrainConfig, ctx: DistContext,
                         precision: str) -> LRRangeResult:
    """`--lr auto`: the LR range test on this model and the train shards, with the recipe's optimizer and
    loss; the model's weights (and BN statistics) are restored afterwards."""
    if ctx.distributed:
        raise ConfigError("--lr auto runs its range test in one process",
                          "run `visionnode validate` (its suggested_lr) or `train --lr auto` on one process, "
                          "then pass that --lr to the distributed run")
    range_config = LRRangeConfig(steps=config.lr_range_steps)
    optimizer = build_optimizer(model, config.recipe, config.batch_size)
    scaler = grad_scaler(precision, ctx.device)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.recipe.label_smoothing)
    batches = itertools.chain.from_iterable(itertools.repeat(train_data))  # as many epochs as the steps need

    def step(lr: float) -> float:
        images, labels = next(batches)
        images = images.to(ctx.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(ctx.device, non_blocking=True).long().view(-1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(precision, ctx.device):
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.item())

    model.train()
    with preserved_state(model), progress_bar(range_config.steps, f"LR range test {config.arch}",
                                              unit="step") as advance:
        result = lr_range_test(step, range_config, advance)
    console.print(f"LR range test: suggested peak LR {result.suggested_lr:.3g} "
                  f"(steepest fall at {result.steepest_lr:.3g}, {result.seconds:.1f} s)")
    return result


def log_lr_range(result: LRRangeResult, config: TrainConfig, tracker: Tracker) -> None:
    tracker.log_metrics({"suggested_lr": result.suggested_lr, "lr_range_seconds": result.seconds})
    figure = lr_range_figure(result, f"LR range test {config.arch}, batch {config.batch_size}")
    save_figure(figure, Path(config.out_dir) / LR_RANGE_FILE, tracker)
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
                                     "epoch_img_per_s": statistics.median(epoch_rates) if epoch_rates else 0.0},
                                    step=trainer.epoch)
        if trainer.ctx.is_main:
            console.print(f"epoch {trainer.epoch}/{config.epochs} @ {resolution}px: "
                          f"top-1 {trainer.last_metrics['top1']:.2f}%  top-5 {trainer.last_metrics['top5']:.2f}%")
        trainer.save_checkpoint()
        if outcome == "max_steps":
            status = "max_steps"
            break
    if not trainer.last_metrics or status == "max_steps" and trainer.batch_in_epoch:
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
