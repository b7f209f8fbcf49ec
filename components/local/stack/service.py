"""What the stack needs to know to run one embedded server: the command, its ports and its health URL."""

from __future__ import annotations

import shutil
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from visionnode.components.common.errors import ServiceError
from visionnode.components.local.stack.process import PortSpec


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    ports: list[PortSpec]
    url: str
    health_url: str
    extra: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    before_start: Callable[[], None] | None = None  # runs after the port check, before spawning
    after_healthy: Callable[[], None] | None = None  # e.g. create buckets

    def pid_file(self, state_dir: Path) -> Path:
        return service_pid_file(state_dir, self.name)

    def log_file(self, state_dir: Path) -> Path:
        return service_log_file(state_dir, self.name)


def service_pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.pid"


def service_log_file(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def venv_executable(name: str, package: str) -> str:
    """A console script installed beside the running interpreter (the venv's bin/), else on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ServiceError(f"the `{name}` executable is not installed", f"pip install {package}")
