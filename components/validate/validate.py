"""validate: can data + model + loss + optimizer learn, is ResNet-152 intact, and where is the bottleneck?

Three checks, run before any expensive step of the pipeline:

1. Smoke training. A random subset of the raw images is decoded once through the torchvision loader
   (robust decoding: CMYK / grey / PNG-as-JPEG converted, unreadable files skipped and counted) and held in
   memory; a small ResNet of the same family (`arch`, resnet18 by default) then trains `steps` steps over
   those fixed batches. Over-fitting a fixed subset is the classic "can it learn at all" test and keeps the
   verdict independent of loader throughput, which check 3 measures on its own. Gate: the mean loss of the
   last `window` steps must be at least `min_relative_drop` below the mean of the first `window` steps.
   Why not ResNet-152 itself: on 2 CPU cores 30 steps of it take ~10x longer (measured ~80 s vs ~8 s at
   64 px, batch 32); the family, the loss, the optimizer and the labels are the same, and the real
   ResNet-152 graph is checked structurally by check 2.
   Why AdamW 2e-3: measured relative drops over 30 steps (batch 32, 64 px, window 6) on generated data:
   6 classes x 16 images 98 %; 100 classes x 4 images (256 sampled) 36 % (SGD-momentum 0.05: 32 %, AdamW 1e-3:
   28 %); 1000 classes x 1 image 44 % at 1e-3. Negative controls: labels permuted per step 2 %, lr 0 -1 %.
2. Architecture integrity of the real ResNet-152: output (N, 1000), 60,192,808 parameters, and after one
   backward pass every parameter tensor has a finite, non-zero gradient; any that does not is named.
3. Pipeline profile: images/s of read+decode+augment alone (DataLoader with workers), of the train step alone
   (synthetic tensors of the same shape) and of both together, with a verdict naming the bottleneck.
4. Learning-rate range test (components/common/lr_range.py): a fresh smoke model trained with train's own
   optimizer (SGD + Nesterov, label smoothing, train's Recipe) on the in-memory subset while the LR grows
   exponentially; the suggested LR (steepest fall of the smoothed loss) is validate's `suggested_lr`
   output, which train uses when its own LR is 0 ("auto"). Not a gate. Why on the small smoke model, not
   ResNet-152: 40 steps cost ~10 s instead of ~2 min on 2 cores; with zero-initialised residual branches and
   BatchNorm both nets tolerate similar LRs. The LR is found at validate's batch size and image size.
"""

from __future__ import annotations

import base64
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from visionnode.components.common.artifacts import SkippedFile, describe_skipped
from visionnode.components.common.errors import DataError, QualityGateError
from visionnode.components.common.imagenet import ImageRecord, open_imagenet
from visionnode.components.common.images import UnreadableImage, load_rgb
from visionnode.components.common.jsonio import atomic_write_text, to_jsonable
from visionnode.components.common.lr_range import LRRangeResult, lr_range_figure, lr_range_test
from visionnode.components.common.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESNET152_PARAMETERS,
    build_resnet,
    count_parameters,
    depth_from_arch,
)
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.tracking import Tracker, save_figure, tracked_run

from .config import ValidateConfig

IMAGENET_CLASSES = 1000
ARCHITECTURE_UNDER_TEST = "resnet152"
# Train mode BatchNorm needs more than one value per channel; 2 images at 64 px keep the check ~1 s.
ARCH_CHECK_BATCH = 2
ARCH_CHECK_SIZE = 64


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


@dataclass
class GradientProblem:
    parameter: str
    problem: str


@dataclass
class ArchitectureCheck:
    arch: str
    parameters: int
    expected_parameters: int
    output_shape: list[int]
    expected_output_shape: list[int]
    parameter_tensors: int
    gradient_problems: list[GradientProblem]
    passed: bool
    diagnosis: str
    seconds: float


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


@dataclass
class ValidateResult:
    data: str
    split: str
    num_classes: int
    images_found: int
    subset_requested: int
    images_used: int
    images_skipped: int
    skipped: list[SkippedFile]
    empty_classes: list[str]
    smoke: SmokeTrainResult
    architecture: ArchitectureCheck
    profile: PipelineProfile
    lr_range: LRRangeResult | None  # None when skipped (lr_range_steps 0)
    passed: bool
    failures: list[str] = field(default_factory=list)
    report: str | None = None
    plot: str | None = None
    lr_range_plot: str | None = None
    mlflow_run_id: str | None = None
    wall_seconds: float = 0.0


# ----------------------------------------------------------------------------------------------- data


