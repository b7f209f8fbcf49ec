"""The embedded stack (SeaweedFS S3, MLflow, Triton) once per test session, on free loopback ports.

`stack` starts it in a temp state dir, points the environment at it (so `resolve_endpoints()`, `s3_client()`,
`tracked_run()` and tritonclient users find it) and always stops it at the end. `bucket` gives each test a
fresh, empty bucket on that S3 server.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from visionnode.components.common.errors import ServiceError
from visionnode.components.common.storage.s3 import s3_client
from visionnode.components.local.stack import LocalStack, StackConfig
from visionnode.components.local.stack.process import free_ports

STACK_ENV = ("VISIONNODE_STATE_DIR", "VISIONNODE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "MLFLOW_TRACKING_URI", "VISIONNODE_MLFLOW_URI", "VISIONNODE_TRITON_HTTP",
             "VISIONNODE_TRITON_GRPC",
             "VISIONNODE_TRITON_METRICS", "VISIONNODE_TRITON_REPOSITORY", "AWS_DEFAULT_REGION")


def free_port_args(*flags: str, avoid: Collection[int] = ()) -> list[str]:
    """["--s3-port", "41023", "--mlflow-port", "38211", ...]: a different free port for each flag."""
    return [str(v) for pair in zip(flags, free_ports(len(flags), avoid=avoid), strict=True) for v in pair]


def free_stack_config(state_dir: Path, triton_container: bool = False) -> StackConfig:
    """A full stack on five different ports nobody holds right now (the kernel's picks for port 0)."""
    s3, mlflow, http, grpc, metrics = free_ports(5)
    return StackConfig(state_dir=state_dir, s3_port=s3, mlflow_port=mlflow, triton_http_port=http,
                       triton_grpc_port=grpc, triton_metrics_port=metrics, startup_timeout_s=180.0,
                       die_with_parent=True, triton_container=triton_container)


def _start_on_free_ports(state_dir: Path, triton_container: bool = False, attempts: int = 3) -> LocalStack:
    """Free ports are picked before the servers bind them; if another process takes one in between (seen in CI
    as "port ... is already in use"), pick a fresh set. `up` starts nothing before all ports are checked."""
    for attempt in range(attempts):
        local_stack = LocalStack(free_stack_config(state_dir, triton_container))
        try:
            local_stack.up()
            return local_stack
        except ServiceError as exc:
            if "already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from stack_session(tmp_path_factory.mktemp("stack"))


def stack_session(state_dir: Path, triton_container: bool = False) -> Iterator[LocalStack]:
    """Start a stack in `state_dir`, point the environment at it, and stop it (and restore the env) after."""
    saved = {name: os.environ.get(name) for name in STACK_ENV}
    os.environ["VISIONNODE_STATE_DIR"] = str(state_dir)
    os.environ["AWS_ACCESS_KEY_ID"] = "vntest" + secrets.token_hex(6)
    os.environ["AWS_SECRET_ACCESS_KEY"] = secrets.token_urlsafe(24)
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ.pop("VISIONNODE_MLFLOW_URI", None)  # would outrank MLFLOW_TRACKING_URI
    local_stack = _start_on_free_ports(state_dir, triton_container)
    try:
        endpoints = local_stack.endpoints
        os.environ["VISIONNODE_S3_ENDPOINT"] = endpoints.s3_endpoint or ""
        os.environ["MLFLOW_TRACKING_URI"] = endpoints.mlflow_uri or ""
        os.environ["VISIONNODE_TRITON_HTTP"] = endpoints.triton_http or ""
        os.environ["VISIONNODE_TRITON_GRPC"] = endpoints.triton_grpc or ""
        os.environ["VISIONNODE_TRITON_METRICS"] = endpoints.triton_metrics or ""
        os.environ["VISIONNODE_TRITON_REPOSITORY"] = endpoints.triton_repository or ""
        yield local_stack
    finally:
        local_stack.down()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture()
def bucket(stack: LocalStack, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket whose name is unique per test (S3 naming rules: lowercase, digits, dashes)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{secrets.token_hex(4)}"
    s3_client().create_bucket(Bucket=name)
    return name
