"""The Docker engine as the project uses it, through the docker SDK: find the engine, check that the images
docker/build.sh makes are there, run a service container whose main process we own by PID.

Every container runs with host networking (the engine here has no bridge; servers bind 127.0.0.1), as the
images' non-root uid, with a read-only root file system and a tmpfs for /tmp, as the manifests run them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionnode.components.common.adapters.kfp import IMAGE_PREFIX, project_version
from visionnode.components.common.errors import ConfigError, ServiceError

IMAGE_USER = "10001:10001"
BUILD_COMMAND = "make images"   # docker/build.sh behind it
PHASES = ("validate", "shard", "transfer", "train", "quantize", "deploy", "benchmark")


def image_tag(name: str) -> str:
    """`visionnode/<name>:<version>`, as docker/build.sh tags it (component_image() for the phases)."""
    return f"{IMAGE_PREFIX}/{name}:{project_version()}"


def docker_client() -> Any:
    """A client of the local engine, or a one-line error saying how to get one."""
    try:
        import docker
    except ImportError:
        raise ConfigError("the docker Python package is not installed", "pip install docker") from None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # docker.errors.DockerException wraps connection errors of every kind
        raise ServiceError(f"no Docker engine answers ({_first_line(exc)})",
                           "start one (as root: scripts/dockerd.sh start) or set DOCKER_HOST") from None
    return client


def require_images(client: Any, names: Sequence[str]) -> list[str]:
    """The tags of `names`; a one-line error naming the missing ones and the command that builds them."""
    import docker

    tags = [image_tag(name) for name in names]
    missing = []
    for tag in tags:
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            missing.append(tag)
    if missing:
        raise ConfigError(f"image{'s' if len(missing) > 1 else ''} {', '.join(missing)} not built",
                          f"build them with `{BUILD_COMMAND}` (docker/build.sh)")
    return tags


@dataclass
class ContainerSpec:
    """One container run the way the manifests run the images."""

    image: str
    command: list[str]
    name: str
    environment: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[tuple[Path, Path, bool]] = ()   # (host path, container path, read_only)
    tmpfs_size: str = "4g"
    shm_size: str = "256m"

    def run_args(self) -> dict[str, Any]:
        return container_run_args(self.environment, self.mounts, self.tmpfs_size, self.shm_size)


def container_run_args(environment: Mapping[str, str], mounts: Sequence[tuple[Path, Path, bool]] = (),
                       tmpfs_size: str = "4g", shm_size: str = "256m") -> dict[str, Any]:
    """Keyword arguments of the SDK's containers.run (also what kfp.local.DockerRunner passes through)."""
    from docker.types import Mount

    return {
        "network_mode": "host", "user": IMAGE_USER, "read_only": True,
        "tmpfs": {"/tmp": f"rw,exec,size={tmpfs_size}"}, "shm_size": shm_size,
        "environment": dict(environment),
        "mounts": [Mount(target=str(inside), source=str(host), type="bind", read_only=read_only)
                   for host, inside, read_only in mounts],
    }


def unreachable_ancestor(path: Path) -> Path | None:
    """The first directory on the way to `path` that other users (the images' uid) cannot enter, if any."""
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        if directory.is_dir() and not directory.stat().st_mode & 0o001:
            return directory
    return None


def run_task_container(client: Any, image: str, command: list[str], volumes: dict[str, Any],
                       **run_args: Any) -> int:
    """One pipeline task in its container: stream its output, return its real exit code, then remove it.

    Replaces kfp.local's own `run_docker_container`, which runs with auto_remove and reads the exit code after
    the log stream ends: a container killed from outside is often removed by then, and kfp counts the
    missing container as success. Here the container is removed only after its status is read.
    """
    run_args.pop("auto_remove", None)
    container = client.containers.create(image, command, volumes=volumes, **run_args)
    try:
        container.start()
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="", flush=True)
        status = int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)
    if status != 0:
        killed = " (killed)" if status == 137 else ""
        print(f"task container {image} exited with status {status}{killed}", flush=True)
    return status


def start_container(client: Any, spec: ContainerSpec) -> Any:
    """Start `spec` detached (a stopped container of the same name from an earlier run is removed first)."""
    import docker

    remove_container(client, spec.name)
    try:
        container = client.containers.run(spec.image, spec.command, name=spec.name, detach=True,
                                          labels={"org.visionnode.role": "service"}, **spec.run_args())
    except docker.errors.APIError as exc:
        raise ServiceError(f"cannot start container {spec.name} from {spec.image}: {_first_line(exc)}",
                           f"check the image with `docker run --rm {spec.image} --help`") from None
    container.reload()
    return container


def main_pid(container: Any) -> int:
    """The host PID of the container's main process (Triton in the Triton image):
    what `stack down` signals."""
    pid = int(container.attrs["State"]["Pid"])
    if pid <= 0:
        raise ServiceError(f"container {container.name} exited at once: {tail(container)}",
                           f"see `docker logs {container.name}`")
    return pid


def tail(container: Any, lines: int = 5) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").strip()
    except Exception:  # the container may already be gone
        return "no log"
    return " | ".join(text.splitlines()[-lines:]) or "no output"


def copy_logs(client: Any, name: str, log_file: Path) -> None:
    """Write the container's whole output to `log_file` (the stack's log for that service)."""
    import docker

    try:
        output = client.containers.get(name).logs()
    except docker.errors.NotFound:
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_bytes(output)


def remove_container(client: Any, name: str) -> None:
    import docker

    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
