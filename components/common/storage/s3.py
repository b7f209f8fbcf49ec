"""S3 access for every phase: URI parsing and one place that builds boto3 / minio clients."""

from __future__ import annotations

from dataclasses import dataclass
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


def s3_client(config: S3Config | None = None):
    """A boto3 S3 client with adaptive retries (exponential backoff + jitter) and path-style addressing."""
    import boto3
    from botocore.config import Config

    config = config or resolve_s3_config()
    creds = config.credentials
    return boto3.client(
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
