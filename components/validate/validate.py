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
4. Learning-rate probe (common/training/lr_probe.py): candidate peak LRs (0.03, 0.1, 0.3) each train a
   fresh half-width copy of the smoke model (ResNet-18 with 32-256 channels) with train's own recipe (SGD +
   Nesterov, label smoothing) for 60 steps on three quarters of the in-memory subset, augmented as train's
   loader does; the lowest loss on the held-out quarter wins, unless it is not clearly below chance (then no
   suggestion). Its LR is validate's `suggested_lr` output (0: none), which train uses when its `lr` is auto
   (else the batch rule); the winner's held-out top-1 (`lr_probe_top1`) is what the data promised. Not a
   gate. Why a half-width ResNet-18: it costs a third of the full-width one's time per step on 2 cores, and
   on the panel in benchmarks/bench_lr_panel.py its choice held for the full-width model trained over
   epochs. The LR is found at validate's batch and image size.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from visionnode.components.common.artifacts import SkippedFile, describe_skipped
from visionnode.components.common.data.imagenet import ImageRecord
from visionnode.components.common.errors import DataError, QualityGateError
from visionnode.components.common.jsonio import atomic_write_text, to_jsonable
from visionnode.components.common.tracking import Tracker, save_figure, tracked_run
from visionnode.components.common.training.lr_probe import lr_probe_figure
from visionnode.components.validate.architecture import ArchitectureCheck, check_architecture
from visionnode.components.validate.config import ValidateConfig
from visionnode.components.validate.data import (
    SubsetSample,
    choose_subset,
    decode_subset,
    local_subset,
    sample_subset,
)
from visionnode.components.validate.profile import profile_pipeline, summarize_profile
from visionnode.components.validate.report import close_figure, loss_curve_figure, render_report
from visionnode.components.validate.result import ValidateResult
from visionnode.components.validate.smoke import (
    SmokeTrainResult,
    judge_loss_curve,
    lr_probe_on_subset,
    smoke_train,
)

__all__ = ["ValidateConfig", "ValidateResult", "check_architecture", "choose_subset", "decode_subset",
           "gate_failures", "judge_loss_curve", "lr_probe_on_subset", "raise_for_gates", "run_checks",
           "smoke_train", "summarize_profile", "validate"]


def run_checks(config: ValidateConfig) -> ValidateResult:
    """Run the three checks, write the report (when asked), log to MLflow; never raises on a failed gate."""
    config.validate()
    started = time.perf_counter()
    sample = sample_subset(config.data, config.split, config.subset, config.seed)
    if not sample.records:
        raise DataError(f"{config.data}/{config.split} holds no images",
                        f"the sampled class folders are empty: {', '.join(sample.empty_classes[:5])}")
    with tempfile.TemporaryDirectory(prefix="visionnode-validate-subset-") as scratch:
        # Only the subset is read (for a dataset in S3: downloaded to scratch, nothing else is).
        subset, origins = local_subset(sample.records, Path(scratch))
        return _checks(config, sample, subset, origins, started)


def _checks(config: ValidateConfig, sample: SubsetSample, subset: list[ImageRecord], origins: dict[str, str],
            started: float) -> ValidateResult:
    images, labels, skipped = decode_subset(subset, config.image_size, config.batch_size, config.workers)
    skipped = [SkippedFile(origins.get(s.path, s.path), s.reason) for s in skipped]
    if len(labels) < 2:
        raise DataError(
            f"only {len(labels)} of {len(subset)} sampled images in {config.data} could be decoded: "
            f"{describe_skipped(skipped, config.data)}",
            "replace or remove the unreadable files; smoke training needs at least 2 images",
        )
    num_classes = sample.classes_sampled
    with tracked_run("validate", tags={"phase": "validate"}) as tracker:
        tracker.log_params(_params(config, sample))
        smoke = smoke_train(images, labels, num_classes, config, tracker=tracker)
        architecture = check_architecture(seed=config.seed)
        profile = profile_pipeline(subset, num_classes, config)
        lr_probe = (
            lr_probe_on_subset(images, labels, num_classes, config, tracker=tracker)
            if config.lr_probe_steps
            else None
        )
        failures = gate_failures(smoke, architecture)
        result = ValidateResult(
            data=str(config.data),
            split=config.split,
            num_classes=sample.classes_in_split,
            classes_sampled=sample.classes_sampled,
            images_listed=sample.images_listed,
            list_requests=sample.list_requests,
            subset_requested=config.subset,
            images_used=len(labels),
            images_skipped=len(skipped),
            skipped=skipped,
            empty_classes=sample.empty_classes,
            smoke=smoke,
            architecture=architecture,
            profile=profile,
            lr_probe=lr_probe,
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
        close_figure(figure)
        lr_plot_path = report_path.with_name(report_path.stem + "_lr_probe.png")
        if result.lr_probe is not None:
            figure = lr_probe_figure(
                result.lr_probe,
                f"LR probe {config.arch}, SGD as train runs it, batch {config.batch_size}"
            )
            save_figure(figure, lr_plot_path, tracker)
            close_figure(figure)
        if config.report is not None:
            result.report, result.plot = str(report_path), str(plot_path)
            result.lr_probe_plot = str(lr_plot_path) if result.lr_probe is not None else None
        lr_png = lr_plot_path.read_bytes() if result.lr_probe is not None else None
        atomic_write_text(report_path, render_report(result, plot_path.read_bytes(), lr_png))
        tracker.log_metrics(result.metrics())
        tracker.set_tags({"validate.passed": result.passed, "validate.bottleneck": result.profile.bottleneck})
        tracker.log_artifact(report_path, artifact_path="report")
        tracker.log_text(_json(result), "validate_result.json")


def _params(config: ValidateConfig, sample: SubsetSample) -> dict[str, Any]:
    params = {k: v for k, v in asdict(config).items() if k != "report"}
    params.update(
        data=str(config.data),
        window=config.effective_window,
        num_classes=sample.classes_in_split,
        classes_sampled=sample.classes_sampled,
        images_listed=sample.images_listed,
        profile_arch=config.profile_arch or config.arch,
    )
    return params


def _json(result: ValidateResult) -> str:
    import json

    return json.dumps(to_jsonable(result), indent=2, sort_keys=True, default=str)


