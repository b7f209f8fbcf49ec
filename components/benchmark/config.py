"""benchmark's settings and their defaults, importable without tritonclient or numpy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.adapters.declared import above, at_least, check_ranges, one_of, setting
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.numbers import parse_int_list
from visionnode.components.common.serving.triton import DEFAULT_MODEL_NAME

PROTOCOLS = ("grpc", "http")


@dataclass(frozen=True)
class Slo:
    """The service-level objective a benchmark judges: this throughput with P99 latency within a bound."""

    qps: float
    p99_ms: float


def parse_levels(text: str) -> list[int]:
    return parse_int_list(text, "--concurrency", "1,4,16")


@dataclass
class BenchmarkConfig:
    model: str = setting(DEFAULT_MODEL_NAME, "Triton model name (the uint8 tensor model).", pipeline=False)
    protocol: str = setting("grpc", "Request protocol.", check=one_of(*PROTOCOLS))
    triton_url: str = setting("", "HOST:PORT for --protocol (default: settings).", pipeline=False)
    triton_http: str = setting("", "Triton's HTTP HOST:PORT for model metadata (default: settings; with a "
                               "gRPC --triton-url alone, the port below it).", pipeline=False)
    metrics_url: str = setting("", "Triton metrics HOST:PORT (default: settings).", pipeline=False)
    concurrency: list[int] = setting("1,2,4,8,16", "Closed-loop concurrency levels, comma separated.",
                                     parse=parse_levels)
    rate: float | None = setting(None, "Also run one open-loop level at this many requests/s.",
                                 pipeline=False, check=above(0))
    duration_s: float = setting(10.0, "Measured seconds per level (after the warm-up).", cli="--duration",
                                check=above(0))
    warmup_s: float = setting(2.0, "Unmeasured warm-up seconds per level.", cli="--warmup", pipeline=False,
                              check=at_least(0))
    max_requests: int = setting(20_000, "At most this many measured requests per level.", pipeline=False,
                                check=at_least(1))
    target_qps: float = setting(100.0, "SLO: throughput target in requests/s.", check=above(0))
    target_p99_ms: float = setting(150.0, "SLO: P99 latency target in milliseconds.", check=above(0))
    champion: str = setting("", "The production model the benchmarked candidate would replace: both answer "
                            "the same labelled val images for the top-1 comparison of the promotion "
                            "decision.", pipeline=False)
    max_top1_regression: float = setting(0.5, "Promotion: the candidate's top-1 may be at most this many "
                                         "percentage points below the champion's (both measured here, on the "
                                         "same labelled val images).", check=at_least(0))
    accuracy_images: int = setting(1000, "Labelled val images both the candidate and the champion answer for "
                                   "the top-1 comparison.", check=at_least(1))
    shards: str | None = setting(None, "Val shards (dir or s3://) for request images.", pipeline=False)
    pool_images: int = 64
    model_dir: Path | None = setting(None, "Quantize output for the OpenVINO baseline (default: the IR "
                                     "Triton serves).", pipeline=False)
    fp32_model: Path | None = setting(None, "Train output for the PyTorch eager FP32 baseline (skipped when "
                                      "absent).", pipeline=False)
    baselines: bool = setting(True, "Measure the in-process baselines.", pipeline=False)
    baseline_seconds: float = 5.0
    baseline_batch: int = 8
    request_timeout_s: float = 10.0
    report_path: Path | None = None   # HTML report; None = beside --json or skipped

    @property
    def slo(self) -> Slo:
        return Slo(self.target_qps, self.target_p99_ms)

    def validate(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"concurrency levels {self.concurrency} must be positive integers",
                              "e.g. 1,2,4,8,16")
        check_ranges(self)
