"""Pipeline parameters: which phase config each one sets, and the check of a run's values by the phases' own
config rules before anything is submitted or started.

A phase's pipeline parameters are its config's declared settings (components/common/adapters/declared.py)
that the pipeline sets, named `<phase>_<setting>`. The check builds each phase's config from the run's
values, as its component will, and runs its `validate()`; a value one phase cannot use is a one-line error
naming the parameter's phase, before KFP, the embedded services or any container sees it. Paths in these
configs are placeholders: what the task will read is only known where it runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from visionnode.components.benchmark.config import BenchmarkConfig
from visionnode.components.common.adapters.declared import Setting, build, component_settings
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.storage.s3 import parse_s3_uri
from visionnode.components.deploy.config import DeployConfig
from visionnode.components.quantize.config import QuantizeConfig
from visionnode.components.shard.config import ShardConfig
from visionnode.components.train.config import TrainConfig
from visionnode.components.transfer.config import PlaceConfig
from visionnode.components.validate.config import ValidateConfig

# The config each phase's component builds, in DAG order.
PHASE_CONFIGS: dict[str, type] = {
    "validate": ValidateConfig, "shard": ShardConfig, "transfer": PlaceConfig, "train": TrainConfig,
    "quantize": QuantizeConfig, "deploy": DeployConfig, "benchmark": BenchmarkConfig,
}
_PLACEHOLDER = Path("/placeholder")


def phase_parameters(phase: str, config: type | None = None) -> dict[str, Setting]:
    """Pipeline parameter name -> the setting of `phase` it feeds (a component input of the setting's name);
    `config`: the phase's config (default: PHASE_CONFIGS')."""
    settings = component_settings(config or PHASE_CONFIGS[phase])
    return {spec.pipeline_name(phase): spec for spec in settings.values()}


def phase_values(phase: str, params: dict[str, Any], config: type | None = None) -> dict[str, Any]:
    """`phase`'s setting values (by setting name) from the pipeline's values (by parameter name)."""
    return {spec.name: params[name] for name, spec in phase_parameters(phase, config).items()}


def check_params(params: dict[str, Any], *, local: bool) -> None:
    """Raise ConfigError for the first parameter that a phase would refuse, or a URI that cannot work."""
    _check_uris(params, local)
    for phase, config in PHASE_CONFIGS.items():
        placeholders = {f.name: _PLACEHOLDER / f.name for f in dataclasses.fields(config)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        try:
            build(config, phase_values(phase, params), **placeholders).validate()
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
