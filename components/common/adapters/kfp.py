"""What every KFP component adapter shares: its container image.

The pipeline run's id reaches a task through its environment (`VISIONNODE_PIPELINE_RUN_ID`, which
common/tracking.py nests MLflow runs by), never through a component input: an input that differs per run
would make every KFP cache key unique (pipeline/pipeline.py sets it from the pod's `pipeline/runid` label).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

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


def record_metrics(metrics: Any, values: Mapping[str, float]) -> None:
    """Log each figure on a KFP `Metrics` output and also write them, as JSON, to its file.

    The file is what makes the step cacheable on one machine: kfp.local's cache treats an entry whose local
    artifact file is missing as a miss (kfp/local/cache.py `_deserialize_artifact`), and a Metrics artifact
    has no file unless the component writes one. In a cluster it is the same figures, downloadable."""
    from visionnode.components.common.jsonio import write_json

    for name, value in values.items():
        metrics.log_metric(name, float(value))
    write_json(metrics.path, {name: float(value) for name, value in values.items()})


def confusion_views(model_dir: str, matrix: Any, pairs: Any) -> None:
    """KFP's views of a model's confusion_matrix.json: the matrix as `ClassificationMetrics` (`matrix`)
    when it has at most MAX_MATRIX_CLASSES classes, the most-confused class pairs as `Markdown` (`pairs`)."""
    import shutil
    from pathlib import Path

    from visionnode.components.common.confusion import CONFUSED_PAIRS_FILE, Confusion
    from visionnode.components.common.jsonio import write_json

    confusion = Confusion.load(Path(model_dir))
    if confusion.readable_as_matrix:
        matrix.log_confusion_matrix(confusion.names, confusion.matrix.tolist())
    # a file behind the artifact, as record_metrics writes one, so a cached step's entry stays valid
    write_json(matrix.path, {"names": list(confusion.names), "matrix": confusion.matrix.tolist()})
    shutil.copyfile(Path(model_dir) / CONFUSED_PAIRS_FILE, pairs.path)
