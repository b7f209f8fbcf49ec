"""What every KFP component adapter shares: its container image and the pipeline-run context."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

from .tracking import PIPELINE_RUN_ENV

IMAGE_PREFIX = os.environ.get("VISIONNODE_IMAGE_PREFIX", "visionnode")


def project_version() -> str:
    try:
        return version("visionnode")
    except PackageNotFoundError:
        return "0.0.0"


def component_image(phase: str) -> str:
    """The image a phase's component runs in: `visionnode/<phase>:<version>` (docker/build.sh builds it)."""
    return f"{IMAGE_PREFIX}/{phase}:{project_version()}"


def enter_pipeline_context(pipeline_run_id: str) -> None:
    """Called first in a component body: nests this phase's MLflow run under the pipeline run's parent."""
    if pipeline_run_id:
        os.environ[PIPELINE_RUN_ENV] = pipeline_run_id
