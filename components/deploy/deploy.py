"""Deploy the INT8 model to Triton: generate the model repository, publish it, load it, check its answers.

Steps (each a small function below):
1. check the quantize output (model.json + IR whose input really is uint8 [N, S, S, 3]);
2. generate version N+1 of `<name>` (python backend, OpenVINO IR) and `<name>_jpeg` (encoded images) plus
   the native `openvino` backend variant (`<repository>-openvino`, for official Triton images; not served);
3. publish: into the repository the running Triton reads (`resolve_endpoints().triton_repository`, a local
   dir or S3) and, when `--repository` names another place, a copy there too (e.g. s3:// for a cluster);
4. load through Triton's repository API (explicit model control). Triton keeps serving version N until
   N+1 is ready, then unloads N (`version_policy: latest 1`): no downtime for in-flight requests;
5. ask Triton for sample images (tensor model, and PNG bytes through the JPEG model) and compare the
   top-1 with local OpenVINO inference on the same IR.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.artifacts import MODEL_METADATA_FILE, InferenceMetadata
from visionnode.components.common.errors import ConfigError, DataError, ServiceError, one_line
from visionnode.components.common.serving.triton import STACK_HINT, ready_version, triton_http_client
from visionnode.components.common.settings import resolve_endpoints
from visionnode.components.deploy.answers import AnswerCheck, check_answers
from visionnode.components.deploy.config import DeployConfig
from visionnode.components.deploy.publish import publish, remote_versions, repository_targets
from visionnode.components.deploy.repository import (
    JPEG_SUFFIX,
    serving_input_spec,
    write_openvino_backend_model,
    write_served_models,
)

OPENVINO_VARIANT_SUFFIX = "-openvino"


@dataclass
class DeployResult:
    model_name: str
    jpeg_model_name: str
    model_version: int
    previous_version: int | None
    http_url: str
    grpc_url: str
    triton_repository: str          # the repository Triton loaded the model from
    published: list[str]            # every place the served repository was written
    openvino_backend_repository: str
    input_name: str
    input_shape: list[int]
    load_s: float
    check: AnswerCheck

    def metrics(self) -> dict[str, float]:
        return {"model_version": float(self.model_version), "load_s": self.load_s,
                "top1_agreement": self.check.top1_agreement,
                "jpeg_top1_agreement": self.check.jpeg_top1_agreement,
                "max_abs_logit_diff": self.check.max_abs_logit_diff}


def check_model_dir(model_dir: Path) -> InferenceMetadata:
    """The quantize output's metadata, with the IR's real input checked against it (wrong input spec)."""
    if not (Path(model_dir) / MODEL_METADATA_FILE).is_file():
        raise DataError(f"{model_dir} has no {MODEL_METADATA_FILE}",
                        "point --model at the output directory of `visionnode quantize`")
    meta = InferenceMetadata.load(model_dir)
    spec = serving_input_spec(meta)
    xml = Path(model_dir) / meta.ir_xml
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        raise DataError(f"{xml} (and its .bin) do not exist", "re-run `visionnode quantize`")
    import openvino as ov

    ir_input = ov.Core().read_model(str(xml)).inputs[0]
    ir_shape = [d.get_length() if d.is_static else -1 for d in ir_input.get_partial_shape()]
    ir_type = ir_input.get_element_type().get_type_name()
    expected = [-1, *spec.shape[1:]]
    if ir_type != "u8" or len(ir_shape) != 4 or ir_shape[1:] != expected[1:] or ir_shape[0] not in (-1,):
        raise DataError(f"wrong input spec: {xml.name} takes {ir_type} {ir_shape} but model.json promises "
                        f"uint8 {expected} (input '{spec.name}')",
                        "re-export with quantize; the serving graph takes uint8 NHWC with a dynamic batch")
    return meta


# ------------------------------------------------------------------ loading
def load_and_wait(client, name: str, version: int, timeout_s: float) -> float:
    """Load (or reload) `name` through the repository API and wait until `version` is ready; seconds taken."""
    from tritonclient.utils import InferenceServerException

    began = time.monotonic()
    try:
        client.load_model(name)
    except InferenceServerException as exc:
        raise ServiceError(f"Triton could not load model '{name}': {_triton_message(exc)}",
                           "see the Triton log (`visionnode stack status`)") from None
    except Exception as exc:  # the load call timed out or the connection dropped
        raise ServiceError(f"Triton did not finish loading '{name}' ({one_line(exc)})",
                           "see the Triton log; raise --load-timeout for a slow first compile") from None
    while not client.is_model_ready(name, str(version)):
        if time.monotonic() - began > timeout_s:
            raise ServiceError(f"model '{name}' version {version} is not ready after {timeout_s:.0f} s",
                               "see the Triton log (`visionnode stack status`)")
        time.sleep(0.2)
    return time.monotonic() - began


def check_served_input(client, name: str, version: int, meta: InferenceMetadata) -> None:
    served = client.get_model_metadata(name, str(version))["inputs"][0]
    expected = {"name": meta.input.name, "datatype": "UINT8", "shape": [-1, *meta.input.shape[1:]]}
    got = {"name": served["name"], "datatype": served["datatype"], "shape": [int(d) for d in served["shape"]]}
    if got != expected:
        raise ConfigError(f"wrong input spec: Triton serves '{name}' with {got}, expected {expected}",
                          "another model of that name is in the repository; pass --name")


# ------------------------------------------------------------------ the phase
@dataclass
class _Preflight:
    meta: InferenceMetadata
    http_url: str
    grpc_url: str
    client: object          # tritonclient.http.InferenceServerClient, reachable


def preflight(config: DeployConfig) -> _Preflight:
    """Everything that can be wrong before anything is written:
    settings, the model files, Triton's address."""
    config.validate()
    meta = check_model_dir(Path(config.model_dir))
    endpoints = resolve_endpoints()
    http_url = config.triton_http or endpoints.triton_http
    if not http_url:
        raise ConfigError("no Triton address is known", STACK_HINT)
    client = triton_http_client(http_url, config.load_timeout_s)
    return _Preflight(meta, http_url, config.triton_grpc or endpoints.triton_grpc or "", client)


