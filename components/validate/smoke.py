"""Smoke training (does the loss fall on a fixed subset?) and the LR probe on the same subset."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from visionnode.components.common.errors import ConfigError
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.tracking import Tracker
from visionnode.components.common.training.archs import depth_from_arch
from visionnode.components.common.training.lr_probe import LRProbeResult, probe_lr
from visionnode.components.common.training.model import BASIC_BLOCK_LAYERS, build_resnet
from visionnode.components.validate.config import ValidateConfig

# The LR probe's model: half of ResNet-18's channels costs a third of its time per step on 2 cores. It prefers
# larger LRs than the full width; the probe's tie rule leans the other way (lr_probe.py, docs/training.md).
PROBE_WIDTH = 32


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


def lr_probe_on_subset(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: ValidateConfig,
    tracker: Tracker | None = None,
    width: int = PROBE_WIDTH,
) -> LRProbeResult:
    """The LR probe (common/training/lr_probe.py) with train's recipe on fresh smoke models over the in-memory
    subset: a seeded quarter of it held out (un-augmented), the rest random-resized-cropped and flipped as
    train's loader does. A ResNet-18 or -34 smoke model is probed at `width` (other depths at 64)."""
    from torchvision.transforms import v2 as T

    from visionnode.components.common.training.recipe import Recipe

    probe = config.lr_probe()
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(labels), generator=generator)
    held = max(2, int(len(labels) * probe.heldout_share))
    heldout_index, train_index = order[:held], order[held:]
    if len(train_index) < 2:
        raise ConfigError(f"the LR probe needs more than {len(labels)} images",
                          "raise --subset (default 256)")
    augment = T.Compose([T.RandomResizedCrop(config.image_size, antialias=True), T.RandomHorizontalFlip()])
    torch.manual_seed(config.seed)
    batches = []
    for index in fixed_batches(len(train_index), config.batch_size, probe.steps, config.seed):
        chosen = train_index[index]
        augmented = torch.stack([augment(image) for image in images[chosen]])
        batches.append((augmented.contiguous(memory_format=torch.channels_last), labels[chosen]))
    heldout = [
        (images[part].contiguous(memory_format=torch.channels_last), labels[part])
        for part in heldout_index.split(config.batch_size)
    ]
    depth = depth_from_arch(config.arch)
    model_width = width if depth in BASIC_BLOCK_LAYERS else 64

    def fresh_model() -> nn.Module:
        torch.manual_seed(config.seed)  # every candidate starts from the same weights
        return build_resnet(depth, num_classes, width=model_width).to(memory_format=torch.channels_last)

    with progress_bar(probe.total_steps, f"LR probe {config.arch}", unit="step") as advance:
        result = probe_lr(fresh_model, batches, heldout, Recipe(), probe, advance=advance)
    if tracker is not None:
        for index, judgement in enumerate(result.judgements):
            tracker.log_metrics(
                {"lr_probe_lr": judgement.lr, "lr_probe_heldout_loss": judgement.heldout_loss}, step=index
            )
    return result
