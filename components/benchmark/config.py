"""benchmark's settings and their defaults, importable without tritonclient or numpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visionnode.components.common.errors import ConfigError
from visionnode.components.common.numbers import parse_int_list
from visionnode.components.common.serving.triton import DEFAULT_MODEL_NAME

PROTOCOLS = ("grpc", "http")
DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Slo:
    """The service-level objective a benchmark judges: this throughput with P99 latency within a bound."""

    qps: float
    p99_ms: float


@dataclass
class BenchmarkConfig:
    model: str = DEFAULT_MODEL_NAME
    protocol: str = "grpc"
    triton_url: str = ""              # host:port for `protocol`; "" = from settings
    triton_http: str = ""             # HTTP host:port for metadata/repository calls; "" = from settings
    metrics_url: str = ""             # "" = from settings
    concurrency: list[int] = field(default_factory=lambda: list(DEFAULT_CONCURRENCY))
    rate: float | None = None         # also run one open-loop level at this many requests/s
    duration_s: float = 10.0
    warmup_s: float = 2.0
    max_requests: int = 20_000        # per level
    target_qps: float = 100.0
    target_p99_ms: float = 150.0
    champion: str = ""                # the production model `model` would replace ("" = none to compare)
    max_top1_regression: float = 0.5  # promotion: at most this many top-1 points below the champion
    accuracy_images: int = 1000       # labelled val images both models answer for the top-1 comparison
    shards: str | None = None
    pool_images: int = 64
    # the IR for the OpenVINO baseline; None = fetched from Triton's repository
    model_dir: Path | None = None
    fp32_model: Path | None = None    # train output for the PyTorch eager baseline; None = skipped
    baselines: bool = True
    baseline_seconds: float = 5.0
    baseline_batch: int = 8
    request_timeout_s: float = 10.0
    report_path: Path | None = None   # HTML report; None = beside --json or skipped

    @property
    def slo(self) -> Slo:
        return Slo(self.target_qps, self.target_p99_ms)

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol '{self.protocol}'", "use grpc or http")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"concurrency levels {self.concurrency} must be positive integers",
                              "e.g. 1,2,4,8,16")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.max_requests < 1:
            raise ConfigError("duration must be positive, warm-up non-negative, max requests at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"--rate {self.rate} must be positive")
        if self.target_qps <= 0 or self.target_p99_ms <= 0:
            raise ConfigError("--target-qps and --target-p99-ms must be positive")
        if self.max_top1_regression < 0:
            raise ConfigError(f"--max-top1-regression {self.max_top1_regression:g} is negative",
                              "it is how many top-1 points below the champion a candidate may be, e.g. 0.5")
        if self.accuracy_images < 1:
            raise ConfigError(f"--accuracy-images {self.accuracy_images} must be at least 1")


def parse_levels(text: str) -> list[int]:
    return parse_int_list(text, "--concurrency", "1,2,4,8,16")


DEFAULTS = BenchmarkConfig()
