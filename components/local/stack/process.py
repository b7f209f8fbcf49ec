"""Run one server as a background process we own: log file, PID file, health check, stop by PID.

A PID file holds the PID *and* the process start time, so a recycled PID is never mistaken for our server
and `stop` only ever signals processes this stack started (plus their own children).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from visionnode.components.common.errors import ConfigError, ServiceError
from visionnode.components.common.jsonio import atomic_write_text

LOOPBACK = "127.0.0.1"
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class PortSpec:
    """A port a service listens on and the flag a user changes it with (None: chosen automatically)."""

    port: int
    role: str
    flag: str | None = None


@dataclass
class ProcessRecord:
    """What the PID file stores about a started server."""

    pid: int
    create_time: float
    argv: list[str]
    ports: list[int] = field(default_factory=list)
    url: str | None = None
    health_url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # further addresses (e.g. Triton gRPC, metrics)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel says is free right now (bind to port 0)."""
    return free_ports(1, host=host)[0]


def free_ports(count: int, avoid: Collection[int] = (), host: str = LOOPBACK) -> list[int]:
    """`count` different ports the kernel says are free right now, none of them in `avoid`.

    Every socket stays bound until all are picked: a bind to port 0 after the last one closed can return the
    same port again (800 picks one by one held 34 repeats here; CI once gave Triton's gRPC and metrics one).
    """
    picked: list[int] = []
    with contextlib.ExitStack() as held:
        while len(picked) < count:
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                picked.append(port)
    return picked


def ensure_ports_distinct(ports_by_service: Mapping[str, Sequence[PortSpec]]) -> None:
    """Two servers (or two roles of one) told to listen on one port: refuse before anything starts."""
    owners: dict[int, str] = {}
    for service, ports in ports_by_service.items():
        for spec in ports:
            owner = f"{service} {spec.role}" + (f" ({spec.flag})" if spec.flag else "")
            if spec.port in owners:
                raise ConfigError(f"{owners[spec.port]} and {owner} are both set to port {spec.port}",
                                  "give each its own port")
            owners[spec.port] = owner


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts connections on (host, port) or the port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a port whose old connections linger in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def ensure_ports_free(service: str, ports: Sequence[PortSpec], host: str = LOOPBACK) -> None:
    for spec in ports:
        if port_in_use(spec.port, host):
            hint = (f"choose another with {spec.flag}" if spec.flag else "retry; it was picked automatically")
            raise ServiceError(f"port {spec.port} on {host} ({service} {spec.role}) is already in use",
                               f"{hint}, or stop what holds it")


def read_record(pid_file: Path) -> ProcessRecord | None:
    """The record of a server that is still running, else None (a stale PID file is removed)."""
    if not pid_file.is_file():
        return None
    try:
        record = ProcessRecord(**json.loads(pid_file.read_text()))
    except (json.JSONDecodeError, TypeError):
        pid_file.unlink(missing_ok=True)
        return None
    if is_running(record):
        return record
    pid_file.unlink(missing_ok=True)
    return None


def spawn(argv: Sequence[str], env: Mapping[str, str], log_file: Path, pid_file: Path,
          cwd: Path | None = None,
          ports: Sequence[int] = (), url: str | None = None, health_url: str | None = None,
          extra: Mapping[str, str] | None = None, die_with_parent: bool = False) -> ProcessRecord:
    """Start `argv` detached (own session, survives this CLI), output appended to `log_file`.

    `die_with_parent` (Linux): the server gets SIGTERM when the process that started it dies, so a test
    session killed by a timeout leaves no server behind.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_term_on_parent_death if die_with_parent else None)
        except OSError as exc:
            raise ServiceError(f"cannot start {argv[0]}: {exc.strerror}",
                               "reinstall the package that ships it (pip install -e .)") from None
    record = ProcessRecord(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(), argv=list(argv),
                           ports=list(ports), url=url, health_url=health_url, extra=dict(extra or {}))
    atomic_write_text(pid_file, record.to_json())
    return record


@dataclass
class Pending:
    """A started server whose health check has not passed yet."""

    name: str
    record: ProcessRecord
    is_healthy: Callable[[], bool]
    log_file: Path
    started_at: float = field(default_factory=time.monotonic)
    refresh_log: Callable[[], None] | None = None  # brings log_file up to date (a container's output)

    def last_log_line(self) -> str:
        if self.refresh_log is not None:
            self.refresh_log()
        return last_log_line(self.log_file)


def wait_until_healthy(pending: Sequence[Pending], timeout_s: float) -> dict[str, float]:
    """Poll every health check until all pass; fail early when a process dies.

    Returns seconds from each server's start to its first passing check (the servers start side by side).
    """
    ready: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while len(ready) < len(pending):
        for item in pending:
            if item.name in ready:
                continue
            if not is_running(item.record):
                raise ServiceError(f"{item.name} exited during start-up: {item.last_log_line()}",
                                   f"see {item.log_file}")
            if item.is_healthy():
                ready[item.name] = round(time.monotonic() - item.started_at, 2)
        if len(ready) < len(pending):
            if time.monotonic() > deadline:
                late = [p for p in pending if p.name not in ready]
                raise ServiceError(f"{', '.join(p.name for p in late)} did not become healthy within "
                                   f"{timeout_s:.0f} s (last log line: {late[0].last_log_line()})",
                                   f"see the logs in {pending[0].log_file.parent}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.3)
    return ready


def stop(pid_file: Path, term_timeout_s: float = 15.0) -> int | None:
    """SIGTERM the recorded process and its children, SIGKILL what is left after the timeout.
    Returns its PID."""
    record = read_record(pid_file)
    if record is None:
        return None
    try:
        main = psutil.Process(record.pid)
        # The whole family is ours (MLflow's uvicorn worker, Triton's python-backend stubs): signal it at once
        # rather than waiting for a parent to reap its children one by one.
        family = [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        pid_file.unlink(missing_ok=True)
        return None
    _signal_all(family, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=term_timeout_s)
    _signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    pid_file.unlink(missing_ok=True)
    return record.pid


def wait_ports_closed(ports: Sequence[int], timeout_s: float = 10.0, host: str = LOOPBACK) -> list[int]:
    """Ports still accepting connections after `timeout_s` (empty when all closed)."""
    deadline = time.monotonic() + timeout_s
    open_ports = list(ports)
    while open_ports and time.monotonic() < deadline:
        open_ports = [p for p in open_ports if _accepts(p, host)]
        if open_ports:
            time.sleep(0.2)
    return open_ports


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when GET `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url,
                                    timeout=timeout_s) as response:  # noqa: S310 (loopback URLs we built)
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def last_log_line(log_file: Path) -> str:
    try:
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines[-LOG_TAIL_LINES:] if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def is_running(record: ProcessRecord) -> bool:
    try:
        proc = psutil.Process(record.pid)
        return abs(proc.create_time() - record.create_time) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _term_on_parent_death() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _accepts(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _signal_all(procs: Sequence[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def child_env(extra: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with `extra` applied; a None value removes the variable."""
    env = dict(os.environ)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
