"""validate's settings and their defaults, importable without torch (CLI, component, pipeline)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.errors import ConfigError
from visionnode.components.common.training.lr_probe import LRProbeConfig


@dataclass
class ValidateConfig:
    data: Path | str  # ImageNet-layout dir or s3://bucket/prefix; only the subset is read
    subset: int = 256  # images decoded for smoke training (random sample, seeded)
    image_size: int = 64  # square side fed to the model, in pixels
    steps: int = 30  # smoke-training optimizer steps
    batch_size: int = 32
    arch: str = "resnet18"  # smoke-training model: the ResNet family at reduced depth (see module doc)
    lr: float = 2e-3  # AdamW; measured to fall reliably within 30 steps (module doc)
    window: int = 0  # steps averaged at each end of the loss curve; 0 = steps // 5
    min_relative_drop: float = 0.25  # last-window mean must be <= (1 - this) x first-window mean
    split: str = "train"
    workers: int = 2  # DataLoader worker processes
    profile_batches: int = 8  # batches timed per profile measurement (after one warm-up batch)
    profile_arch: str | None = None  # model for the compute/combined profile; None = `arch`
    # LR probe: first-round steps per candidate LR (train's SGD recipe); 0 skips it
    lr_probe_steps: int = LRProbeConfig.first_round_steps
    seed: int = 0
    report: Path | None = None  # Markdown report; the loss-curve PNG is written beside it

    def checked(self) -> ValidateConfig:
        """Raise ConfigError for values that cannot work; returns self for chaining."""
        from visionnode.components.common.training.model import depth_from_arch

        depth_from_arch(self.arch)
        depth_from_arch(self.profile_arch or self.arch)
        if self.subset < 2:
            raise ConfigError(f"--subset {self.subset} is too small", "use at least 2 images (default 256)")
        if not 32 <= self.image_size <= 512:
            raise ConfigError(
                f"--image-size {self.image_size} is out of range", "use 32..512 pixels (default 64)"
            )
        if self.batch_size < 2:
            raise ConfigError(
                f"--batch-size {self.batch_size} is too small",
                "BatchNorm in train mode needs at least 2 images per batch",
            )
        if self.steps < 2 * max(1, self.effective_window):
            raise ConfigError(
                f"--steps {self.steps} is too few to compare the start and end of the loss curve",
                "use --steps >= 4 (default 30)",
            )
        if not 0.0 < self.min_relative_drop < 1.0:
            raise ConfigError(
                f"min_relative_drop {self.min_relative_drop} is out of range", "use 0 < value < 1"
            )
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ConfigError(f"--lr {self.lr} is invalid", "use a finite, non-negative learning rate")
        if self.lr_probe_steps != 0:
            self.lr_probe().checked()
        if self.workers < 0 or self.profile_batches < 1:
            raise ConfigError("workers must be >= 0 and profile_batches >= 1")
        return self

    def lr_probe(self) -> LRProbeConfig:
        return LRProbeConfig(first_round_steps=self.lr_probe_steps)

    @property
    def effective_window(self) -> int:
        return self.window if self.window > 0 else max(1, self.steps // 5)


DEFAULTS = ValidateConfig(data=Path("."))
