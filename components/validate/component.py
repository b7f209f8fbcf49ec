"""KFP v2 adapter for validate: raw images in, Markdown report and Metrics out; failed gate = failed step."""

from typing import NamedTuple

from kfp.dsl import Markdown, Metrics, Output

from visionnode.components.common.adapters.declared import with_setting_inputs
from visionnode.components.common.adapters.kfp import phase_component
from visionnode.components.validate.config import ValidateConfig


@phase_component("validate")
@with_setting_inputs(ValidateConfig)
def validate_op(
    data_uri: str,
    data_digest: str,
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> NamedTuple("ValidateOutputs", [("suggested_lr", float)]):
    """Smoke-train on a subset of the raw images, check ResNet-152's integrity and profile the input pipeline.

    Args:
        data_uri: Raw images in ImageNet layout (`train/<wnid>/*.JPEG`; `val/` optional), an s3://bucket/prefix
            or a directory (a volume). Read where they lie: only the folders of the sampled classes are
            listed and only the subset is downloaded. Unreadable files are skipped and listed in the report.
        data_digest: The fingerprint step's digest of the data listing: it keys this step's cache entry to
            the data (validate lists only its sampled classes, so shard is the step that checks it).
        report: Markdown report: the loss curve (PNG embedded as a data URI so it renders in the KFP UI), the
            architecture check, the profile table with the bottleneck verdict, and every skipped file.
        metrics: Scalars: passed (1/0), images_used, images_skipped, classes_sampled, list_requests,
            loss_first, loss_last, loss_relative_drop,
            resnet152_parameters, gradient_problems, data_images_per_s, compute_images_per_s,
            combined_images_per_s, bottleneck_ratio, wall_seconds; with the LR probe also suggested_lr,
            lr_probe_top1 (the winner's held-out top-1), lr_probe_seconds, lr_probe_steps,
            lr_probe_chance_loss, lr_probe_heldout_images.

    Returns:
        suggested_lr: the LR probe's peak LR for train (0.0 when skipped, or when no candidate learnt
            enough to be ranked); train takes it when its `lr` is auto.
        The step fails (QualityGateError) when the loss does not
        fall or the architecture check fails — after the report and metrics are written.
    """
    settings = dict(locals())
    from pathlib import Path

    from visionnode.components.common.adapters.declared import build
    from visionnode.components.common.adapters.kfp import record_metrics
    from visionnode.components.validate.validate import ValidateConfig, raise_for_gates, run_checks

    result = run_checks(build(ValidateConfig, settings, data=data_uri, report=Path(report.path)))
    record_metrics(metrics, result.metrics())
    report.metadata.update({"passed": result.passed, "bottleneck": result.profile.bottleneck})
    raise_for_gates(result)
    outputs = NamedTuple("ValidateOutputs", [("suggested_lr", float)])
    return outputs(result.lr_probe.metrics()["suggested_lr"] if result.lr_probe is not None else 0.0)
