"""deploy's settings and their defaults (Triton model config knobs too), importable without tritonclient."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visionnode.components.common.errors import ConfigError
from visionnode.components.common.serving.triton import DEFAULT_MODEL_NAME, replica_entries

CANDIDATE_SUFFIX = "_candidate"


def candidate_name(model_name: str) -> str:
    """The Triton name a new model is staged and measured under, beside the production name."""
    return model_name + CANDIDATE_SUFFIX


@dataclass
class ServingConfig:
    """The few knobs config.pbtxt is generated from."""

    max_batch_size: int = 16
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [4, 8, 16])
    max_queue_delay_us: int = 3_000
    queue_timeout_us: int = 2_000_000     # a request waiting longer than this is rejected
    max_queue_size: int = 64              # requests beyond this are rejected at once (overload)
    # Two instances, not one: Triton 2.51 seems to wake its dynamic batcher for a new request only while an
    # instance waits for work (our reading of its source), so with one instance a request that lands just
    # after
    # the previous response waits out the batcher's 500 ms idle timeout (measured: 5 of ~1,300 sequential
    # requests, 64 of 2,400 at concurrency 8; none with two; tests/test_deploy.py checks it).
    instances: int = 2
    ov_performance_hint: str = "THROUGHPUT"
    ov_num_streams: str = ""              # "": one stream per 4 cores of the serving machine
    ov_threads: int = 0                   # 0 lets OpenVINO use every core

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size={self.max_batch_size} must be at least 1")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ConfigError(f"preferred batch sizes {bad} are outside 1..{self.max_batch_size}")
        if not 0 <= self.max_queue_delay_us <= 100_000:
            raise ConfigError(f"max_queue_delay_us={self.max_queue_delay_us} is outside 0..100000",
                              "a longer delay only adds latency")
        if self.queue_timeout_us <= 0 or self.max_queue_size <= 0 or self.instances < 1:
            raise ConfigError("queue timeout, queue size and instance count must be positive")


@dataclass
class DeployConfig:
    model_dir: Path
    # extra place to publish (s3://bucket/prefix or a dir); "" = only Triton's own
    repository: str = ""
    triton_http: str = ""         # "" = from settings (env / stack.json)
    triton_grpc: str = ""
    # every Triton replica to load on: HOST:PORT list or a headless Service name; "" = triton_http alone
    replicas: str = ""
    model_name: str = DEFAULT_MODEL_NAME
    version: int | None = None    # None = one above the newest in the repository
    shards: str | None = None     # val shards for the answer check; None = seeded random images
    check_images: int = 16
    load_timeout_s: float = 600.0
    serving: ServingConfig = field(default_factory=ServingConfig)

    def validate(self) -> None:
        self.serving.validate()
        if self.replicas:
            replica_entries(self.replicas)
        if not self.model_name or "/" in self.model_name or self.model_name.endswith(CANDIDATE_SUFFIX):
            raise ConfigError(f"model name '{self.model_name}' is not a valid Triton model name",
                              "use letters, digits, - and _ (e.g. resnet152_int8); `<name>_candidate` is "
                              "where deploy stages a new version")


DEFAULTS = DeployConfig(model_dir=Path("."))
