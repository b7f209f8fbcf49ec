"""Smoke training (does the loss fall on a fixed subset?) and the LR range test on the same subset."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from visionnode.components.common.progress import progress_bar
from visionnode.components.common.tracking import Tracker
from visionnode.components.common.training.lr_range import LRRangeResult, lr_range_test
from visionnode.components.common.training.model import build_resnet, depth_from_arch
from visionnode.components.validate.config import ValidateConfig


@dataclass
class SmokeTrainResult:
    arch: str
    num_classes: int
    images: int
    image_size: int
    batch_size: int
    steps: int
    lr: float
    optimizer: str
    losses: list[float]
    window: int
    first_mean: float
    last_mean: float
    relative_drop: float  # 1 - last_mean / first_mean (nan when the loss is not finite)
    min_relative_drop: float
    trend: str  # "falling", "flat", "rising" or "non-finite"
    passed: bool
    diagnosis: str
    seconds: float


def fixed_batches(count: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """Index batches for `steps` steps: reshuffled each epoch, a 1-image tail dropped (BatchNorm needs 2)."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, count)
    produced = 0
    while produced < steps:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_size):
            batch = order[start : start + batch_size]
            if len(batch) < 2:
                continue
            yield batch
            produced += 1
            if produced == steps:
                return


def smoke_train(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: ValidateConfig,
    corrupt_labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tracker: Tracker | None = None,
) -> SmokeTrainResult:
    """Train `config.arch` on the fixed in-memory subset and judge whether the loss fell.

    `corrupt_labels` (for negative controls) maps each batch's labels before the loss, e.g. a random
    permutation: a healthy pipeline must then *fail* the gate.
    """
    torch.manual_seed(config.seed)
    model = build_resnet(depth_from_arch(config.arch), num_classes).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    started = time.perf_counter()
    with progress_bar(config.steps, f"smoke-training {config.arch}", unit="step") as advance:
        for step, index in enumerate(
            fixed_batches(len(labels), config.batch_size, config.steps, config.seed)
        ):
            targets = labels[index] if corrupt_labels is None else corrupt_labels(labels[index])
            loss = loss_fn(model(images[index]), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.item()))
            if tracker is not None:
                tracker.log_metrics({"smoke_loss": losses[-1]}, step=step)
            advance(1)
    return judge_loss_curve(losses, config, num_classes, len(labels), time.perf_counter() - started)


def judge_loss_curve(
    losses: list[float], config: ValidateConfig, num_classes: int, images: int, seconds: float
) -> SmokeTrainResult:
    window = min(config.effective_window, max(1, len(losses) // 2))
    first, last = _mean(losses[:window]), _mean(losses[-window:])
    finite = all(math.isfinite(v) for v in losses)
    drop = 1.0 - last / first if finite and first > 0 else float("nan")
    if not finite:
        trend = "non-finite"
    elif drop >= config.min_relative_drop:
        trend = "falling"
    elif drop <= -config.min_relative_drop / 2:
        trend = "rising"
    else:
        trend = "flat"
    passed = trend == "falling"
    return SmokeTrainResult(
        arch=config.arch,
        num_classes=num_classes,
        images=images,
        image_size=config.image_size,
        batch_size=min(config.batch_size, images),
        steps=len(losses),
        lr=config.lr,
        optimizer="AdamW",
        losses=losses,
        window=window,
        first_mean=first,
        last_mean=last,
        relative_drop=drop,
        min_relative_drop=config.min_relative_drop,
        trend=trend,
        passed=passed,
        diagnosis=diagnose_loss(trend, losses, first, last, drop, config),
        seconds=seconds,
    )


def diagnose_loss(
    trend: str, losses: list[float], first: float, last: float, drop: float, config: ValidateConfig
) -> str:
    need = f"{config.min_relative_drop:.0%}"
    k = min(config.effective_window, max(1, len(losses) // 2))
    if trend == "falling":
        return (
            f"loss fell {drop:.0%} (mean of first {k} steps {first:.3f} -> last {k} steps {last:.3f}; "
            f"required >= {need})"
        )
    if trend == "non-finite":
        bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        return (
            f"loss became {losses[bad]} at step {bad + 1}: the learning rate ({config.lr:g}) is too high "
            f"or the data holds non-finite values (bad normalisation, corrupt decode)"
        )
    if trend == "rising":
        return (
            f"loss rose {-drop:.0%} ({first:.3f} -> {last:.3f}): training diverges; lower the learning "
            f"rate ({config.lr:g}) or check the optimizer and loss"
        )
    return (
        f"loss is flat: fell only {drop:.0%} ({first:.3f} -> {last:.3f}), less than the required {need} "
        f"in {len(losses)} steps; the learning rate ({config.lr:g}) may be too low or zero, labels may be "
        f"shuffled or misaligned with images, or layers frozen"
    )


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def lr_range_on_subset(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: ValidateConfig,
    tracker: Tracker | None = None,
) -> LRRangeResult:
    """The LR range test with train's optimizer and loss on a fresh smoke model over the in-memory subset,
    each image random-resized-cropped and flipped as train's loader does (un-augmented, the few hundred
    images are memorised within the test and the suggestion comes out several times too high)."""
    from torchvision.transforms import v2 as T

    from visionnode.components.common.training.recipe import Recipe, build_optimizer

    recipe = Recipe()
    range_config = config.lr_range()
    torch.manual_seed(config.seed)
    model = build_resnet(depth_from_arch(config.arch), num_classes).train()
    optimizer = build_optimizer(model, recipe, min(config.batch_size, len(labels)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    batches = fixed_batches(len(labels), config.batch_size, range_config.steps, config.seed)
    augment = T.Compose([T.RandomResizedCrop(config.image_size, antialias=True), T.RandomHorizontalFlip()])

    def step(lr: float) -> float:
        index = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr
        augmented = torch.stack([augment(image) for image in images[index]])
        loss = loss_fn(model(augmented), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.item())

    with progress_bar(range_config.steps, f"LR range test {config.arch}", unit="step") as advance:
        result = lr_range_test(step, range_config, advance)
    if tracker is not None:
        for index, (lr, loss) in enumerate(zip(result.lrs, result.smoothed)):
            tracker.log_metrics({"lr_range_lr": lr, "lr_range_smoothed_loss": loss}, step=index)
    return result
