"""quantize's settings and their defaults, importable without torch or OpenVINO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.errors import ConfigError

PRESETS = ("mixed", "performance")


@dataclass
class QuantizeConfig:
    model_dir: Path                   # train output: model.json (ModelMetadata) + weights.pt
    shards: str                       # local shard dir, remote-manifest dir or s3://bucket/prefix
    out_dir: Path
    calibration_images: int = 300
    max_accuracy_drop: float = 1.0    # top-1 points FP32 -> INT8 allowed before the gate fails
    eval_images: int = 0              # val images for the accuracy report; 0 = all
    batch_size: int = 32              # evaluation batch
    preset: str = "mixed"
    fast_bias_correction: bool = True
    full_int8: bool = False           # also quantize the Adds, stem and projections (faster, less faithful)
    measure: bool = True              # size/RSS/latency/throughput side by side
    threads: int = 2
    perf_batch: int = 8
    perf_seconds: float = 3.0         # per engine and measurement
    cache_dir: Path | None = None     # where remote shards are fetched to

    def validate(self) -> None:
        if self.calibration_images < 1:
            raise ConfigError(f"--calibration-images {self.calibration_images} must be >= 1",
                              "300 is a good default for CNNs")
        if self.eval_images < 0 or self.batch_size < 1 or self.threads < 1 or self.perf_batch < 1:
            raise ConfigError("eval images, batch sizes and threads must be positive")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset '{self.preset}'", f"use one of {', '.join(PRESETS)}")


DEFAULTS = QuantizeConfig(model_dir=Path("."), shards="", out_dir=Path("."))
