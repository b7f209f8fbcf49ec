"""Embedded MLflow: a real `mlflow server` with a SQLite backend store, artifacts proxied into S3.

`--serve-artifacts` makes the server the only S3 client: MLflow clients upload artifacts over HTTP
(`mlflow-artifacts:/...`) and need no S3 credentials; the server writes them to `s3://mlflow/`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from visionnode.components.common.settings import DEFAULT_REGION, S3Credentials
from visionnode.components.common.tracking import TELEMETRY_OFF
from visionnode.components.local.stack.process import LOOPBACK, PortSpec, child_env
from visionnode.components.local.stack.service import ServiceSpec

ARTIFACT_BUCKET = "mlflow"


def mlflow_spec(state_dir: Path, port: int, s3_endpoint: str | None,
                credentials: S3Credentials | None, region: str = DEFAULT_REGION) -> ServiceSpec:
    home = state_dir / "mlflow"
    url = f"http://{LOOPBACK}:{port}"
    # The server's background job runner (three more Python processes) serves no feature we use.
    env: dict[str, str | None] = {"MLFLOW_TRACKING_URI": None, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                                  **TELEMETRY_OFF}
    if s3_endpoint:
        destination = f"s3://{ARTIFACT_BUCKET}/"
        env.update({"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": region})
        if credentials:
            env.update(credentials.as_env())
    else:  # no S3 anywhere: keep artifacts on local disk, still served over HTTP
        destination = str(home / "artifacts")
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", destination,
    ]
    return ServiceSpec(
        name="mlflow", argv=argv, env=child_env(env), ports=[PortSpec(port, "HTTP", "--mlflow-port")],
        url=url, health_url=f"{url}/health", extra={"artifacts_destination": destination}, cwd=home,
        before_start=lambda: home.mkdir(parents=True, exist_ok=True),
    )
