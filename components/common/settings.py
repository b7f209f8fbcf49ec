"""Where the services are and how to authenticate: one resolution order for every phase.

Order, highest first:
1. environment variables (`ENDPOINT_ENV`: `VISIONNODE_S3_ENDPOINT`, `MLFLOW_TRACKING_URI`,
   `VISIONNODE_TRITON_HTTP`, ...): point any of them at an external MinIO / MLflow / Triton and the embedded
   one is never used;
2. the endpoints file `stack.json` that `visionnode stack up` writes into the state dir;
3. nothing: tracking is off, and phases that need S3 or Triton say how to provide one.

S3 credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` or, for the embedded stack only,
from a generated `credentials.json` (mode 0600) in the state dir. They are never printed or logged.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from visionnode.components.common.errors import ConfigError

ENDPOINTS_FILE = "stack.json"
CREDENTIALS_FILE = "credentials.json"
DEFAULT_REGION = "us-east-1"

# Each endpoint's environment variables, in the order they are read; a phase is handed all of them.
ENDPOINT_ENV = {
    "s3_endpoint": ("VISIONNODE_S3_ENDPOINT",),
    "mlflow_uri": ("VISIONNODE_MLFLOW_URI", "MLFLOW_TRACKING_URI"),
    "triton_http": ("VISIONNODE_TRITON_HTTP",),
    "triton_grpc": ("VISIONNODE_TRITON_GRPC",),
    "triton_metrics": ("VISIONNODE_TRITON_METRICS",),
    "triton_repository": ("VISIONNODE_TRITON_REPOSITORY",),
}


def state_dir() -> Path:
    """The embedded stack's home: `$VISIONNODE_STATE_DIR`, else `$XDG_STATE_HOME/visionnode`."""
    explicit = os.environ.get("VISIONNODE_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "visionnode"


@dataclass(frozen=True)
class Endpoints:
    """Service addresses. S3 and MLflow are URLs; Triton addresses are `host:port` as tritonclient takes."""

    s3_endpoint: str | None = None
    mlflow_uri: str | None = None
    triton_http: str | None = None
    triton_grpc: str | None = None
    triton_metrics: str | None = None
    s3_region: str = DEFAULT_REGION
    # Where Triton reads its model repository: a local dir, or `s3://host:port/bucket/prefix` (Triton's
    # S3 syntax for a non-AWS endpoint; plain `s3://bucket/prefix` for AWS itself).
    triton_repository: str | None = None
    # The embedded Triton's process id (the stack writes it; None for an external server): benchmark samples
    # the server's memory through it.
    triton_pid: int | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Endpoints":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def service_env(endpoints: Endpoints, credentials: "S3Credentials | None") -> dict[str, str]:
    """The variables a phase reads its services from (what a container or a subprocess is given)."""
    values = {name: getattr(endpoints, field) for field, names in ENDPOINT_ENV.items() for name in names}
    values["AWS_DEFAULT_REGION"] = endpoints.s3_region
    if credentials:
        values.update(credentials.as_env())
    return {k: v for k, v in values.items() if v}


def named_in_environment(field: str) -> bool:
    """Whether the environment points this endpoint (an `Endpoints` field) at a service: an external one."""
    return any(os.environ.get(name) for name in ENDPOINT_ENV[field])


def save_endpoints(endpoints: Endpoints, directory: Path | None = None) -> Path:
    from visionnode.components.common.jsonio import write_json

    return write_json((directory or state_dir()) / ENDPOINTS_FILE, endpoints.to_dict())


def resolve_endpoints(directory: Path | None = None) -> Endpoints:
    """Environment first, then the embedded stack's endpoints file, field by field."""
    path = (directory or state_dir()) / ENDPOINTS_FILE
    from_file: dict = {}
    if path.is_file():
        try:
            from_file = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"{path} is corrupt", "run `visionnode stack down` then `stack up`") from None
    values = dict(Endpoints.from_dict(from_file).to_dict())
    for name, env_names in ENDPOINT_ENV.items():
        for env_name in env_names:
            if os.environ.get(env_name):
                values[name] = os.environ[env_name]
                break
    if os.environ.get("AWS_DEFAULT_REGION"):
        values["s3_region"] = os.environ["AWS_DEFAULT_REGION"]
    return Endpoints(**values)


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str = field(repr=False)

    def as_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


def ensure_local_credentials(directory: Path | None = None) -> S3Credentials:
    """Credentials for the embedded S3 server: the environment's, else generated once and kept 0600."""
    from_env = _credentials_from_env()
    if from_env:
        return from_env
    path = (directory or state_dir()) / CREDENTIALS_FILE
    stored = _credentials_from_file(path)
    if stored:
        return stored
    creds = S3Credentials(access_key="vn" + secrets.token_hex(8), secret_key=secrets.token_urlsafe(30))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"access_key": creds.access_key, "secret_key": creds.secret_key}, fh)
    return creds


def resolve_s3_credentials(directory: Path | None = None) -> S3Credentials | None:
    """The environment's credentials, else the embedded stack's stored ones, else None."""
    return _credentials_from_env() or _credentials_from_file((directory or state_dir()) / CREDENTIALS_FILE)


def _credentials_from_env() -> S3Credentials | None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return S3Credentials(key, secret) if key and secret else None


def _credentials_from_file(path: Path) -> S3Credentials | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return S3Credentials(data["access_key"], data["secret_key"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a valid credentials file",
                          "delete it and run `visionnode stack up` again") from None
