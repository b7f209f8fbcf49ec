"""What validate found: the data used, each check, the LR probe and whether the gates passed."""

from __future__ import annotations

from dataclasses import dataclass, field

from visionnode.components.common.artifacts import SkippedFile
from visionnode.components.common.training.lr_probe import LRProbeResult
from visionnode.components.validate.architecture import ArchitectureCheck
from visionnode.components.validate.profile import PipelineProfile
from visionnode.components.validate.smoke import SmokeTrainResult


@dataclass
class ValidateResult:
    data: str
    split: str
    num_classes: int             # class folders in the split
    classes_sampled: int         # the classes the subset was drawn from (only their folders were listed)
    images_listed: int           # files in the sampled classes
    list_requests: int           # S3 listing pages read (0 for a local directory)
    subset_requested: int
    images_used: int
    images_skipped: int
    skipped: list[SkippedFile]
    empty_classes: list[str]
    smoke: SmokeTrainResult
    architecture: ArchitectureCheck
    profile: PipelineProfile
    lr_probe: LRProbeResult | None  # None when skipped (lr_probe_steps 0)
    passed: bool
    failures: list[str] = field(default_factory=list)
    report: str | None = None
    plot: str | None = None
    lr_probe_plot: str | None = None
    mlflow_run_id: str | None = None
    wall_seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """The scalar figures a dashboard (KFP Metrics, MLflow) shows."""
        smoke, arch, profile = self.smoke, self.architecture, self.profile
        return {
            "passed": float(self.passed),
            "images_used": float(self.images_used),
            "classes_sampled": float(self.classes_sampled),
            "list_requests": float(self.list_requests),
            "images_skipped": float(len(self.skipped)),
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
            "wall_seconds": self.wall_seconds,
            **(self.lr_probe.metrics() if self.lr_probe is not None else {}),
        }

