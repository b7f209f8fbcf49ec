"""Pipeline parameters checked by the phases' own config rules before anything is submitted or started.

Each phase builds the config object its component would build from the same parameters and runs its
`validate()`; a value one phase cannot use is a one-line error naming the parameter's phase, before KFP,
the embedded services or any container sees it. Paths in these configs are placeholders: what the task
will read is only known where it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from visionnode.components.common.errors import ConfigError
from visionnode.components.common.storage.s3 import parse_s3_uri

_PLACEHOLDER = Path("/placeholder")


def check_params(params: dict[str, Any], *, local: bool) -> None:
    """Raise ConfigError for the first parameter that a phase would refuse, or a URI that cannot work."""
    _check_uris(params, local)
    for phase, check in PHASE_CHECKS.items():
        try:
            check(params)
        except ConfigError as exc:
            raise ConfigError(f"pipeline parameter refused by {phase}: {exc.problem}", exc.hint) from None


def _check_uris(params: dict[str, Any], local: bool) -> None:
    data_uri = str(params.get("data_uri", ""))
    if not local and (urlparse(data_uri).scheme != "s3" or not urlparse(data_uri).netloc):
        raise ConfigError(f"data_uri {data_uri!r} is not a URI the cluster's steps can read in place",
                          "use s3://bucket/prefix (ImageNet layout) on the store the S3 Secret names")
    for name in ("shard_store_uri", "transfer_destination", "train_checkpoint_uri"):
        if params.get(name):
            try:
                parse_s3_uri(params[name])
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc.problem}", exc.hint) from None


def _validate(params: dict[str, Any]) -> None:
    from visionnode.components.validate.config import ValidateConfig

    ValidateConfig(data=_PLACEHOLDER, subset=params["validate_subset"],
                   image_size=params["validate_image_size"],
                   steps=params["validate_steps"], lr_probe_steps=params["validate_lr_probe_steps"]).checked()


def _shard(params: dict[str, Any]) -> None:
    from visionnode.components.shard.config import ShardConfig

    ShardConfig(data=_PLACEHOLDER / "data", out=_PLACEHOLDER / "shards",
                images_per_shard=params["shard_images_per_shard"],
                max_resolution=params["shard_max_resolution"], jpeg_quality=params["shard_jpeg_quality"],
                workers=params["shard_workers"]).validate()


def _transfer(params: dict[str, Any]) -> None:
    from visionnode.components.transfer.config import PlaceConfig

    PlaceConfig(_PLACEHOLDER, params["transfer_destination"],
                concurrency=params["transfer_concurrency"]).validate()


def _train(params: dict[str, Any]) -> None:
    from visionnode.components.common.training.recipe import Recipe, parse_res_schedule, resolve_lr
    from visionnode.components.train.config import TrainConfig

    res_start, res_end = parse_res_schedule(params["train_res_schedule"])
    TrainConfig(shards="", out_dir=_PLACEHOLDER, epochs=params["train_epochs"],
                batch_size=params["train_batch_size"], arch=params["train_arch"], res_start=res_start,
                res_end=res_end, precision=params["train_precision"],
                workers=params["train_workers"], recipe=Recipe(lr=resolve_lr(params["train_lr"], 0.0)[0]),
                crop_min_scale=params["train_crop_min_scale"],
                flip=params["train_flip"], init_weights=params["train_init_weights"],
                head_epochs=params["train_head_epochs"], max_steps=params["train_max_steps"]).validate()


def _quantize(params: dict[str, Any]) -> None:
    from visionnode.components.quantize.config import QuantizeConfig

    QuantizeConfig(_PLACEHOLDER, "", _PLACEHOLDER, calibration_images=params["quantize_calibration_images"],
                   max_accuracy_drop=params["quantize_max_accuracy_drop"],
                   full_int8=params["quantize_full_int8"]).validate()


def _deploy(params: dict[str, Any]) -> None:
    from visionnode.components.deploy.config import DeployConfig

    DeployConfig(_PLACEHOLDER, repository=params["deploy_repository"], replicas=params["deploy_replicas"],
                 model_name=params["deploy_model_name"]).validate()


def _benchmark(params: dict[str, Any]) -> None:
    from visionnode.components.benchmark.config import BenchmarkConfig, parse_levels

    BenchmarkConfig(model=params["deploy_model_name"], protocol=params["benchmark_protocol"],
                    concurrency=parse_levels(params["benchmark_concurrency"]),
                    duration_s=params["benchmark_duration_s"], target_qps=params["benchmark_target_qps"],
                    target_p99_ms=params["benchmark_target_p99_ms"],
                    max_top1_regression=params["benchmark_max_top1_regression"],
                    accuracy_images=params["benchmark_accuracy_images"]).validate()


PHASE_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "validate": _validate, "shard": _shard, "transfer": _transfer, "train": _train,
    "quantize": _quantize, "deploy": _deploy, "benchmark": _benchmark,
}
