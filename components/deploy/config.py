"""deploy's settings and their defaults (Triton model config knobs too), importable without tritonclient."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionnode.components.common.adapters.declared import at_least, between, check_ranges, setting
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.numbers import parse_int_list
from visionnode.components.common.serving.triton import CANDIDATE_SUFFIX, DEFAULT_MODEL_NAME, replica_entries


def candidate_name(model_name: str) -> str:
    """The Triton name a new model is staged and measured under, beside the production name."""
    return model_name + CANDIDATE_SUFFIX


def _batch_sizes(text: str) -> list[int]:
    return parse_int_list(text, "--preferred-batch", "4,8")


def load_timeout_setting() -> Any:
    """How long deploy and promote wait for Triton to load a model."""
    return setting(600.0, "Seconds to wait for Triton to load the model.", cli="--load-timeout",
                   pipeline=False)


@dataclass
class ServingConfig:
    """The few knobs config.pbtxt is generated from (none is a pipeline parameter)."""

    max_batch_size: int = setting(16, "Triton max_batch_size.", pipeline=False, check=at_least(1))
    preferred_batch_sizes: list[int] = setting("4,8,16", "Dynamic batching preferred sizes, comma separated.",
                                               cli="--preferred-batch", parse=_batch_sizes, pipeline=False)
    max_queue_delay_us: int = setting(3_000, "Dynamic batching max queue delay in µs (a longer delay only "
                                      "adds latency).", pipeline=False, check=between(0, 100_000))
    queue_timeout_us: int = setting(2_000_000, "Queued requests older than this many µs are rejected.",
                                    pipeline=False, check=at_least(1))
    max_queue_size: int = setting(64, "Requests queued beyond this are rejected at once (overload).",
                                  pipeline=False, check=at_least(1))
    # Two instances, not one: Triton 2.51 seems to wake its dynamic batcher for a new request only while an
    # instance waits for work (our reading of its source), so with one instance a request that lands just
    # after the previous response waits out the batcher's 500 ms idle timeout (measured: 5 of ~1,300
    # sequential requests, 64 of 2,400 at concurrency 8; none with two; tests/test_deploy.py checks it).
    instances: int = setting(2, "Model instances (KIND_CPU); one alone lets Triton's batcher stall some "
                             "requests ~500 ms.", pipeline=False, check=at_least(1))
    ov_performance_hint: str = "THROUGHPUT"
    ov_num_streams: str = ""              # "": one stream per 4 cores of the serving machine
    ov_threads: int = 0                   # 0 lets OpenVINO use every core

    def validate(self) -> None:
        check_ranges(self)
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ConfigError(f"preferred batch sizes {bad} are outside 1..{self.max_batch_size}")


@dataclass
class DeployConfig:
    model_dir: Path
    repository: str = setting("", "Also publish the repository here (s3://bucket/prefix or a dir); empty: "
                              "only the repository the running Triton reads (from settings).")
    triton_http: str = setting("", "Triton HTTP HOST:PORT; empty: from settings (env / stack.json).",
                               cli="--triton-url")
    triton_grpc: str = setting("", "Triton gRPC HOST:PORT; empty: from settings.", cli="--grpc-url")
    replicas: str = setting("", "Every Triton server to load on: HOST:PORT[,HOST:PORT...], or a headless "
                            "Service HOST:PORT whose DNS A records are the replicas; empty: the HTTP URL "
                            "alone.")
    model_name: str = setting(DEFAULT_MODEL_NAME, "Triton model name the champion serves under; the "
                              "candidate is staged as `<name>_candidate`, the encoded-image front ends as "
                              "`<name>_jpeg`.", cli="--name")
    version: int | None = setting(None, "Model version (default: newest + 1).", pipeline=False)
    shards: str | None = setting(None, "Val shards (dir or s3://) for the answer check; default: seeded "
                                 "random images.", pipeline=False)
    check_images: int = setting(16, "Images compared between Triton and local OpenVINO.", pipeline=False,
                                check=at_least(1))
    load_timeout_s: float = load_timeout_setting()
    serving: ServingConfig = field(default_factory=ServingConfig)

    def validate(self) -> None:
        self.serving.validate()
        check_ranges(self)
        if self.replicas:
            replica_entries(self.replicas)
        if not self.model_name or "/" in self.model_name or self.model_name.endswith(CANDIDATE_SUFFIX):
            raise ConfigError(f"model name '{self.model_name}' is not a valid Triton model name",
                              "use letters, digits, - and _ (e.g. resnet152_int8); `<name>_candidate` is "
                              "where deploy stages a new version")


@dataclass
class PromoteConfig:
    endpoint: Path                 # deploy's summary JSON
    model_dir: Path | None = None  # the quantize output deploy staged (promotion only)
    reason: str = setting("", "Why (e.g. the benchmark's decision); recorded with the outcome.",
                          pipeline=False)
    replicas: str = setting("", "Every Triton server (as deploy's --replicas); default: those deploy loaded "
                            "on (resolved again: pods come and go).", pipeline=False)
    load_timeout_s: float = load_timeout_setting()
