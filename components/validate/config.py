"""validate's settings and their defaults, importable without torch (CLI, component, pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.adapters.declared import at_least, between, check_ranges, one_of, setting
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.training.archs import ARCHS
from visionnode.components.common.training.lr_probe import LRProbeConfig


@dataclass
class ValidateConfig:
    data: Path | str  # ImageNet-layout dir or s3://bucket/prefix; only the subset is read
    subset: int = setting(256, "Images sampled (seeded) from the train split and over-fitted by the smoke "
                          "training.", check=at_least(2))
    image_size: int = setting(64, "Square input side in pixels for smoke training and the profile.",
                              check=between(32, 512))
    steps: int = setting(30, "Smoke-training optimizer steps; the mean loss of the last fifth must fall "
                         "below the first fifth's by the required relative drop.")
    batch_size: int = setting(32, "Images per step (also for the profile); BatchNorm in train mode needs at "
                              "least 2.", pipeline=False, check=at_least(2))
    arch: str = setting("resnet18", "Smoke-training ResNet (the integrity check always uses resnet152).",
                        pipeline=False, check=one_of(*ARCHS))
    lr: float = setting(2e-3, "AdamW learning rate for smoke training (measured to fall reliably within 30 "
                        "steps).", pipeline=False, check=at_least(0))
    window: int = 0  # steps averaged at each end of the loss curve; 0 = steps // 5
    min_relative_drop: float = setting(0.25, "Required relative fall of the loss.", cli="--min-drop",
                                       pipeline=False, check=between(0, 1, low_open=True, high_open=True))
    split: str = setting("train", "Split to sample.", pipeline=False, check=one_of("train", "val"))
    workers: int = setting(2, "DataLoader worker processes.", pipeline=False, check=at_least(0))
    profile_batches: int = setting(8, "Batches timed per profile stage (after one warm-up batch).",
                                   pipeline=False, check=at_least(1))
    profile_arch: str | None = setting(None, "Model for the profile (default: --arch).", pipeline=False,
                                       check=one_of(*ARCHS))
    lr_probe_steps: int = setting(LRProbeConfig.steps, "LR probe: steps each candidate peak LR trains "
                                  "(train's SGD recipe on the smoke subset) before it is judged on held-out "
                                  "loss; 0 skips it.")
    seed: int = setting(0, "Seed for the subset, the model and batch order.", pipeline=False)
    report: Path | None = None  # Markdown report; the loss-curve PNG is written beside it

    def validate(self) -> ValidateConfig:
        """Raise ConfigError for values that cannot work; returns self for chaining."""
        check_ranges(self)
        if self.steps < 2 * max(1, self.effective_window):
            raise ConfigError(
                f"--steps {self.steps} is too few to compare the start and end of the loss curve",
                "use --steps >= 4",
            )
        if self.lr_probe_steps != 0:
            self.lr_probe().checked()
        return self

    def lr_probe(self) -> LRProbeConfig:
        return LRProbeConfig(steps=self.lr_probe_steps)

    @property
    def effective_window(self) -> int:
        return self.window if self.window > 0 else max(1, self.steps // 5)
