"""The training loop: one epoch, one evaluation, checkpoint save and restore, the SIGTERM flag."""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from visionnode.components.common.errors import ConfigError, DataError, IntegrityError
from visionnode.components.common.jsonio import to_jsonable
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.tracking import Tracker
from visionnode.components.train.checkpoint import (
    CheckpointStore,
    checkpoint_name,
    restore_rng_states,
    rng_states,
)
from visionnode.components.train.config import TrainConfig
from visionnode.components.train.distributed import DistContext, all_reduce_sum, any_rank, barrier
from visionnode.components.train.precision import autocast

HISTORY_COLUMNS = ("step", "epoch", "loss", "lr", "img_per_s")
VAL_COLUMNS = ("epoch", "top1", "top5", "val_loss")   # one row per evaluation: the accuracy curve


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


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """FFCV draws an epoch's order from (seed, epoch): pin it so a resumed epoch replays the same sample
    order, and skipping the batches already done skips exactly those samples."""
    loader.set_epoch(epoch)


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
    val_history: list[list[float]] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_confusion: torch.Tensor | None = None   # int64 [true, predicted] of the last evaluation
    last_saved_step: int = -1
    latest_checkpoint: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # the run stamp (resume.py), in every checkpoint
    # the training loops' process CPU time (every thread: torch's and the loader's) and wall time
    loop_cpu_s: float = 0.0
    loop_wall_s: float = 0.0
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

    @property
    def training_cores(self) -> float | None:
        """CPU cores busy while the epochs trained: on a CPU, how well loader and compute share it."""
        return round(self.loop_cpu_s / self.loop_wall_s, 2) if self.loop_wall_s else None

    def train_one_epoch(self, loader: Iterable) -> str:
        """Returns "epoch_done", "max_steps" or "preempted"."""
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return self._train_batches(loader)
        finally:
            self.loop_cpu_s += time.process_time() - cpu
            self.loop_wall_s += time.perf_counter() - wall

    def _train_batches(self, loader: Iterable) -> str:
        self.net.train()
        remaining = self.steps_per_epoch - self.batch_in_epoch
        with progress_bar(remaining * self.global_batch,
                          f"epoch {self.epoch + 1}/{self.config.epochs}") as advance:
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
        classes = self.class_index_size
        confusion = torch.zeros(classes * classes, dtype=torch.int64)
        k = min(5, classes)
        for images, labels in loader:
            images = images.to(self.ctx.device,
                               non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = labels.to(self.ctx.device, non_blocking=True).long().view(-1)
            with autocast(self.precision, self.ctx.device):
                logits = self.model(images)
            loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            ranked = logits.topk(k, dim=1).indices
            hits = ranked.eq(labels.view(-1, 1))
            sums += torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), labels.numel(),
                                  loss.item()], dtype=torch.float64)
            confusion += torch.bincount((labels * classes + ranked[:, 0]).cpu(), minlength=classes * classes)
        sums = all_reduce_sum(sums, self.ctx)
        self.last_confusion = all_reduce_sum(confusion, self.ctx).view(classes, classes)
        if sums[2] == 0:
            raise DataError("the val shards yielded no images",
                            "create shards with `visionnode shard --split both`")
        metrics = {"top1": float(100 * sums[0] / sums[2]), "top5": float(100 * sums[1] / sums[2]),
                   "val_loss": float(sums[3] / sums[2]), "val_images": float(sums[2])}
        self.val_history.append([self.epoch, *(metrics[c] for c in VAL_COLUMNS[1:])])
        return metrics

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
            "val_history": torch.tensor(self.val_history, dtype=torch.float64).reshape(-1, len(VAL_COLUMNS)),
            "metrics": dict(self.last_metrics),
            "config": to_jsonable(self.config),
            "classes": self.class_index,
            "arch": self.config.arch,
            "world_size": self.ctx.world_size,
            **self.identity,
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
        if state.get("arch") != self.config.arch or state.get("classes",
                                                              {}).get("wnids") != self.class_index["wnids"]:
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
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.history = state["history"].tolist() if "history" in state else []
        self.val_history = state["val_history"].tolist() if "val_history" in state else []
        self.last_metrics = dict(state.get("metrics", {}))
        self.last_saved_step = self.step
        self.latest_checkpoint = source
        restore_rng_states(state["rng"])
