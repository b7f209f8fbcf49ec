"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint with `kfp.Client`.

Runs are created from a pipeline version (uploaded once per distinct compiled spec), so the KFP UI groups
them. `kfp.Client.run_pipeline(enable_caching=False)` cannot turn caching off for such a run: the SDK applies
it only to a pipeline package it sends inline (kfp/client/client.py `_create_job_config`; kubeflow/pipelines
#14253), and a run by version id is created with the version's spec as uploaded. So `--no-cache` submits a
version of its own whose every task has caching off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visionnode.components.common.adapters.kfp import project_version
from visionnode.components.common.errors import ConfigError, ServiceError
from visionnode.components.common.jsonio import atomic_write_text
from visionnode.pipeline.compile import compile_pipeline, compiled_spec, parameter_defaults
from visionnode.pipeline.params import check_params
from visionnode.pipeline.pipeline import PIPELINE_NAME

TOKEN_ENV = "KF_PIPELINES_TOKEN"


@dataclass
class SubmitConfig:
    host: str
    experiment: str = "visionnode"
    params: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None
    namespace: str | None = None
    no_cache: bool = False          # every task of this run runs, none is served from KFP's cache


@dataclass
class SubmitResult:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str
    run_url: str


def submit_pipeline(config: SubmitConfig) -> SubmitResult:
    """Upload the pipeline (or a new version of it, named by content hash), create the run, return its URL."""
    if "data_uri" not in config.params:
        raise ConfigError("the pipeline needs --param data_uri=...",
                          "e.g. --param data_uri=s3://datasets/imagenet (ImageNet layout)")
    check_params(parameter_defaults(compiled_spec()) | config.params, local=False)
    _preflight(config.host)
    client = _call(config.host, _client, config)
    with tempfile.TemporaryDirectory() as scratch:
        package = compile_pipeline(Path(scratch) / "pipeline.yaml")
        if config.no_cache:
            package = without_caching(package)
        pipeline_id, version_id = _upload(client, config.host, package,
                                          suffix="-nocache" if config.no_cache else "")
    experiment = _call(config.host, client.create_experiment, name=config.experiment,
                       namespace=config.namespace)
    run = _call(config.host, client.run_pipeline, experiment_id=experiment.experiment_id,
                job_name=config.run_name or f"{PIPELINE_NAME}-{project_version()}", params=config.params,
                pipeline_id=pipeline_id, version_id=version_id)
    url = f"{config.host.rstrip('/')}/#/runs/details/{run.run_id}"
    return SubmitResult(pipeline_id, version_id, experiment.experiment_id, run.run_id, url)


def _client(config: SubmitConfig) -> Any:
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore",
                              FutureWarning)  # "only works with KFP >= 2.0.0-beta.2": we require 2.x
        return kfp.Client(host=config.host, existing_token=os.environ.get(TOKEN_ENV),
                          namespace=config.namespace)


def _preflight(host: str) -> None:
    """One quick health probe, because kfp.Client retries its own probe for ~25 s before giving up."""
    from urllib.parse import urlparse

    parsed = urlparse(host)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"--host {host!r} is not a URL",
                          "give the KFP API endpoint as http(s)://host:port, "
                                                           "e.g. http://localhost:8080")
    request = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/healthz")
    if os.environ.get(TOKEN_ENV):
        request.add_header("Authorization", f"Bearer {os.environ[TOKEN_ENV]}")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return
    except urllib.error.HTTPError as exc:
        raise _http_error(host, exc.code, exc.reason) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(host, getattr(exc, "reason", exc)) from None


def without_caching(package: Path) -> Path:
    """The compiled package with caching off on every task, in the root DAG and in every DAG it nests (the
    exit handler's, the promotion conditions'); the pipeline spec is the first YAML document."""
    from visionnode.pipeline.compile import dag_tasks

    documents = list(yaml.safe_load_all(package.read_text()))
    for task in dag_tasks(documents[0]).values():
        task["cachingOptions"] = {"enableCache": False}
    return atomic_write_text(package, yaml.safe_dump_all(documents, sort_keys=True))


def _upload(client: Any, host: str, package: Path, suffix: str = "") -> tuple[str, str]:
    """Same pipeline name every time; each distinct compiled spec becomes one version
    (re-submits reuse it)."""
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
    version_name = f"{project_version()}-{digest}{suffix}"
    pipeline_id = _call(host, client.get_pipeline_id, PIPELINE_NAME)
    if pipeline_id is None:
        pipeline = _call(host, client.upload_pipeline, str(package), pipeline_name=PIPELINE_NAME,
                         description="ResNet-152 on ImageNet-1K, end to end")
        pipeline_id = pipeline.pipeline_id
    existing = _call(host, client.list_pipeline_versions, pipeline_id=pipeline_id, page_size=200)
    for version in existing.pipeline_versions or []:
        if version.display_name == version_name:
            return pipeline_id, version.pipeline_version_id
    version = _call(host, client.upload_pipeline_version, str(package), pipeline_version_name=version_name,
                    pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def _call(host: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Turn the KFP client's transport and HTTP errors into one-line messages."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        raise _http_error(host, exc.status, exc.reason) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unreachable(host, type(exc).__name__) from None


def _http_error(host: str, status: int, reason: object) -> ServiceError:
    if status in (401, 403):
        return ServiceError(f"KFP at {host} rejected the request ({status} {reason})",
                            f"set {TOKEN_ENV} to a valid token for this endpoint")
    return ServiceError(f"KFP at {host} answered {status} {reason}",
                        "check that --host is the KFP API (ml-pipeline-ui or the Istio gateway) and its logs")


def _unreachable(host: str, reason: object) -> ServiceError:
    return ServiceError(f"KFP at {host} is unreachable ({reason})",
                        "check --host (e.g. http://localhost:8080 after "
                        "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)")
