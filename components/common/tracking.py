"""MLflow run handling in one place.

`tracked_run(...)` opens an MLflow run (nested under a parent run when one is given or named in
`VISIONNODE_PARENT_RUN_ID`) and yields a `Tracker`. With no tracking URI configured it yields a tracker
whose methods do nothing, so phase code logs unconditionally and never checks.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visionnode.components.common.errors import ServiceError
from visionnode.components.common.progress import PROBE_TIMEOUT_S, waiting_for
from visionnode.components.common.settings import resolve_endpoints

DEFAULT_EXPERIMENT = "visionnode"
PARENT_RUN_ENV = "VISIONNODE_PARENT_RUN_ID"
PIPELINE_RUN_ENV = "VISIONNODE_PIPELINE_RUN_ID"
PIPELINE_RUN_TAG = "visionnode.pipeline_run_id"
# MLflow 3's UI opens an experiment without this tag on its GenAI ("Evaluations") view. In 3.17 a browser that
# never chose a view still starts in the GenAI one whatever the tag says, so the links we print also ask for
# the model-training view.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
TRAINING_VIEW_QUERY = "workflowType=machine_learning"
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true"}

# MLflow's telemetry starts a thread at import that, when it cannot reach its config URL (never, from a
# cluster or CI box), removes an environment variable while requests may be iterating os.environ in the
# main thread: a run failed that way (KeyError '_MLFLOW_TELEMETRY_SESSION_ID'). It stays off unless the
# user sets MLFLOW_DISABLE_TELEMETRY=false; set before anything here imports mlflow.
for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)


class Tracker:
    """Logging calls for one run; every method is a no-op when `run_id` is None."""

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None,
                 parent_run_id: str | None = None) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id   # the pipeline run's parent run, when this run is nested

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @property
    def run_url(self) -> str | None:
        if not self.enabled or not self.tracking_uri or not self.tracking_uri.startswith("http"):
            return None
        import mlflow

        run = mlflow.get_run(self.run_id)
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{self.run_id}" \
            f"?{TRAINING_VIEW_QUERY}"

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_params({k: _short(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.enabled:
            import mlflow

            numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
            if numeric:
                mlflow.log_metrics(numeric, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def tag_parent(self, tags: Mapping[str, Any]) -> None:
        """Tags on the pipeline's parent run (what the whole run decided, e.g. the promotion outcome)."""
        if self.enabled and self.parent_run_id:
            import mlflow

            client = mlflow.MlflowClient()
            for key, value in tags.items():
                client.set_tag(self.parent_run_id, key, str(value))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            if Path(path).is_dir():
                mlflow.log_artifacts(os.fspath(path), artifact_path=artifact_path)
            else:
                mlflow.log_artifact(os.fspath(path), artifact_path=artifact_path)

    def log_figure(self, figure: Any, file_name: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_figure(figure, file_name)

    def log_text(self, text: str, file_name: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_text(text, file_name)


@contextmanager
def tracked_run(
    run_name: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    tags: Mapping[str, Any] | None = None,
    system_metrics: bool = False,
) -> Iterator[Tracker]:
    """Open an MLflow run for one phase; a no-op tracker when no tracking URI is configured.
    `system_metrics` samples CPU, memory, disk, network (and GPU where pynvml finds one) into the run."""
    uri = tracking_uri or resolve_endpoints().mlflow_uri
    if not uri:
        yield Tracker()
        return
    # MLflow prints "View run at ..." to stdout; we show the run URL ourselves and keep stdout for results.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    import mlflow

    mlflow.set_tracking_uri(uri)
    _set_experiment(mlflow, experiment, uri)
    active = mlflow.active_run()  # a phase calling another phase's function: nest under the caller's run
    parent = (active.info.run_id if active else None) or parent_run_id or pipeline_parent_run(mlflow,
                                                                                               experiment)
    # None (not False) leaves MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING in charge for every other run.
    with mlflow.start_run(run_name=run_name, parent_run_id=parent, nested=parent is not None,
                          tags={k: str(v) for k, v in (tags or {}).items()},
                          log_system_metrics=True if system_metrics else None) as run:
        yield Tracker(run.info.run_id, uri, parent)


def _probe(uri: str) -> None:
    """MLflow's client retries a silent server for minutes; one health probe with a bound says it at once."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with waiting_for("MLflow", uri), urllib.request.urlopen(f"{uri.rstrip('/')}/health",
                                                                 timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:  # refused, timed out, HTTP error (URLError/HTTPError are OSErrors)
        raise ServiceError(f"MLflow at {uri} is not reachable or did not answer within {PROBE_TIMEOUT_S:.0f} "
                           "s "
                           f"({getattr(exc, 'reason', None) or exc})",
                           "start it with `visionnode stack up` or unset MLFLOW_TRACKING_URI") from None


def _set_experiment(mlflow: Any, experiment: str, uri: str) -> None:
    _probe(uri)
    try:
        found = mlflow.set_experiment(experiment)
    except Exception as exc:  # MLflow raises many types for an unreachable server
        raise ServiceError(f"MLflow at {uri} did not answer ({type(exc).__name__})",
                           "start it with `visionnode stack up` or unset MLFLOW_TRACKING_URI") from None
    key, kind = EXPERIMENT_KIND_TAG
    if key not in found.tags:  # a kind the user chose in the UI stays
        mlflow.set_experiment_tag(key, kind)


def pipeline_parent_run(mlflow: Any, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """The pipeline run's parent run: the one a local run opened (`VISIONNODE_PARENT_RUN_ID`), else, in a
    cluster, the one tagged with the KFP run id, created by the first phase that needs it."""
    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV]
    pipeline_run_id = os.environ.get(PIPELINE_RUN_ENV)
    if not pipeline_run_id:
        return None
    exp = mlflow.get_experiment_by_name(experiment)
    found = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list", max_results=1,
                               filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}'")
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(exp.experiment_id, run_name=f"pipeline-{pipeline_run_id}",
                            tags={PIPELINE_RUN_TAG: pipeline_run_id})
    return run.info.run_id


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def save_figure(figure: Any, path: str | os.PathLike[str], tracker: Tracker | None = None) -> Path:
    """Save a matplotlib figure atomically as PNG and log it to the run when tracking is on."""
    from visionnode.components.common.jsonio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    if tracker is not None:
        tracker.log_artifact(path, artifact_path="plots")
    return path
