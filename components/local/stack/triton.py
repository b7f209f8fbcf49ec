"""Embedded Triton: the CPU `tritonserver` 2.51 that PyPI's `nvidia-pytriton` ships, with its python backend.

The model repository is either a local directory or an S3 prefix in Triton's own URI syntax,
`s3://host:port/bucket/prefix` (checked: this build's S3 filesystem reads our SeaweedFS, with the
credentials from AWS_* in its environment, and copies a model's files to a temp dir on each load).
Models are loaded and unloaded through the repository API (`--model-control-mode=explicit`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from visionnode.components.common.errors import ConfigError, ServiceError, one_line
from visionnode.components.common.serving.triton import (
    TritonRepository,
    parse_triton_repository,
    production_models,
    triton_http_client,
)
from visionnode.components.common.settings import DEFAULT_REGION, S3Credentials
from visionnode.components.common.storage.s3 import S3Config, s3_client
from visionnode.components.local.stack.process import LOOPBACK, PortSpec, child_env
from visionnode.components.local.stack.service import ServiceSpec

REPOSITORY_BUCKET = "visionnode"
REPOSITORY_PREFIX = "triton-models"
# An S3 "directory" exists only while it holds an object; Triton refuses to start on a missing one.
REPOSITORY_MARKER = ".visionnode-repository"


def triton_s3_uri(endpoint: str, bucket: str, prefix: str) -> str:
    """Triton's spelling of an S3 prefix on a non-AWS server: `s3://host:port/bucket/prefix`."""
    from urllib.parse import urlparse

    parsed = urlparse(endpoint)
    if parsed.scheme != "http" or not parsed.port:
        raise ConfigError(f"Triton cannot use the S3 endpoint {endpoint} as its model repository",
                          "give an http://host:port endpoint or pass --triton-repository DIR")
    return f"s3://{parsed.netloc}/{bucket}/{prefix.strip('/')}"


def tritonserver_dist() -> Path:
    """The `tritonserver/` folder inside the installed pytriton package (found without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("nvidia-pytriton is not installed, so there is no tritonserver",
                           "pip install nvidia-pytriton==0.7.0")
    dist = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServiceError(f"no tritonserver binary in {dist}", "reinstall nvidia-pytriton==0.7.0")
    return dist


def _bundled_libs(dist: Path) -> Path:
    wheel_libs = dist.parent.parent / "nvidia_pytriton.libs"
    return wheel_libs if wheel_libs.is_dir() else dist / "external_libs"


def prepare_backends(dist: Path, target: Path) -> Path:
    """A backend dir holding the python backend plus the stub built for this interpreter's version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServiceError(f"nvidia-pytriton ships no python-backend stub for Python {version}",
                           "use Python 3.8-3.13")
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in [*(dist / "backends" / "python").glob("*.*"), stub]:
        if source.is_file():
            shutil.copy2(source, python_dir / source.name)
    return target


def server_env(dist: Path, repository: TritonRepository, credentials: S3Credentials | None,
               region: str) -> dict[str, str]:
    # The python backend stub links the system libpython: this interpreter's LIBDIR must come first, or
    # model loading fails in multiprocessing.resource_tracker (DESIGN.md).
    lib_dirs = [sysconfig.get_config_var("LIBDIR"), str(_bundled_libs(dist)),
                os.environ.get("LD_LIBRARY_PATH")]
    # The stub's embedded interpreter finds its prefix through `python` on PATH: the venv's bin/ first
    # makes model.py files import numpy, openvino, ... from this environment.
    paths = [sysconfig.get_path("scripts"), os.environ.get("PATH")]
    env: dict[str, str | None] = {
        "LD_LIBRARY_PATH": os.pathsep.join(p for p in lib_dirs if p),
        "PATH": os.pathsep.join(p for p in paths if p),
    }
    if repository.is_s3:
        env["AWS_DEFAULT_REGION"] = region
        if credentials:
            env.update(credentials.as_env())
    return child_env(env)


