"""quantize's settings and their defaults, importable without torch or OpenVINO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.adapters.declared import above, at_least, check_ranges, one_of, setting
from visionnode.components.common.errors import ConfigError

PRESETS = ("mixed", "performance")


@dataclass
class QuantizeConfig:
    model_dir: Path                   # train output: model.json (ModelMetadata) + weights.pt
    shards: str                       # local shard dir, remote-manifest dir or s3://bucket/prefix
    out_dir: Path
    calibration_images: int = setting(300, "Train images used to calibrate the INT8 ranges.",
                                      check=at_least(1))
    max_accuracy_drop: float = setting(1.0, "Largest allowed FP32 -> INT8 top-1 drop in points; the step "
                                       "fails (after writing its outputs and metrics) when the drop is "
                                       "significantly larger: its one-sided 95 % lower confidence bound "
                                       "(paired, exact) exceeds this.")
    eval_images: int | None = setting(None, "Val images for the accuracy report (default: all).",
                                      pipeline=False, check=at_least(1))
    batch_size: int = 32              # evaluation batch
    preset: str = setting("mixed", "NNCF preset: mixed favours accuracy, performance speed.", pipeline=False,
                          check=one_of(*PRESETS))
    fast_bias_correction: bool = setting(True, "NNCF's fast bias correction; the full one costs ~2.5 min "
                                         "more on ResNet-152.", pipeline=False)
    full_int8: bool = setting(False, "Also quantize the residual Adds, the stem and the shortcut "
                              "projections, which compute in FP32 by default: faster (1.1x on an AVX-512 "
                              "VNNI CPU; 1.6x with the PERFORMANCE preset on an AMX Xeon), but INT8 answers "
                              "drift further from FP32 (agreement 94.7 % instead of 99.3 %).")
    measure: bool = setting(True, "Measure size, RSS, latency and throughput.", pipeline=False)
    threads: int = setting(2, "CPU threads for every engine in the measurements.", pipeline=False,
                           check=at_least(1))
    perf_batch: int = 8
    perf_seconds: float = setting(3.0, "Seconds per timing measurement (per engine).", pipeline=False,
                                  check=above(0))
    cache_dir: Path | None = setting(None, "Where remote shards are fetched to.", pipeline=False)

    def validate(self) -> None:
        check_ranges(self)
        if self.batch_size < 1 or self.perf_batch < 1:
            raise ConfigError("batch sizes must be positive")
