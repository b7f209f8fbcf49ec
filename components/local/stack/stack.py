"""The embedded local stack: S3 (SeaweedFS), MLflow and Triton as background processes in one state dir.

    state_dir/
      stack.json         endpoints for every phase (settings.resolve_endpoints reads it)
      credentials.json   generated S3 credentials (0600) unless AWS_* are set
      run/<svc>.pid      PID + start time + addresses of each running server
      logs/<svc>.log     each server's output
      s3/ mlflow/ triton/  their data

`up` is idempotent (healthy servers are kept), `down` stops exactly the PIDs in run/. A service can be left
out (`with_s3=False`, ...) when the user points the matching setting (env var) at an external one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from visionnode.components.common.adapters.declared import above, at_least, between, setting
from visionnode.components.common.errors import ServiceError
from visionnode.components.common.jsonio import atomic_write_text
from visionnode.components.common.settings import (
    ENDPOINTS_FILE,
    Endpoints,
    S3Credentials,
    ensure_local_credentials,
    resolve_endpoints,
    resolve_s3_credentials,
    save_endpoints,
)
from visionnode.components.common.settings import state_dir as default_state_dir
from visionnode.components.local import containers
from visionnode.components.local.stack import process
from visionnode.components.local.stack.mlflow_server import mlflow_spec
from visionnode.components.local.stack.process import ProcessRecord
from visionnode.components.local.stack.s3 import s3_spec
from visionnode.components.local.stack.service import ServiceSpec, service_log_file, service_pid_file
from visionnode.components.local.stack.triton import (
    REPOSITORY_BUCKET,
    REPOSITORY_PREFIX,
    serve_production_models,
    triton_s3_uri,
    triton_spec,
)

SERVICE_ORDER = ("s3", "mlflow", "triton")
PORTS = between(1, 65535)
# What a service container gets of the environment: the S3 credentials and region, nothing else.
CONTAINER_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


@dataclass
class StackConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    s3_port: int = setting(8333, "S3 API port (SeaweedFS's internal ports are picked free).", check=PORTS)
    mlflow_port: int = setting(5000, "MLflow server port.", check=PORTS)
    triton_http_port: int = setting(8000, "Triton HTTP port.", check=PORTS)
    triton_grpc_port: int = setting(8001, "Triton gRPC port.", check=PORTS)
    triton_metrics_port: int = setting(8002, "Triton metrics port.", check=PORTS)
    with_s3: bool = setting(True, "Run the embedded S3; --no-s3 uses VISIONNODE_S3_ENDPOINT + AWS_* instead.",
                            cli="--s3/--no-s3")
    with_mlflow: bool = setting(True, "Run the embedded MLflow server; --no-mlflow uses "
                                "VISIONNODE_MLFLOW_URI / MLFLOW_TRACKING_URI.", cli="--mlflow/--no-mlflow")
    with_triton: bool = setting(True, "Run the embedded Triton; --no-triton uses VISIONNODE_TRITON_HTTP/GRPC/"
                                "METRICS.", cli="--triton/--no-triton")
    triton_repository: str | None = setting(None, "Triton's model repository: a local dir or s3://host:port/"
                                            "bucket/prefix (default: s3://<S3 host:port>/visionnode/"
                                            "triton-models, or STATE_DIR/triton/models without S3).")
    triton_container: bool = setting(False, "Run Triton from the visionnode/triton-openvino image (host "
                                     "network, uid 10001, read-only root; build it with `make images`).",
                                     cli="--triton-container")
    startup_timeout_s: float = setting(120.0, "Seconds to wait for each service to become healthy.",
                                       cli="--timeout", check=above(0))
    s3_min_free_mb: int = setting(256, "Free disk space (MiB) below which S3 turns read-only; it does not "
                                  "start with less than twice this free.", check=at_least(1))
    # Servers get SIGTERM when the starting process dies (for test sessions; the CLI leaves them running).
    die_with_parent: bool = False
    # A Triton started here loads what promote left serving (False: it starts empty, as a bare server does).
    serve_promoted: bool = True

    def ports(self) -> set[int]:
        """The ports set for the servers (the embedded S3 picks its internal ports outside them)."""
        return {self.s3_port, self.mlflow_port, self.triton_http_port, self.triton_grpc_port,
                self.triton_metrics_port}

    def enabled(self, name: str) -> bool:
        return {"s3": self.with_s3, "mlflow": self.with_mlflow, "triton": self.with_triton}[name]


@dataclass
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    url: str | None
    log: str
    action: str = ""  # what this call did: started / kept / stopped / ""
    startup_s: float | None = None


class LocalStack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.state_dir = Path(self.config.state_dir).expanduser().resolve()

    # ---------------------------------------------------------------- public API
    def up(self) -> list[ServiceStatus]:
        """Start every enabled service that is not already running and healthy; write stack.json.

        All ports are checked before anything starts. Servers start side by side (MLflow's slow start-up
        overlaps the others); Triton goes last because its S3 repository must exist first.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        statuses: dict[str, ServiceStatus] = {}
        for name in SERVICE_ORDER:
            if self.config.enabled(name) and (kept := self._keep_if_running(name)) is not None:
                statuses[name] = kept
        to_start = [n for n in SERVICE_ORDER if self.config.enabled(n) and n not in statuses]
        specs = self._specs(to_start)
        process.ensure_ports_distinct({spec.name: spec.ports for spec in specs.values()})
        for spec in specs.values():
            process.ensure_ports_free(spec.name, spec.ports)
        launched: dict[str, process.Pending] = {}
        try:
            for name in ("s3", "mlflow"):
                if name in specs:
                    launched[name] = self._spawn(specs[name])
            if "s3" in specs:
                statuses["s3"] = self._await(specs["s3"], launched["s3"])
            if "triton" in specs:
                launched["triton"] = self._spawn(specs["triton"])
            waiting = [launched[n] for n in ("mlflow", "triton") if n in launched]
            ready_s = process.wait_until_healthy(waiting, self.config.startup_timeout_s)
            for item in waiting:
                statuses[item.name] = self._started_status(specs[item.name], item.record, ready_s[item.name])
        except BaseException:
            for name in reversed(list(launched)):  # leave nothing half-up that this call started
                self._stop(name)
            raise
        save_endpoints(self.endpoints, self.state_dir)
        return [statuses[n] for n in SERVICE_ORDER if n in statuses]

    def status(self) -> list[ServiceStatus]:
        return [self._status(name) for name in SERVICE_ORDER]

    def down(self) -> list[ServiceStatus]:
        """Stop the servers recorded in run/*.pid (Triton, MLflow, then S3)
        and wait for their ports to close."""
        results = []
        problems = []
        for name in reversed(SERVICE_ORDER):
            record = process.read_record(self._pid_file(name))
            pid = self._stop(name)
            if record is not None and (still_open := process.wait_ports_closed(record.ports)):
                problems.append(f"{name} (PID {record.pid}) stopped but ports {still_open} still listen")
            results.append(ServiceStatus(name, running=False, healthy=False, pid=pid,
                                         url=record.url if record else None, log=str(self._log_file(name)),
                                         action="stopped" if pid else ""))
        (self.state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        if problems:
            raise ServiceError("; ".join(problems), "another process holds them; find it with `ss -ltnp`")
        return list(reversed(results))

    @property
    def endpoints(self) -> Endpoints:
        """Addresses of the running embedded services; the settings (env) fill in services left out."""
        external = self._external_endpoints()
        s3 = self._record("s3")
        mlflow = self._record("mlflow")
        triton = self._record("triton")
        return replace(
            external,
            s3_endpoint=s3.url if s3 else external.s3_endpoint,
            mlflow_uri=mlflow.url if mlflow else external.mlflow_uri,
            triton_http=triton.url if triton else external.triton_http,
            triton_grpc=triton.extra.get("grpc") if triton else external.triton_grpc,
            triton_metrics=triton.extra.get("metrics") if triton else external.triton_metrics,
            triton_repository=triton.extra.get("repository") if triton else external.triton_repository,
            triton_pid=triton.pid if triton else None,
        )

    # ---------------------------------------------------------------- internals
    def _specs(self, names: list[str]) -> dict[str, ServiceSpec]:
        cfg = self.config
        s3_record = self._record("s3")
        if "s3" in names:
            credentials: S3Credentials | None = ensure_local_credentials(self.state_dir)
            s3_endpoint: str | None = f"http://{process.LOOPBACK}:{cfg.s3_port}"
        elif s3_record is not None:
            credentials, s3_endpoint = ensure_local_credentials(self.state_dir), s3_record.url
        else:  # an external S3 (or none): from the environment
            credentials = resolve_s3_credentials(self.state_dir)
            s3_endpoint = self._external_endpoints().s3_endpoint
        region = self._external_endpoints().s3_region
        specs: dict[str, ServiceSpec] = {}
        if "s3" in names:
            assert credentials is not None
            specs["s3"] = s3_spec(self.state_dir, cfg.s3_port, credentials, cfg.s3_min_free_mb,
                                  avoid_ports=cfg.ports())
        if "mlflow" in names:
            specs["mlflow"] = mlflow_spec(self.state_dir, cfg.mlflow_port, s3_endpoint, credentials, region)
        if "triton" in names:
            if cfg.triton_repository:
                repository = cfg.triton_repository
            elif s3_endpoint:
                repository = triton_s3_uri(s3_endpoint, REPOSITORY_BUCKET, REPOSITORY_PREFIX)
            else:
                repository = str(self.state_dir / "triton" / "models")
            triton = triton_spec(self.state_dir, cfg.triton_http_port, cfg.triton_grpc_port,
                                 cfg.triton_metrics_port, repository, credentials, region)
            if cfg.serve_promoted:
                triton = replace(triton, after_healthy=functools.partial(serve_production_models, triton.url))
            specs["triton"] = triton
        return specs

    def _spawn(self, spec: ServiceSpec) -> process.Pending:
        if spec.name == "triton" and self.config.triton_container:
            return self._spawn_container(spec)
        if spec.before_start:
            spec.before_start()
        record = process.spawn(spec.argv, spec.env, spec.log_file(self.state_dir),
                               spec.pid_file(self.state_dir),
                               cwd=spec.cwd, ports=[p.port for p in spec.ports], url=spec.url,
                               health_url=spec.health_url, extra=spec.extra,
                               die_with_parent=self.config.die_with_parent)
        return process.Pending(spec.name, record, lambda: _healthy(record), spec.log_file(self.state_dir))

    def _stop(self, name: str) -> int | None:
        """Stop a service by its recorded PID; a service container is then removed
        (its output kept in the log)."""
        record = process.read_record(self._pid_file(name))
        pid = process.stop(self._pid_file(name))
        if record is not None and "container" in record.extra:
            client = containers.docker_client()
            containers.copy_logs(client, record.extra["container"], self._log_file(name))
            containers.remove_container(client, record.extra["container"])
        return pid

    def _spawn_container(self, spec: ServiceSpec) -> process.Pending:
        """Triton in its own container (host network, uid 10001, read-only root); its main PID is recorded."""
        client = containers.docker_client()
        image = containers.require_images(client, ["triton-openvino"])[0]
        if spec.before_start:
            spec.before_start()
        name = f"visionnode-triton-{self.config.triton_http_port}"
        ports = {p.role: p.port for p in spec.ports}
        args = ["--repository", spec.extra["repository"], "--http-port", str(ports["HTTP"]),
                "--grpc-port", str(ports["gRPC"]), "--metrics-port", str(ports["metrics"])]
        environment = {k: v for k, v in spec.env.items() if k in CONTAINER_ENV}
        container = containers.start_container(client, containers.ContainerSpec(image, args, name,
                                                                                environment))
        pid = containers.main_pid(container)
        record = ProcessRecord(pid=pid, create_time=psutil.Process(pid).create_time(), argv=[image, *args],
                               ports=list(ports.values()), url=spec.url, health_url=spec.health_url,
                               extra={**spec.extra, "container": name})
        atomic_write_text(spec.pid_file(self.state_dir), record.to_json())
        log_file = spec.log_file(self.state_dir)
        return process.Pending(spec.name, record, lambda: _healthy(record), log_file,
                               refresh_log=lambda: containers.copy_logs(client, name, log_file))

    def _await(self, spec: ServiceSpec, pending: process.Pending) -> ServiceStatus:
        ready_s = process.wait_until_healthy([pending], self.config.startup_timeout_s)
        return self._started_status(spec, pending.record, ready_s[spec.name])

    def _started_status(self, spec: ServiceSpec, record: ProcessRecord, startup_s: float) -> ServiceStatus:
        if spec.after_healthy:
            spec.after_healthy()
        return ServiceStatus(spec.name, running=True, healthy=True, pid=record.pid, url=spec.url,
                             log=str(spec.log_file(self.state_dir)), action="started", startup_s=startup_s)

    def _keep_if_running(self, name: str) -> ServiceStatus | None:
        record = self._record(name)
        if record is None:
            return None
        # Running from an earlier `up`: wait for it (it may still be starting), then keep it.
        process.wait_until_healthy([process.Pending(name, record, lambda: _healthy(record),
                                                    self._log_file(name))],
                                   self.config.startup_timeout_s)
        return ServiceStatus(name, running=True, healthy=True, pid=record.pid, url=record.url,
                             log=str(self._log_file(name)), action="kept")

    def _status(self, name: str) -> ServiceStatus:
        record = self._record(name)
        return ServiceStatus(name, running=record is not None,
                             healthy=record is not None and _healthy(record),
                             pid=record.pid if record else None, url=record.url if record else None,
                             log=str(self._log_file(name)))

    def _external_endpoints(self) -> Endpoints:
        """Settings from the environment only (not from our own stack.json, which may be stale)."""
        return resolve_endpoints(self.state_dir / "no-endpoints-file")

    def _record(self, name: str) -> ProcessRecord | None:
        return process.read_record(self._pid_file(name))

    def _pid_file(self, name: str) -> Path:
        return service_pid_file(self.state_dir, name)

    def _log_file(self, name: str) -> Path:
        return service_log_file(self.state_dir, name)


def _healthy(record: ProcessRecord) -> bool:
    return bool(record.health_url) and process.http_ok(record.health_url)