def deploy(config: DeployConfig) -> DeployResult:
    """The deploy phase, tracked in MLflow (a no-op without a tracking URI)."""
    from visionnode.components.common.tracking import tracked_run

    checked = preflight(config)  # a user mistake fails here, before an MLflow run is opened
    with tracked_run("deploy", tags={"phase": "deploy", "model_name": config.model_name}) as tracker:
        result = deploy_model(config, checked)
        tracker.log_params({"model_name": result.model_name, "model_version": result.model_version,
                            "triton_repository": result.triton_repository, "published": result.published,
                            "max_batch_size": config.serving.max_batch_size,
                            "preferred_batch_sizes": config.serving.preferred_batch_sizes,
                            "max_queue_delay_us": config.serving.max_queue_delay_us})
        tracker.log_metrics(result.metrics())
    return result


def deploy_model(config: DeployConfig, checked: _Preflight | None = None) -> DeployResult:
    checked = checked or preflight(config)
    meta, http_url, grpc_url, client = checked.meta, checked.http_url, checked.grpc_url, checked.client
    endpoints = resolve_endpoints()
    served_from, targets = repository_targets(config.repository, endpoints.triton_repository)
    names = [config.model_name, config.model_name + JPEG_SUFFIX]
    previous = ready_version(client, config.model_name)
    version = config.version or max([0, *remote_versions(served_from, config.model_name),
                                     *([previous] if previous else [])]) + 1
    ov_target = targets[-1].sibling(OPENVINO_VARIANT_SUFFIX)
    with tempfile.TemporaryDirectory(prefix="visionnode-deploy-") as tmp:
        staging, ov_staging = Path(tmp) / "python", Path(tmp) / "openvino"
        write_served_models(staging, config.model_name, version, Path(config.model_dir), meta, config.serving)
        write_openvino_backend_model(ov_staging, config.model_name, version, Path(config.model_dir), meta,
                                     config.serving)
        for target in targets:
            publish(staging, target, names, version)
        publish(ov_staging, ov_target, [config.model_name], version)
    load_s = load_and_wait(client, config.model_name, version, config.load_timeout_s)
    load_s += load_and_wait(client, names[1], version, config.load_timeout_s)
    check_served_input(client, config.model_name, version, meta)
    check = check_answers(client, config, meta)
    return DeployResult(
        model_name=config.model_name, jpeg_model_name=names[1], model_version=version,
        previous_version=previous,
        http_url=http_url, grpc_url=grpc_url, triton_repository=served_from.uri,
        published=[t.uri for t in targets], openvino_backend_repository=ov_target.uri,
        input_name=meta.input.name, input_shape=[-1, *meta.input.shape[1:]], load_s=round(load_s, 2),
        check=check)


def _triton_message(exc: Exception) -> str:
    """Triton's own load error in one line (its python tracebacks follow an 'At:' line)."""
    text = getattr(exc, "message", lambda: str(exc))() or str(exc)
    text = text.split("\n\nAt:")[0]
    return " ".join(text.split())[:400]