def smoke_transform(image_size: int) -> Callable:
    """Deterministic resize + centre crop: the smoke test must see the same pixels every epoch."""
    from torchvision.transforms import v2 as T

    return T.Compose(
        [
            T.ToImage(),
            T.Resize(image_size, antialias=True),
            T.CenterCrop(image_size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def train_transform(image_size: int) -> Callable:
    """The augmentation a training loader runs (random-resized crop + flip), for the profile."""
    from torchvision.transforms import v2 as T

    return T.Compose(
        [
            T.ToImage(),
            T.RandomResizedCrop(image_size, antialias=True),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class RawImageDataset(Dataset):
    """ImageRecords decoded with images.load_rgb; an unreadable file yields a SkippedFile, not a sample."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | SkippedFile:
        record = self.records[index]
        try:
            image = load_rgb(record.path)
        except UnreadableImage as exc:
            return SkippedFile(str(record.path), exc.reason)
        return self.transform(image), record.label


def collate_skipping(items: list) -> tuple[torch.Tensor, torch.Tensor, list[SkippedFile]]:
    """Batch the decodable samples; pass the skipped files through so the main process can count them."""
    samples = [item for item in items if not isinstance(item, SkippedFile)]
    skipped = [item for item in items if isinstance(item, SkippedFile)]
    if not samples:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return images, labels, skipped


def make_loader(
    records: Sequence[ImageRecord],
    transform: Callable,
    batch_size: int,
    workers: int,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    return DataLoader(
        RawImageDataset(records, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def choose_subset(records: Sequence[ImageRecord], size: int, seed: int) -> list[ImageRecord]:
    """A seeded random sample, so every class can appear and the label prior is that of the dataset."""
    if size >= len(records):
        return list(records)
    return sorted(random.Random(seed).sample(list(records), size), key=lambda r: str(r.path))


def decode_subset(
    records: Sequence[ImageRecord], image_size: int, batch_size: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor, list[SkippedFile]]:
    """Decode every record once through the loader; returns images, labels and the files that failed."""
    images, labels, skipped = [], [], []
    with progress_bar(len(records), "decoding smoke-test subset") as advance:
        for batch_images, batch_labels, batch_skipped in make_loader(
            records, smoke_transform(image_size), batch_size, workers
        ):
            if len(batch_labels):
                images.append(batch_images)
                labels.append(batch_labels)
            skipped.extend(batch_skipped)
            advance(len(batch_labels) + len(batch_skipped))
    if not images:
        return torch.empty(0, 3, image_size, image_size), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(images), torch.cat(labels), skipped


# ------------------------------------------------------------------------------------- smoke training


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


# ----------------------------------------------------------------------------------- LR range test


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
    from visionnode.components.train.recipe import Recipe, build_optimizer

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


# ------------------------------------------------------------------------------ architecture integrity


def check_architecture(
    tamper: Callable[[nn.Module], None] | None = None,
    batch: int = ARCH_CHECK_BATCH,
    image_size: int = ARCH_CHECK_SIZE,
    seed: int = 0,
) -> ArchitectureCheck:
    """One forward/backward pass of the real ResNet-152; names every parameter without a usable gradient.

    `tamper` is applied to the model before the pass (tests use it to freeze a layer or zero a gradient).
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    # zero_init_residual=False here: with the zero-initialised last BN of each block (the training default)
    # every layer inside a residual branch legitimately has an exactly-zero gradient on the first step,
    # which would hide a genuinely disconnected layer.
    model = build_resnet(152, IMAGENET_CLASSES, zero_init_residual=False).train()
    if tamper is not None:
        tamper(model)
    inputs = torch.randn(batch, 3, image_size, image_size)
    targets = torch.randint(0, IMAGENET_CLASSES, (batch,))
    output = model(inputs)
    nn.functional.cross_entropy(output, targets).backward()
    problems = [
        GradientProblem(name, problem)
        for name, problem in ((name, gradient_problem(p)) for name, p in model.named_parameters())
        if problem
    ]
    parameters = count_parameters(model)
    tensors = len(list(model.parameters()))
    expected_shape = [batch, IMAGENET_CLASSES]
    failures = []
    if list(output.shape) != expected_shape:
        failures.append(f"output shape {list(output.shape)} != {expected_shape}")
    if parameters != RESNET152_PARAMETERS:
        failures.append(f"{parameters:,} parameters != {RESNET152_PARAMETERS:,}")
    if problems:
        named = ", ".join(f"{p.parameter} ({p.problem})" for p in problems[:8])
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        failures.append(f"{len(problems)} parameter tensor(s) without a usable gradient: {named}{more}")
    diagnosis = (
        "; ".join(failures)
        if failures
        else (
            f"output {expected_shape}, {parameters:,} parameters, all {tensors} parameter "
            f"tensors have finite, non-zero gradients"
        )
    )
    return ArchitectureCheck(
        arch=ARCHITECTURE_UNDER_TEST,
        parameters=parameters,
        expected_parameters=RESNET152_PARAMETERS,
        output_shape=list(output.shape),
        expected_output_shape=expected_shape,
        parameter_tensors=tensors,
        gradient_problems=problems,
        passed=not failures,
        diagnosis=diagnosis,
        seconds=time.perf_counter() - started,
    )


def gradient_problem(parameter: nn.Parameter) -> str | None:
    if not parameter.requires_grad:
        return "frozen: requires_grad is False"
    if parameter.grad is None:
        return "no gradient: not reached by backward"
    if not torch.isfinite(parameter.grad).all():
        return "non-finite gradient"
    if not parameter.grad.any():
        return "gradient is all zero"
    return None


# ------------------------------------------------------------------------------------------ profiling


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


# ------------------------------------------------------------------------------------- orchestration


def run_checks(config: ValidateConfig) -> ValidateResult:
    """Run the three checks, write the report (when asked), log to MLflow; never raises on a failed gate."""
    config.checked()
    started = time.perf_counter()
    layout = open_imagenet(config.data)
    scan = layout.scan(config.split)
    if not scan.records:
        raise DataError(f"{config.data}/{config.split} holds no images", "every class folder is empty")
    subset = choose_subset(scan.records, config.subset, config.seed)
    images, labels, skipped = decode_subset(subset, config.image_size, config.batch_size, config.workers)
    if len(labels) < 2:
        raise DataError(
            f"only {len(labels)} of {len(subset)} sampled images in {config.data} could be decoded: "
            f"{describe_skipped(skipped, config.data)}",
            "replace or remove the unreadable files; smoke training needs at least 2 images",
        )
    num_classes = layout.classes.num_classes
    with tracked_run("validate", tags={"phase": "validate"}) as tracker:
        tracker.log_params(_params(config, num_classes, len(scan.records)))
        smoke = smoke_train(images, labels, num_classes, config, tracker=tracker)
        architecture = check_architecture(seed=config.seed)
        profile = profile_pipeline(subset, num_classes, config)
        lr_range = (
            lr_range_on_subset(images, labels, num_classes, config, tracker=tracker)
            if config.lr_range_steps
            else None
        )
        failures = gate_failures(smoke, architecture)
        result = ValidateResult(
            data=str(config.data),
            split=config.split,
            num_classes=num_classes,
            images_found=len(scan.records),
            subset_requested=config.subset,
            images_used=len(labels),
            images_skipped=len(skipped),
            skipped=skipped,
            empty_classes=scan.empty_classes,
            smoke=smoke,
            architecture=architecture,
            profile=profile,
            lr_range=lr_range,
            passed=not failures,
            failures=failures,
            mlflow_run_id=tracker.run_id,
        )
        result.wall_seconds = time.perf_counter() - started
        write_outputs(result, config, tracker)
    return result


def gate_failures(smoke: SmokeTrainResult, architecture: ArchitectureCheck) -> list[str]:
    failures = []
    if not smoke.passed:
        failures.append(f"smoke training ({smoke.arch}): {smoke.diagnosis}")
    if not architecture.passed:
        failures.append(f"architecture ({architecture.arch}): {architecture.diagnosis}")
    return failures


def raise_for_gates(result: ValidateResult) -> ValidateResult:
    """Raise QualityGateError naming every failed check; returns the result when all passed."""
    if not result.passed:
        where = f"; report: {result.report}" if result.report else ""
        raise QualityGateError(
            "validation failed: " + " | ".join(result.failures),
            f"fix the cause named above and re-run `visionnode validate`{where}",
        )
    return result


def validate(config: ValidateConfig) -> ValidateResult:
    """run_checks, then fail (QualityGateError) when the loss did not fall or the architecture is broken."""
    return raise_for_gates(run_checks(config))


def write_outputs(result: ValidateResult, config: ValidateConfig, tracker: Tracker) -> None:
    """Loss-curve PNG and Markdown report beside `config.report` (a temp dir when only MLflow wants them)."""
    with tempfile.TemporaryDirectory(prefix="visionnode-validate-") as scratch:
        report_path = config.report or Path(scratch) / "validate_report.md"
        plot_path = report_path.with_name(report_path.stem + "_loss.png")
        figure = loss_curve_figure(result.smoke)
        save_figure(figure, plot_path, tracker)
        _close(figure)
        lr_plot_path = report_path.with_name(report_path.stem + "_lr_range.png")
        if result.lr_range is not None:
            figure = lr_range_figure(
                result.lr_range, f"LR range test {config.arch}, SGD as train runs it, batch {config.batch_size}"
            )
            save_figure(figure, lr_plot_path, tracker)
            _close(figure)
        if config.report is not None:
            result.report, result.plot = str(report_path), str(plot_path)
            result.lr_range_plot = str(lr_plot_path) if result.lr_range is not None else None
        lr_png = lr_plot_path.read_bytes() if result.lr_range is not None else None
        atomic_write_text(report_path, render_report(result, plot_path.read_bytes(), lr_png))
        tracker.log_metrics(summary_metrics(result))
        tracker.set_tags({"validate.passed": result.passed, "validate.bottleneck": result.profile.bottleneck})
        tracker.log_artifact(report_path, artifact_path="report")
        tracker.log_text(_json(result), "validate_result.json")


def summary_metrics(result: ValidateResult) -> dict[str, float]:
    """The scalar figures a dashboard (KFP Metrics, MLflow) shows."""
    smoke, arch, profile = result.smoke, result.architecture, result.profile
    return {
        "passed": float(result.passed),
        "images_used": float(result.images_used),
        "images_skipped": float(len(result.skipped)),
        "loss_first": smoke.first_mean,
        "loss_last": smoke.last_mean,
        "loss_relative_drop": smoke.relative_drop,
        "smoke_seconds": smoke.seconds,
        "resnet152_parameters": float(arch.parameters),
        "gradient_problems": float(len(arch.gradient_problems)),
        "data_images_per_s": profile.data_images_per_s,
        "compute_images_per_s": profile.compute_images_per_s,
        "combined_images_per_s": profile.combined_images_per_s,
        "bottleneck_ratio": profile.ratio,
        "wall_seconds": result.wall_seconds,
        **lr_range_metrics(result.lr_range),
    }


def lr_range_metrics(lr_range: LRRangeResult | None) -> dict[str, float]:
    if lr_range is None:
        return {}
    return {
        "suggested_lr": lr_range.suggested_lr,
        "lr_range_steepest_lr": lr_range.steepest_lr,
        "lr_range_min_loss_lr": lr_range.min_loss_lr,
        "lr_range_seconds": lr_range.seconds,
    }


# ------------------------------------------------------------------------------------------- report


def loss_curve_figure(smoke: SmokeTrainResult) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    steps = list(range(1, len(smoke.losses) + 1))
    axes.plot(steps, smoke.losses, marker=".", color="tab:blue", label="loss per step")
    k = smoke.window
    if math.isfinite(smoke.first_mean) and math.isfinite(smoke.last_mean):
        axes.hlines(smoke.first_mean, 1, k, colors="tab:orange", linewidth=2.5, label=f"mean of first {k}")
        axes.hlines(
            smoke.last_mean,
            len(steps) - k + 1,
            len(steps),
            colors="tab:green",
            linewidth=2.5,
            label=f"mean of last {k}",
        )
        axes.axhline(
            smoke.first_mean * (1 - smoke.min_relative_drop),
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"gate: {smoke.min_relative_drop:.0%} below first",
        )
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss")
    verdict = "PASS" if smoke.passed else f"FAIL ({smoke.trend})"
    axes.set_title(f"smoke training {smoke.arch}, {smoke.image_size}px, {smoke.images} images: {verdict}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def render_report(result: ValidateResult, plot_png: bytes, lr_range_png: bytes | None = None) -> str:
    smoke, arch, profile = result.smoke, result.architecture, result.profile
    status = "PASSED" if result.passed else "FAILED"
    data_uri = "data:image/png;base64," + base64.b64encode(plot_png).decode("ascii")
    lines = [
        f"# validate: {status}",
        "",
        (
            f"Data `{result.data}` ({result.split}): {result.images_found:,} images in "
            f"{result.num_classes:,} classes; "
            f"{result.images_used:,} of a {result.subset_requested:,}-image subset decoded, "
            f"{len(result.skipped)} unreadable skipped; {len(result.empty_classes)} empty class folder(s). "
            f"Wall time {result.wall_seconds:.1f} s."
        ),
        "",
    ]
    if result.failures:
        lines += ["**Failures**", ""] + [f"- {failure}" for failure in result.failures] + [""]
    lines += [
        "## 1. Smoke training",
        "",
        (
            f"{smoke.arch} ({smoke.num_classes} classes, labels = index of the sorted wnid), "
            f"{smoke.optimizer} lr {smoke.lr:g}, batch {smoke.batch_size}, {smoke.image_size} px, "
            f"{smoke.steps} steps over a fixed in-memory subset of {smoke.images} images "
            f"({smoke.seconds:.1f} s)."
        ),
        "",
        (
            f"Gate: mean loss of the last {smoke.window} steps at least {smoke.min_relative_drop:.0%} "
            f"below the mean of the first {smoke.window}. "
            f"**{'PASS' if smoke.passed else 'FAIL'}** — {smoke.diagnosis}."
        ),
        "",
        f"![loss curve]({data_uri})",
        "",
        "| | first steps | last steps | relative drop |",
        "|---|---|---|---|",
        f"| mean loss | {smoke.first_mean:.4f} | {smoke.last_mean:.4f} | {_pct(smoke.relative_drop)} |",
        "",
        "## 2. Architecture integrity (ResNet-152)",
        "",
        "| check | expected | measured |",
        "|---|---|---|",
        f"| output shape | {arch.expected_output_shape} | {arch.output_shape} |",
        f"| parameters | {arch.expected_parameters:,} | {arch.parameters:,} |",
        (
            f"| parameter tensors with a finite, non-zero gradient | {arch.parameter_tensors} | "
            f"{arch.parameter_tensors - len(arch.gradient_problems)} |"
        ),
        "",
        f"**{'PASS' if arch.passed else 'FAIL'}** — {arch.diagnosis}.",
        "",
    ]
    if arch.gradient_problems:
        lines += ["| parameter | problem |", "|---|---|"]
        lines += [f"| `{p.parameter}` | {p.problem} |" for p in arch.gradient_problems] + [""]
    lines += [
        "## 3. Pipeline profile",
        "",
        (
            f"{profile.arch} train step, batch {profile.batch_size}, {profile.image_size} px, "
            f"{profile.workers} loader workers, {profile.batches} timed batches per stage "
            f"(after one warm-up batch)."
        ),
        "",
        "| stage | images/s |",
        "|---|---|",
        f"| read + decode + augment (DataLoader) | {profile.data_images_per_s:,.1f} |",
        f"| train step on synthetic tensors | {profile.compute_images_per_s:,.1f} |",
        f"| both together | {profile.combined_images_per_s:,.1f} |",
        "",
        f"**Bottleneck: {profile.bottleneck}** — {profile.verdict}",
        "",
    ]
    if result.lr_range is not None and lr_range_png is not None:
        lines += render_lr_range(result.lr_range, lr_range_png)
    if result.skipped:
        lines += ["## Skipped files", "", "| file | reason |", "|---|---|"]
        lines += [f"| `{s.path}` | {s.reason} |" for s in result.skipped] + [""]
    if result.empty_classes:
        lines += [f"Empty class folders: {', '.join(f'`{w}`' for w in result.empty_classes)}", ""]
    return "\n".join(lines)


def render_lr_range(lr_range: LRRangeResult, png: bytes) -> list[str]:
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    ending = "stopped when the loss diverged" if lr_range.diverged else "ran every step"
    clamp = " (clamped to the sane band)" if lr_range.clamped else ""
    return [
        "## 4. Learning-rate range test",
        "",
        (
            f"{len(lr_range.lrs)} steps from lr {lr_range.lrs[0]:.2g} to {lr_range.lrs[-1]:.2g}, "
            f"{ending} ({lr_range.seconds:.1f} s). Loss fell fastest at lr {lr_range.steepest_lr:.3g}; "
            f"lowest at {lr_range.min_loss_lr:.3g}."
        ),
        "",
        (
            f"**Suggested LR: {lr_range.suggested_lr:.3g}**{clamp} — train uses it when its `lr` is 0 "
            f"(`visionnode train --lr auto` runs the same test on the shards)."
        ),
        "",
        f"![LR range test]({data_uri})",
        "",
    ]


def _pct(value: float) -> str:
    return f"{value:.1%}" if math.isfinite(value) else str(value)


def _params(config: ValidateConfig, num_classes: int, images_found: int) -> dict[str, Any]:
    params = {k: v for k, v in asdict(config).items() if k != "report"}
    params.update(
        data=str(config.data),
        window=config.effective_window,
        num_classes=num_classes,
        images_found=images_found,
        profile_arch=config.profile_arch or config.arch,
    )
    return params


def _json(result: ValidateResult) -> str:
    import json

    return json.dumps(to_jsonable(result), indent=2, sort_keys=True, default=str)


def _close(figure: Any) -> None:
    figure.clear()
