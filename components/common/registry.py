"""The MLflow model registry: which version of a model is which, and which one is live (alias `champion`).

Train registers the FP32 model (pytorch flavour, with its signature); deploy registers the INT8 model it
stages as a candidate, with its FP32 parent and the Triton model name/version it serves as; promotion moves
the `champion` alias onto that version. Every function takes a `Tracker` and does nothing when tracking is
off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.tracking import Tracker

CHAMPION_ALIAS = "champion"
PROMOTION_TAG = "promotion"      # on a registered version: candidate | promoted: ... | not promoted: ...


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"

    @classmethod
    def parse(cls, text: str) -> RegisteredVersion | None:
        """'name/version' (as train and deploy record it) or '' (nothing registered)."""
        name, sep, version = text.rpartition("/")
        return cls(name, version) if sep and name and version.isdigit() else None


def register_files(tracker: Tracker, name: str, files: list[Path], *, model_type: str, description: str,
                   metrics: Mapping[str, float], tags: Mapping[str, str]) -> RegisteredVersion | None:
    """Log `files` as an MLflow logged model of the tracker's run and register it as a new version of `name`
    (for models no MLflow flavour describes, such as an OpenVINO IR)."""
    if not tracker.enabled:
        return None
    import mlflow

    logged = mlflow.initialize_logged_model(name=name, source_run_id=tracker.run_id, model_type=model_type)
    client = mlflow.MlflowClient()
    for path in files:
        client.log_model_artifact(logged.model_id, str(path))
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    if numeric:
        mlflow.log_metrics(numeric, model_id=logged.model_id, run_id=tracker.run_id)
    mlflow.finalize_logged_model(logged.model_id, "READY")
    ensure_registered_model(name, description)
    version = client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=tracker.run_id,
                                          model_id=logged.model_id, description=description,
                                          tags={k: str(v) for k, v in tags.items()})
    return RegisteredVersion(name, str(version.version))


def ensure_registered_model(name: str, description: str) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().create_registered_model(name, description=description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def tag_version(tracker: Tracker, registered: RegisteredVersion | None, tags: Mapping[str, str]) -> None:
    if tracker.enabled and registered is not None:
        import mlflow

        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(registered.name, registered.version, key, str(value))


def set_champion(tracker: Tracker, registered: RegisteredVersion | None) -> None:
    """Point the alias `champion` at this version (it leaves whichever version held it before)."""
    if tracker.enabled and registered is not None:
        import mlflow

        mlflow.MlflowClient().set_registered_model_alias(registered.name, CHAMPION_ALIAS, registered.version)


def champion(tracker: Tracker, name: str) -> RegisteredVersion | None:
    """The version the alias `champion` points at, if the model and the alias exist."""
    if not tracker.enabled:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return RegisteredVersion(name, str(found.version))
