"""What every KFP component adapter shares: its container image and the pipeline-run context."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

from visionnode.components.common.tracking import PIPELINE_RUN_ENV

IMAGE_PREFIX = os.environ.get("VISIONNODE_IMAGE_PREFIX", "visionnode")


def project_version() -> str:
    try:
        return version("visionnode")
    except PackageNotFoundError:
        return "0.0.0"


def component_image(phase: str) -> str:
    """The image a phase's component runs in: `visionnode/<phase>:<version>` (docker/build.sh builds it)."""
    return f"{IMAGE_PREFIX}/{phase}:{project_version()}"


def phase_component(phase: str) -> Callable[[Callable[..., Any]], Any]:
    """`@dsl.component` for a phase: runs in the phase's image, which already has kfp and visionnode installed
    (so the generated command does not `pip install kfp` at start-up,
    which would need network in the cluster)."""
    from kfp import dsl

    def decorate(fn: Callable[..., Any]) -> Any:
        return dsl.component(fn, base_image=component_image(phase), install_kfp_package=False)

    return decorate


def enter_pipeline_context(pipeline_run_id: str) -> None:
    """Called first in a component body: nests this phase's MLflow run under the pipeline run's parent."""
    if pipeline_run_id:
        os.environ[PIPELINE_RUN_ENV] = pipeline_run_id
