"""The optimisation recipe (train runs it; validate's LR range test uses the same optimiser): SGD + Nesterov,
label smoothing, no weight decay on BN/bias, warm-up then decay.

Anchors: torchvision's references/classification/train.py (parameter groups without norm/bias decay,
label smoothing 0.1, linear warm-up then cosine) and ffcv-imagenet's train_imagenet.py (per-step schedule,
progressive resizing rounded to multiples of 32).

LR rule (Goyal et al. linear scaling, torchvision's classic ResNet recipe): peak LR = `lr_per_256` x
global_batch / 256, i.e. 0.1 for a global batch of 256, 0.4 for 1,024. An explicit `lr` > 0 overrides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from visionnode.components.common.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where an optimiser is built, so configs stay importable without it
    import torch
    from torch import nn

SCHEDULES = ("cosine", "step")
RESOLUTION_MULTIPLE = 32  # ffcv-imagenet rounds the progressive-resizing resolution to multiples of 32


@dataclass
class Recipe:
    """Optimiser and schedule settings; one source of truth for their defaults."""

    lr: float = 0.0                 # peak LR; 0 means "scaled from the global batch" (see module docstring)
    lr_per_256: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5      # ffcv-imagenet's value for 16-88 epoch ResNet runs
    label_smoothing: float = 0.1
    warmup_epochs: float = 2.0      # linear warm-up from warmup_start_factor x peak
    warmup_start_factor: float = 0.1
    schedule: str = "cosine"        # "cosine" to 0 or "step" (x step_gamma every step_epochs)
    step_epochs: int = 30
    step_gamma: float = 0.1

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown LR schedule '{self.schedule}'", f"use one of {', '.join(SCHEDULES)}")
        if self.lr < 0 or self.lr_per_256 <= 0:
            raise ConfigError(f"learning rate {self.lr} is negative",
                              "use --lr 0 to scale it from the batch size")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("momentum, weight decay or label smoothing is out of range",
                              "use 0 <= momentum < 1, weight decay >= 0, 0 <= label smoothing < 1")

    def peak_lr(self, global_batch: int) -> float:
        return self.lr if self.lr > 0 else self.lr_per_256 * global_batch / 256


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: BN parameters and all biases (1-d tensors) get none."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, recipe: Recipe, global_batch: int) -> torch.optim.SGD:
    import torch

    return torch.optim.SGD(parameter_groups(model, recipe.weight_decay), lr=recipe.peak_lr(global_batch),
                           momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0)


def lr_factor(step: int, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the peak LR before optimiser step `step` (0-based): linear warm-up, then decay."""
    # Short runs keep most of their steps for learning: warm-up takes at most a quarter of them.
    warmup = min(int(recipe.warmup_epochs * steps_per_epoch), total_steps // 4)
    if step < warmup:
        return recipe.warmup_start_factor + (1 - recipe.warmup_start_factor) * step / warmup
    if recipe.schedule == "step":
        return recipe.step_gamma ** (step // max(1, recipe.step_epochs * steps_per_epoch))
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler (call `.step()` after every optimiser step); its state is plain numbers."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, recipe, steps_per_epoch, total_steps))


def resolve_lr(lr: float, suggested_lr: float) -> float:
    """The pipeline's rule: a given LR (> 0) wins; else validate's range-test suggestion (> 0);
    else 0, the batch rule."""
    return lr if lr > 0 else max(suggested_lr, 0.0)


def parse_lr(text: str) -> tuple[bool, float]:
    """`--lr`: 'auto' -> (True, 0.0): an LR range test picks it; a number -> (False, it);
    0 = the batch rule."""
    if str(text).strip().lower() == "auto":
        return True, 0.0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"--lr '{text}' is invalid",
                          "write auto for an LR range test, 0 for the batch rule 0.1 x batch / 256, or an LR "
                          "> 0")
    return False, value


def parse_res_schedule(text: str) -> tuple[int, int]:
    """'160:192' -> (160, 192); a single number means a fixed resolution."""
    parts = str(text).split(":")
    try:
        start, end = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        start = end = None
    if start is None or end is None or not (16 <= start <= end <= 1024):
        raise ConfigError(f"--res-schedule '{text}' is invalid",
                          "write START:END in pixels with 16 <= START <= END, e.g. 160:192")
    return start, end


def resolution_for_epoch(epoch: int, epochs: int, start: int, end: int) -> int:
    """Progressive resizing: linear from `start` (first epoch) to `end` (last), rounded to multiples of 32."""
    if start == end or epochs <= 1:
        return end
    exact = start + (end - start) * epoch / (epochs - 1)
    rounded = int(round(exact / RESOLUTION_MULTIPLE)) * RESOLUTION_MULTIPLE
    return min(end, max(start, rounded))