def ensure_repository(repository: TritonRepository, credentials: S3Credentials | None, region: str) -> None:
    if repository.local_dir is not None:
        repository.local_dir.mkdir(parents=True, exist_ok=True)
        return
    assert repository.location is not None
    client = s3_client(S3Config(endpoint=repository.endpoint, credentials=credentials, region=region))
    marker = repository.location.child(REPOSITORY_MARKER)
    try:
        client.put_object(Bucket=marker.bucket, Key=marker.key, Body=b"visionnode triton model repository\n")
    except Exception as exc:  # botocore's ClientError / EndpointConnectionError
        raise ServiceError(f"cannot prepare the Triton model repository {repository.uri}: {exc}",
                           "check that the bucket exists and the S3 credentials") from None


def triton_spec(state_dir: Path, http_port: int, grpc_port: int, metrics_port: int, repository: str,
                credentials: S3Credentials | None = None, region: str = DEFAULT_REGION,
                address: str = LOOPBACK) -> ServiceSpec:
    dist = tritonserver_dist()
    home = state_dir / "triton"
    repo = parse_triton_repository(repository)
    backends = home / "backends"
    argv = [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repo.uri}",
        "--model-control-mode=explicit",
        f"--backend-directory={backends}",
        f"--cache-directory={dist / 'caches'}",
        f"--http-address={address}", f"--http-port={http_port}",
        f"--grpc-address={address}", f"--grpc-port={grpc_port}",
        f"--metrics-address={address}", f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false", "--exit-timeout-secs=10", "--log-verbose=0",
        # Server-side latency percentiles (nv_inference_*_summary_us{quantile=...}) beside the cumulative
        # sums.
        "--metrics-config=summary_latencies=true",
        # Server readiness means "the server answers", not "every model ever loaded is ready": one failed
        # model
        # load (which deploy reports with Triton's own message) must not make the whole service look down.
        "--strict-readiness=false",
    ]
    ports = [PortSpec(http_port, "HTTP", "--triton-http-port"), PortSpec(grpc_port, "gRPC",
                                                                         "--triton-grpc-port"),
             PortSpec(metrics_port, "metrics", "--triton-metrics-port")]

    def before_start() -> None:
        prepare_backends(dist, backends)
        ensure_repository(repo, credentials, region)

    host = local_address(address)
    return ServiceSpec(
        name="triton", argv=argv, env=server_env(dist, repo, credentials, region), ports=ports,
        url=f"{host}:{http_port}", health_url=f"http://{host}:{http_port}/v2/health/ready",
        extra={"grpc": f"{host}:{grpc_port}", "metrics": f"{host}:{metrics_port}", "repository": repo.uri},
        cwd=home, before_start=before_start,
    )


def serve_production_models(http_url: str, timeout_s: float = 600.0) -> None:
    """Load what promote left serving. Triton (explicit model control) starts with nothing
    loaded, so without this a restarted stack would serve no champion and the next candidate would be judged
    against none. Staged candidates stay unloaded, as in a restarted pod (manifests/base/triton_models.py)."""
    client = triton_http_client(http_url, timeout_s)
    names = production_models([entry["name"] for entry in client.get_model_repository_index()])
    for name in names:
        try:
            client.load_model(name)
        except Exception as exc:  # tritonclient's InferenceServerException, or a timeout
            raise ServiceError(f"Triton could not load the served model '{name}' from its repository "
                               f"({one_line(exc)})", "deploy and promote a model that loads, or remove "
                               f"'{name}' from the repository; see the Triton log") from None


def local_address(address: str) -> str:
    """Where this machine reaches a server bound to `address`: loopback for the wildcard (all interfaces)."""
    import ipaddress

    try:
        return LOOPBACK if ipaddress.ip_address(address).is_unspecified else address
    except ValueError:  # a host name
        return address


def exec_triton(spec: ServiceSpec) -> None:
    """Replace this process with tritonserver (the Triton image's entrypoint:
    Triton is PID 1 and gets SIGTERM)."""
    if spec.before_start:
        spec.before_start()
    os.execve(spec.argv[0], spec.argv, spec.env)
