"""Input-pipeline profile: images/s of loading, of the train step and of both, and the bottleneck."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from visionnode.components.common.data.imagenet import ImageRecord
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.training.archs import depth_from_arch
from visionnode.components.common.training.model import build_resnet
from visionnode.components.validate.config import ValidateConfig
from visionnode.components.validate.data import make_loader, train_transform


@dataclass
class PipelineProfile:
    arch: str
    image_size: int
    batch_size: int
    workers: int
    batches: int
    data_images_per_s: float  # read + decode + augment (DataLoader with workers), no model
    compute_images_per_s: float  # train step on synthetic tensors of the same shape, no data
    combined_images_per_s: float  # both together, as a training loop runs them
    bottleneck: str  # "data" (I/O + decode) or "compute"
    ratio: float  # faster stage rate / slower stage rate
    verdict: str


def profile_pipeline(
    records: Sequence[ImageRecord], num_classes: int, config: ValidateConfig
) -> PipelineProfile:
    """img/s of data alone, train step alone and both together, each timed after one warm-up batch."""
    arch = config.profile_arch or config.arch
    batch = config.batch_size
    torch.manual_seed(config.seed)
    model = build_resnet(depth_from_arch(arch), num_classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step = _train_step(model, optimizer)
    cycled = _cycled(records, batch * (config.profile_batches + 1), config.seed)

    def data_only() -> Iterator[int]:
        for _images, labels, _skipped in make_loader(
            cycled, train_transform(config.image_size), batch, config.workers, shuffle=True, seed=config.seed
        ):
            yield len(labels)

    def compute_only() -> Iterator[int]:
        images = torch.randn(batch, 3, config.image_size, config.image_size)
        labels = torch.randint(0, num_classes, (batch,))
        for _ in range(config.profile_batches + 1):
            step(images, labels)
            yield batch

    def combined() -> Iterator[int]:
        for images, labels, _skipped in make_loader(
            cycled, train_transform(config.image_size), batch, config.workers, shuffle=True, seed=config.seed
        ):
            if len(labels) >= 2:
                step(images, labels)
            yield len(labels)

    with progress_bar(3, "profiling data / compute / both", unit="stage") as advance:
        data_rate = _rate(data_only())
        advance(1)
        compute_rate = _rate(compute_only())
        advance(1)
        combined_rate = _rate(combined())
        advance(1)
    return summarize_profile(arch, config, data_rate, compute_rate, combined_rate)


def summarize_profile(
    arch: str, config: ValidateConfig, data_rate: float, compute_rate: float, combined_rate: float
) -> PipelineProfile:
    bottleneck = "data" if data_rate < compute_rate else "compute"
    slow, fast = sorted((data_rate, compute_rate))
    ratio = fast / slow if slow > 0 else float("inf")
    efficiency = combined_rate / slow if slow > 0 else float("nan")
    if bottleneck == "data":
        verdict = (
            f"I/O + decode bound: the loader delivers {data_rate:,.0f} img/s but the {arch} train step could "
            f"consume {compute_rate:,.0f} img/s ({ratio:.1f}x more); together {combined_rate:,.0f} img/s "
            f"({efficiency:.0%} of the slower stage). Pre-decoded FFCV shards or more loader workers pay off."
        )
    else:
        verdict = (
            f"compute bound: the {arch} train step runs {compute_rate:,.0f} img/s while the loader could "
            f"deliver {data_rate:,.0f} img/s ({ratio:.1f}x more); together {combined_rate:,.0f} img/s "
            f"({efficiency:.0%} of the slower stage). A faster device, not a faster loader, pays off."
        )
    return PipelineProfile(
        arch=arch,
        image_size=config.image_size,
        batch_size=config.batch_size,
        workers=config.workers,
        batches=config.profile_batches,
        data_images_per_s=data_rate,
        compute_images_per_s=compute_rate,
        combined_images_per_s=combined_rate,
        bottleneck=bottleneck,
        ratio=ratio,
        verdict=verdict,
    )


def _train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    loss_fn = nn.CrossEntropyLoss()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _cycled(records: Sequence[ImageRecord], count: int, seed: int) -> list[ImageRecord]:
    """`count` records, repeating the subset as often as needed (the profile must not run out of images)."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[i % len(shuffled)] for i in range(count)]


def _rate(batches: Iterator[int]) -> float:
    """Images per second over all batches but the first (worker start-up and first-call costs excluded)."""
    iterator = iter(batches)
    next(iterator, None)
    started, images = time.perf_counter(), 0
    for count in iterator:
        images += count
    elapsed = time.perf_counter() - started
    return images / elapsed if elapsed > 0 and images else 0.0
