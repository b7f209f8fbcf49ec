"""S3 access for every phase: URI parsing and one place that builds boto3 / minio clients."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from visionnode.components.common.errors import ConfigError, ServiceError
from visionnode.components.common.settings import (
    Endpoints,
    S3Credentials,
    resolve_endpoints,
    resolve_s3_credentials,
)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading slash; "" for the bucket root

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def child(self, name: str) -> "S3Location":
        prefix = self.key.rstrip("/")
        return S3Location(self.bucket, f"{prefix}/{name}" if prefix else name)


NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})


def s3_error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("NoSuchKey", "404", ...); "" for any other exception."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def is_s3_uri(value: str) -> bool:
    return str(value).startswith("s3://")


def parse_s3_uri(uri: str) -> S3Location:
    parsed = urlparse(str(uri))
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"'{uri}' is not an S3 URI", "write it as s3://bucket/prefix")
    return S3Location(parsed.netloc, parsed.path.lstrip("/"))


@dataclass(frozen=True)
class S3Config:
    """How to reach S3: endpoint (None means AWS itself), credentials, region, pool size."""

    endpoint: str | None
    credentials: S3Credentials | None
    region: str
    max_pool_connections: int = 32
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_attempts: int = 8
    # None: botocore's default (SHA-256 of every body over plain http). False skips that extra hash when
    # the request carries its own checksum header (e.g. ChecksumAlgorithm="SHA256"), which the server checks.
    payload_signing: bool | None = None


def resolve_s3_config(max_pool_connections: int = 32) -> S3Config:
    endpoints: Endpoints = resolve_endpoints()
    return S3Config(endpoint=endpoints.s3_endpoint, credentials=resolve_s3_credentials(),
                    region=endpoints.s3_region, max_pool_connections=max_pool_connections)


class S3Traffic:
    """Requests and payload bytes, per S3 operation, of every client `s3_client` builds in this process (from
    botocore's events): what a step really moved, for its metrics and for the tests that bound it. A HEAD's
    Content-Length is the object's size, not bytes received, so it counts as none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes_out: Counter[str] = Counter()
        self.bytes_in: Counter[str] = Counter()

    def on_send(self, request: Any, event_name: str = "", **_: Any) -> None:
        with self._lock:
            self.bytes_out[event_name.rsplit(".", 1)[-1]] += int(request.headers.get("Content-Length") or 0)

    def on_response(self, http_response: Any, model: Any, **_: Any) -> None:
        received = 0 if model.name == "HeadObject" else int(http_response.headers.get("content-length") or 0)
        with self._lock:
            self.requests[model.name] += 1
            self.bytes_in[model.name] += received

    def snapshot(self) -> "S3Traffic":
        copy = S3Traffic()
        with self._lock:
            copy.requests, copy.bytes_out, copy.bytes_in = (Counter(self.requests), Counter(self.bytes_out),
                                                            Counter(self.bytes_in))
        return copy

    def since(self, earlier: "S3Traffic") -> "S3Traffic":
        now = self.snapshot()
        now.requests.subtract(earlier.requests)
        now.bytes_out.subtract(earlier.bytes_out)
        now.bytes_in.subtract(earlier.bytes_in)
        return now

    def metrics(self) -> dict[str, float]:
        return {"s3_requests": float(sum(self.requests.values())),
                "s3_mb_in": sum(self.bytes_in.values()) / 1e6,
                "s3_mb_out": sum(self.bytes_out.values()) / 1e6}


TRAFFIC = S3Traffic()


def s3_client(config: S3Config | None = None):
    """A boto3 S3 client with adaptive retries (exponential backoff + jitter) and path-style addressing."""
    import boto3
    from botocore.config import Config

    config = config or resolve_s3_config()
    creds = config.credentials
    client = boto3.client(
        "s3",
        endpoint_url=config.endpoint,
        region_name=config.region,
        aws_access_key_id=creds.access_key if creds else None,
        aws_secret_access_key=creds.secret_key if creds else None,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path",
                **({} if config.payload_signing is None
                   else {"payload_signing_enabled": config.payload_signing})},
            retries={"mode": "adaptive", "max_attempts": config.max_attempts},
            max_pool_connections=config.max_pool_connections,
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            tcp_keepalive=True,
        ),
    )
    client.meta.events.register("before-send.s3", TRAFFIC.on_send)
    client.meta.events.register("after-call.s3", TRAFFIC.on_response)
    return client


def minio_client(config: S3Config | None = None):
    """A minio client on the same endpoint and credentials as `s3_client`."""
    from minio import Minio

    config = config or resolve_s3_config()
    if not config.endpoint:
        raise ServiceError("no S3 endpoint is configured",
                           "run `visionnode stack up` or set VISIONNODE_S3_ENDPOINT")
    parsed = urlparse(config.endpoint)
    creds = config.credentials
    return Minio(parsed.netloc, access_key=creds.access_key if creds else None,
                 secret_key=creds.secret_key if creds else None,
                 secure=parsed.scheme == "https", region=config.region)
