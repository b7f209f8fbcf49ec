"""Talking to a running Triton: a probed HTTP client, the version it serves, where its model repository is.

Deploy loads models through these; benchmark finds what is served with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ServiceError, one_line
from .progress import PROBE_TIMEOUT_S, waiting_for
from .settings import resolve_endpoints, resolve_s3_credentials
from .storage import S3Config, S3Location, resolve_s3_config

DEFAULT_MODEL_NAME = "resnet152_int8"
STACK_HINT = "start the embedded stack with `visionnode stack up` or pass --triton-url HOST:PORT"


@dataclass(frozen=True)
class RepositoryTarget:
    """A model repository: a local dir, or an S3 prefix reached through `s3` (endpoint + credentials)."""

    uri: str
    local_dir: Path | None = None
    location: S3Location | None = None
    s3: S3Config | None = None

    @property
    def identity(self) -> tuple:
        if self.local_dir is not None:
            return ("dir", str(self.local_dir.resolve()))
        assert self.location is not None and self.s3 is not None
        return ("s3", self.s3.endpoint, self.location.bucket, self.location.key.strip("/"))

    def sibling(self, suffix: str) -> "RepositoryTarget":
        if self.local_dir is not None:
            return RepositoryTarget(self.uri + suffix,
                                    local_dir=self.local_dir.with_name(self.local_dir.name + suffix))
        assert self.location is not None
        key = self.location.key.rstrip("/") + suffix
        return RepositoryTarget(self.uri.rstrip("/") + suffix, location=S3Location(self.location.bucket, key),
                                s3=self.s3)


def parse_repository(uri: str) -> RepositoryTarget:
    """A dir, `s3://bucket/prefix` (on the configured S3 endpoint) or Triton's
    `s3://host:port/bucket/prefix`."""
    from visionnode.components.common.stack.triton import parse_triton_repository

    parsed = parse_triton_repository(uri)
    if parsed.local_dir is not None:
        return RepositoryTarget(uri, local_dir=parsed.local_dir)
    if parsed.endpoint is None:
        return RepositoryTarget(uri, location=parsed.location, s3=resolve_s3_config())
    config = S3Config(endpoint=parsed.endpoint, credentials=resolve_s3_credentials(),
                      region=resolve_endpoints().s3_region)
    return RepositoryTarget(uri, location=parsed.location, s3=config)


def triton_http_client(url: str, timeout_s: float = 60.0):
    """A client for Triton's HTTP API, after a liveness probe that gives up within PROBE_TIMEOUT_S."""
    import tritonclient.http as httpclient

    probe = httpclient.InferenceServerClient(url, connection_timeout=PROBE_TIMEOUT_S,
                                             network_timeout=PROBE_TIMEOUT_S)
    try:
        with waiting_for("Triton", url):
            live = probe.is_server_live()
    except Exception as exc:  # connection refused / DNS / timeout all surface as different types
        raise ServiceError(f"Triton at {url} is not reachable or did not answer within {PROBE_TIMEOUT_S:.0f} "
                           "s "
                           f"({one_line(exc)})", STACK_HINT) from None
    finally:
        probe.close()
    if not live:
        raise ServiceError(f"Triton at {url} answers but is not live", STACK_HINT)
    return httpclient.InferenceServerClient(url, connection_timeout=PROBE_TIMEOUT_S,
                                            network_timeout=timeout_s)


def ready_version(client, name: str) -> int | None:
    """The version of `name` Triton serves now, if any."""
    for entry in client.get_model_repository_index():
        if entry.get("name") == name and entry.get("state") == "READY" and entry.get("version"):
            return int(entry["version"])
    return None
