"""Talking to a running Triton: a probed HTTP client, the version it serves, where its model repository is.

Deploy loads models through these; benchmark finds what is served with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.errors import ConfigError, ServiceError, one_line
from visionnode.components.common.progress import PROBE_TIMEOUT_S, waiting_for
from visionnode.components.common.settings import resolve_endpoints, resolve_s3_credentials
from visionnode.components.common.storage.s3 import S3Config, S3Location, resolve_s3_config

DEFAULT_MODEL_NAME = "resnet152_int8"
CANDIDATE_SUFFIX = "_candidate"   # a model staged beside the production one until it proves itself
JPEG_SUFFIX = "_jpeg"             # a model's JPEG front end (python backend), which calls the model
STACK_HINT = "start the embedded stack with `visionnode stack up` or pass --triton-url HOST:PORT"


@dataclass(frozen=True)
class TritonRepository:
    """Where Triton reads models: `local_dir`, or `location` on the S3 server at `endpoint` (None = AWS)."""

    uri: str
    local_dir: Path | None = None
    endpoint: str | None = None
    location: S3Location | None = None

    @property
    def is_s3(self) -> bool:
        return self.location is not None


def parse_triton_repository(uri: str) -> TritonRepository:
    """Split a repository string: a local dir, `s3://host:port/bucket/prefix` or AWS `s3://bucket/prefix`."""
    if not uri.startswith("s3://"):
        return TritonRepository(uri=uri, local_dir=Path(uri).expanduser())
    rest = uri[len("s3://"):]
    head, _, path = rest.partition("/")
    if ":" in head:  # host:port → a private S3 server reached over http
        bucket, _, key = path.partition("/")
        if not bucket:
            raise ConfigError(f"'{uri}' names no bucket", "write it as s3://host:port/bucket/prefix")
        return TritonRepository(uri=uri, endpoint=f"http://{head}",
                                location=S3Location(bucket, key.strip("/")))
    return TritonRepository(uri=uri, location=S3Location(head, path.strip("/")))


@dataclass(frozen=True)
class RepositoryTarget(TritonRepository):
    """A parsed model repository with the S3 settings (endpoint + credentials) to reach an S3 one."""

    s3: S3Config | None = None

    @property
    def identity(self) -> tuple:
        if self.local_dir is not None:
            return ("dir", str(self.local_dir.resolve()))
        assert self.location is not None and self.s3 is not None
        return ("s3", self.s3.endpoint, self.location.bucket, self.location.key.strip("/"))

    def sibling(self, suffix: str) -> RepositoryTarget:
        if self.local_dir is not None:
            return RepositoryTarget(self.uri + suffix,
                                    local_dir=self.local_dir.with_name(self.local_dir.name + suffix))
        assert self.location is not None
        key = self.location.key.rstrip("/") + suffix
        return RepositoryTarget(self.uri.rstrip("/") + suffix, endpoint=self.endpoint,
                                location=S3Location(self.location.bucket, key), s3=self.s3)


def parse_repository(uri: str) -> RepositoryTarget:
    """A dir, `s3://bucket/prefix` (on the configured S3 endpoint) or Triton's
    `s3://host:port/bucket/prefix`."""
    parsed = parse_triton_repository(uri)
    if parsed.local_dir is not None:
        return RepositoryTarget(uri, local_dir=parsed.local_dir)
    if parsed.endpoint is None:
        s3 = resolve_s3_config()
    else:
        s3 = S3Config(endpoint=parsed.endpoint, credentials=resolve_s3_credentials(),
                      region=resolve_endpoints().s3_region)
    return RepositoryTarget(uri, endpoint=parsed.endpoint, location=parsed.location, s3=s3)


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


def served_label(class_name: str) -> str:
    """A class name as a model's labels.txt holds it, one per line, and Triton's classification answers."""
    return class_name.replace("\n", " ").strip()


def production_models(names: list[str]) -> list[str]:
    """The models of a repository that serve under production names (not staged candidates), each before
    its JPEG front end, which calls it."""
    production = {name for name in names if not name.removesuffix(JPEG_SUFFIX).endswith(CANDIDATE_SUFFIX)}
    return sorted(production, key=lambda name: (name.removesuffix(JPEG_SUFFIX), name.endswith(JPEG_SUFFIX)))


def replica_entries(spec: str) -> list[tuple[str, int]]:
    """(host, port) of each comma-separated HOST:PORT entry of a replica list; a one-line error otherwise."""
    entries = []
    for entry in (e.strip() for e in spec.split(",")):
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"Triton replica address {entry!r} is not HOST:PORT",
                              "e.g. triton-headless.visionnode.svc.cluster.local:8000 or "
                              "127.0.0.1:8000,127.0.0.1:9000")
        entries.append((host, int(port)))
    return entries


def replica_urls(spec: str) -> list[str]:
    """Every Triton server behind `spec`: comma-separated HOST:PORT entries, where a host name stands for
    every IPv4 address DNS gives it. A Kubernetes headless Service (clusterIP: None) answers with one A record
    per ready pod, so `triton-headless.<namespace>.svc:8000` names every replica, where a ClusterIP Service's
    one virtual address would reach a single, random pod per connection."""
    import ipaddress
    import socket

    urls: list[str] = []
    for host, port in replica_entries(spec):
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:  # a name: every address DNS knows for it
            try:
                infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                raise ServiceError(f"cannot resolve the Triton replicas of {host!r} ({one_line(exc)})",
                                   "check the headless Service name (manifests/base/triton.yaml)") from None
            addresses = sorted({info[4][0] for info in infos})
        urls.extend(f"{address}:{port}" for address in addresses if f"{address}:{port}" not in urls)
    return urls
