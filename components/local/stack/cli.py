"""`visionnode stack up | status | down`: the embedded S3 + MLflow + Triton on loopback ports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from visionnode.components.common.adapters.cli import (
    err_console,
    json_to_stdout,
    out_console,
    user_errors,
    write_summary,
)
from visionnode.components.common.adapters.declared import build, check_ranges, with_setting_options
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.jsonio import atomic_path, to_jsonable
from visionnode.components.common.settings import resolve_endpoints, resolve_s3_credentials, service_env
from visionnode.components.common.settings import state_dir as default_state_dir
from visionnode.components.local.stack.process import LOOPBACK, ensure_ports_free
from visionnode.components.local.stack.stack import LocalStack, ServiceStatus, StackConfig
from visionnode.components.local.stack.triton import exec_triton, local_address, triton_spec

stack_app = typer.Typer(
    help="The embedded local stack: SeaweedFS S3, an MLflow server and Triton, bound to 127.0.0.1. "
         "Leave a service out (--no-s3, --no-mlflow, --no-triton) when VISIONNODE_S3_ENDPOINT, "
         "VISIONNODE_MLFLOW_URI / MLFLOW_TRACKING_URI or VISIONNODE_TRITON_* point at an external one.",
    no_args_is_help=True,
)

StateDir = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="Where data, logs, PID files and stack.json live (default: $VISIONNODE_STATE_DIR "
                        "or ~/.local/state/visionnode).")]
JsonPath = Annotated[Optional[Path],
                     typer.Option("--json", help="Also write the service table as JSON here.")]


@stack_app.command("up")
@user_errors
@with_setting_options(StackConfig)
def up_command(settings: dict[str, Any], state_dir: StateDir = None, json_path: JsonPath = None) -> None:
    """Start the services that are not running yet (idempotent) and write STATE_DIR/stack.json."""
    config = build(StackConfig, settings, state_dir=state_dir or default_state_dir())
    check_ranges(config)
    stack = LocalStack(config)
    _show(stack.up(), "stack up", json_path)
    endpoints = stack.endpoints
    out_console.print(f"endpoints: {stack.state_dir / 'stack.json'}; Triton model repository: "
                      f"{endpoints.triton_repository or '-'}", highlight=False, soft_wrap=True)


@stack_app.command("status")
@user_errors
def status_command(state_dir: StateDir = None, json_path: JsonPath = None) -> None:
    """Show each service's health, PID and URL.
    Exit code 1 when a running service is unhealthy or none runs."""
    statuses = LocalStack(StackConfig(state_dir=state_dir or default_state_dir())).status()
    _show(statuses, "stack status", json_path)
    running = [s for s in statuses if s.running]
    if not running or not all(s.healthy for s in running):
        raise typer.Exit(1)


@stack_app.command("down")
@user_errors
def down_command(state_dir: StateDir = None, json_path: JsonPath = None) -> None:
    """Stop exactly the server PIDs recorded by `up` (SIGTERM, then SIGKILL) and remove stack.json.
    Data is kept."""
    _show(LocalStack(StackConfig(state_dir=state_dir or default_state_dir())).down(), "stack down", json_path)


@stack_app.command("env-file")
@user_errors
def env_file_command(
    out: Annotated[Path, typer.Argument(help="Where to write the KEY=VALUE lines (mode 0600).")],
    state_dir: StateDir = None,
) -> None:
    """Write the stack's endpoints and S3 credentials as an env file for `docker run --env-file`
    (never printed)."""
    directory = state_dir or default_state_dir()
    values = service_env(resolve_endpoints(directory), resolve_s3_credentials(directory))
    if not values:
        raise ConfigError("no stack endpoints to write", "start the stack first: visionnode stack up")
    with atomic_path(out) as tmp:
        tmp.chmod(0o600)  # before the secret is in it
        tmp.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    out_console.print(f"{len(values)} variables written to {out} (mode 0600)", highlight=False,
                      soft_wrap=True)


@stack_app.command("triton")
@user_errors
def triton_command(
    repository: Annotated[str, typer.Option(
        envvar="VISIONNODE_TRITON_REPOSITORY",
        help="Model repository: a local dir or s3://host:port/bucket/prefix (S3 credentials from AWS_*).")],
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port.")] = 8002,
    address: Annotated[str, typer.Option(
        help="Address every port binds; in a Kubernetes pod, all interfaces (the manifest sets it).")
    ] = LOOPBACK,
) -> None:
    """Run Triton in the foreground with explicit model control: the triton-openvino image's entrypoint."""
    spec = triton_spec(default_state_dir(), http_port, grpc_port, metrics_port, repository,
                       resolve_s3_credentials(), resolve_endpoints().s3_region, address=address)
    ensure_ports_free("triton", spec.ports, local_address(address))
    out_console.print(f"tritonserver on {address} (HTTP {http_port}, gRPC {grpc_port}, metrics "
                      f"{metrics_port}), "
                      f"models from {repository}", highlight=False, soft_wrap=True)
    exec_triton(spec)


def _show(statuses: list[ServiceStatus], title: str, json_path: Path | None) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("service", "healthy", "pid", "url", "action", "start s"):
        table.add_column(column, no_wrap=True)
    for s in statuses:
        healthy = "[green]yes[/]" if s.healthy else ("[red]no[/]" if s.running else "stopped")
        table.add_row(s.name, healthy, str(s.pid or "-"), s.url or "-", s.action or "-",
                      f"{s.startup_s:.1f}" if s.startup_s is not None else "-")
    console = err_console if json_to_stdout(json_path) else out_console
    console.print(table)
    if statuses:
        console.print(f"logs: {Path(statuses[0].log).parent}", highlight=False, soft_wrap=True)
    write_summary(json_path, {"services": to_jsonable(statuses)})


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
