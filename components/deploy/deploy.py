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

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionnode.components.common.artifacts import MODEL_METADATA_FILE, InferenceMetadata
from visionnode.components.common.errors import (ConfigError, DataError, IntegrityError, ServiceError)
from visionnode.components.common.progress import PROBE_TIMEOUT_S, waiting_for
from visionnode.components.common.settings import resolve_endpoints, resolve_s3_credentials
from visionnode.components.common.storage import S3Config, S3Location, resolve_s3_config, s3_client

from .repository import (CONFIG_FILE, JPEG_INPUT, JPEG_SUFFIX, LABELS_FILE, ServingConfig, existing_versions,
                         serving_input_spec, write_openvino_backend_model, write_served_models)
from .samples import encode_png, sample_images

DEFAULT_MODEL_NAME = "resnet152_int8"
OPENVINO_VARIANT_SUFFIX = "-openvino"
STACK_HINT = "start the embedded stack with `visionnode stack up` or pass --triton-url HOST:PORT"


@dataclass
class DeployConfig:
    model_dir: Path
    repository: str = ""          # extra place to publish (s3://bucket/prefix or a dir); "" = only Triton's own
    triton_http: str = ""         # "" = from settings (env / stack.json)
    triton_grpc: str = ""
    model_name: str = DEFAULT_MODEL_NAME
    version: int | None = None    # None = one above the newest in the repository
    shards: str | None = None     # val shards for the answer check; None = seeded random images
    check_images: int = 16
    load_timeout_s: float = 600.0
    serving: ServingConfig = field(default_factory=ServingConfig)

    def validate(self) -> None:
        self.serving.validate()
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(f"model name '{self.model_name}' is not a valid Triton model name",
                              "use letters, digits, - and _ (e.g. resnet152_int8)")


@dataclass
class AnswerCheck:
    images: int
    source: str
    top1_agreement: float          # tensor model vs local OpenVINO
    jpeg_top1_agreement: float     # PNG bytes through <name>_jpeg vs local OpenVINO
    max_abs_logit_diff: float
    classification_label: str      # Triton's classification extension answer for the first image


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

    def as_metrics(self) -> dict[str, float]:
        return {"model_version": float(self.model_version), "load_s": self.load_s,
                "top1_agreement": self.check.top1_agreement,
                "jpeg_top1_agreement": self.check.jpeg_top1_agreement,
                "max_abs_logit_diff": self.check.max_abs_logit_diff}


# ------------------------------------------------------------------ where the repository lives
@dataclass(frozen=True)
class RepositoryTarget:
    """A model repository: a local dir, or an S3 prefix reached through `s3` (endpoint + credentials)."""

    uri: str
    local_dir: Path | None = None
    location: S3Location | None = None
    s3: S3Config | None = None

    @property
    def identity(self) -> tuple:
        if self.local_dir is not None:
            return ("dir", str(self.local_dir.resolve()))
        assert self.location is not None and self.s3 is not None
        return ("s3", self.s3.endpoint, self.location.bucket, self.location.key.strip("/"))

    def sibling(self, suffix: str) -> "RepositoryTarget":
        if self.local_dir is not None:
            return RepositoryTarget(self.uri + suffix, local_dir=self.local_dir.with_name(self.local_dir.name + suffix))
        assert self.location is not None
        key = self.location.key.rstrip("/") + suffix
        return RepositoryTarget(self.uri.rstrip("/") + suffix, location=S3Location(self.location.bucket, key),
                                s3=self.s3)


def parse_repository(uri: str) -> RepositoryTarget:
    """A dir, `s3://bucket/prefix` (on the configured S3 endpoint) or Triton's `s3://host:port/bucket/prefix`."""
    from visionnode.components.common.stack.triton import parse_triton_repository

    parsed = parse_triton_repository(uri)
    if parsed.local_dir is not None:
        return RepositoryTarget(uri, local_dir=parsed.local_dir)
    if parsed.endpoint is None:
        return RepositoryTarget(uri, location=parsed.location, s3=resolve_s3_config())
    config = S3Config(endpoint=parsed.endpoint, credentials=resolve_s3_credentials(),
                      region=resolve_endpoints().s3_region)
    return RepositoryTarget(uri, location=parsed.location, s3=config)


def repository_targets(user_repository: str, triton_repository: str | None) -> tuple[RepositoryTarget, list[RepositoryTarget]]:
    """(the repository Triton loads from, every repository to publish to)."""
    targets: list[RepositoryTarget] = []
    for uri in (triton_repository, user_repository):
        if uri:
            target = parse_repository(uri)
            if target.identity not in {t.identity for t in targets}:
                targets.append(target)
    if not targets:
        raise ConfigError("no model repository is known",
                          "pass --repository s3://bucket/prefix|DIR, or start the stack (`visionnode stack up`)")
    return targets[0], targets


def remote_versions(target: RepositoryTarget, name: str) -> list[int]:
    if target.local_dir is not None:
        return existing_versions(target.local_dir / name)
    assert target.location is not None
    prefix = target.location.child(name).key.rstrip("/") + "/"
    try:
        pages = s3_client(target.s3).get_paginator("list_objects_v2").paginate(
            Bucket=target.location.bucket, Prefix=prefix, Delimiter="/")
        names = [p["Prefix"][len(prefix):].strip("/") for page in pages for p in page.get("CommonPrefixes", [])]
    except Exception as exc:  # botocore raises ClientError / EndpointConnectionError / NoCredentialsError
        raise ServiceError(f"cannot list {target.uri}/{name}: {_one_line(exc)}",
                           "check the S3 endpoint, bucket and credentials") from None
    return sorted(int(n) for n in names if n.isdigit())


def publish(staging: Path, target: RepositoryTarget, model_names: list[str], version: int) -> None:
    """Copy `<staging>/<model>/` into `target`: the version dir first, config.pbtxt last, so a reader never
    sees a config naming files that are not there yet."""
    for name in model_names:
        source = staging / name
        ordered = sorted((p for p in (source / str(version)).rglob("*") if p.is_file()))
        ordered += [source / n for n in (LABELS_FILE, CONFIG_FILE) if (source / n).is_file()]
        if target.local_dir is not None:
            _publish_local(source, target.local_dir / name, version, ordered)
        else:
            _publish_s3(source, target, name, ordered)


def _publish_local(source: Path, model_dir: Path, version: int, files: list[Path]) -> None:
    version_dir = model_dir / str(version)
    partial = model_dir / f".{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source / str(version), partial)
    shutil.rmtree(version_dir, ignore_errors=True)
    partial.rename(version_dir)
    for name in (n for n in (LABELS_FILE, CONFIG_FILE) if (source / n).is_file()):
        tmp = model_dir / f".{name}.partial"
        shutil.copyfile(source / name, tmp)
        tmp.replace(model_dir / name)


def _publish_s3(source: Path, target: RepositoryTarget, name: str, files: list[Path]) -> None:
    assert target.location is not None
    client = s3_client(target.s3)
    base = target.location.child(name)
    for path in files:
        key = base.child(path.relative_to(source).as_posix()).key
        try:
            client.upload_file(str(path), base.bucket, key)
        except Exception as exc:  # boto3 S3UploadFailedError / ClientError / EndpointConnectionError
            raise ServiceError(f"cannot upload {path.name} to s3://{base.bucket}/{key}: {_one_line(exc)}",
                               "check the S3 endpoint, bucket and credentials") from None


# ------------------------------------------------------------------ the model and its check
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


def local_logits(xml: Path, images: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    outputs = []
    for start in range(0, len(images), 8):
        request.infer({0: images[start:start + 8]})
        outputs.append(request.get_output_tensor(0).data.copy())
    return np.concatenate(outputs)


def _agreement(reference: np.ndarray, served: np.ndarray) -> float:
    """Fraction of images whose served top-1 is the local top-1 (a near-tie within 1e-3 of the logit range
    counts as agreeing: INT8 kernels may round differently per batch size)."""
    local_top, served_top = reference.argmax(1), served.argmax(1)
    spread = np.maximum(reference.max(1) - reference.min(1), 1e-6)
    gap = reference[np.arange(len(reference)), local_top] - reference[np.arange(len(reference)), served_top]
    return float(np.mean((local_top == served_top) | (gap <= 1e-3 * spread)))


def triton_http_client(url: str, timeout_s: float = 60.0):
    """A client for Triton's HTTP API, after a liveness probe that gives up within PROBE_TIMEOUT_S."""
    import tritonclient.http as httpclient

    probe = httpclient.InferenceServerClient(url, connection_timeout=PROBE_TIMEOUT_S, network_timeout=PROBE_TIMEOUT_S)
    try:
        with waiting_for("Triton", url):
            live = probe.is_server_live()
    except Exception as exc:  # connection refused / DNS / timeout all surface as different types
        raise ServiceError(f"Triton at {url} is not reachable or did not answer within {PROBE_TIMEOUT_S:.0f} s "
                           f"({_one_line(exc)})", STACK_HINT) from None
    finally:
        probe.close()
    if not live:
        raise ServiceError(f"Triton at {url} answers but is not live", STACK_HINT)
    return httpclient.InferenceServerClient(url, connection_timeout=PROBE_TIMEOUT_S, network_timeout=timeout_s)


def _infer_http(client, model: str, inputs: list, output: str, class_count: int = 0) -> object:
    import tritonclient.http as httpclient

    return client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(output, class_count=class_count)])


def served_logits(client, name: str, meta: InferenceMetadata, images: np.ndarray, batch: int) -> np.ndarray:
    import tritonclient.http as httpclient

    outputs = []
    for start in range(0, len(images), batch):
        part = np.ascontiguousarray(images[start:start + batch])
        tensor = httpclient.InferInput(meta.input.name, list(part.shape), "UINT8")
        tensor.set_data_from_numpy(part)
        outputs.append(_infer_http(client, name, [tensor], meta.output.name).as_numpy(meta.output.name))
    return np.concatenate(outputs)


def served_jpeg_logits(client, name: str, meta: InferenceMetadata, images: np.ndarray, batch: int) -> np.ndarray:
    import tritonclient.http as httpclient

    outputs = []
    for start in range(0, len(images), batch):
        encoded = np.array([[encode_png(im)] for im in images[start:start + batch]], dtype=np.object_)
        tensor = httpclient.InferInput(JPEG_INPUT, list(encoded.shape), "BYTES")
        tensor.set_data_from_numpy(encoded)
        outputs.append(_infer_http(client, name, [tensor], meta.output.name).as_numpy(meta.output.name))
    return np.concatenate(outputs)


def classification_label(client, name: str, meta: InferenceMetadata, image: np.ndarray) -> tuple[int, str]:
    """Triton's classification extension for one image: (class index, label from labels.txt)."""
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(meta.input.name, [1, *image.shape], "UINT8")
    tensor.set_data_from_numpy(image[None])
    answer = _infer_http(client, name, [tensor], meta.output.name, class_count=1).as_numpy(meta.output.name)
    entry = answer.reshape(-1)[0]
    _, index, label = (entry.decode() if isinstance(entry, bytes) else str(entry)).split(":", 2)
    return int(index), label


def check_answers(client, config: DeployConfig, meta: InferenceMetadata) -> AnswerCheck:
    size = meta.input.shape[1]
    samples = sample_images(config.shards, config.check_images, size)
    reference = local_logits(Path(config.model_dir) / meta.ir_xml, samples.images)
    batch = min(8, config.serving.max_batch_size)
    served = served_logits(client, config.model_name, meta, samples.images, batch)
    jpeg = served_jpeg_logits(client, config.model_name + JPEG_SUFFIX, meta, samples.images, batch)
    index, label = classification_label(client, config.model_name, meta, samples.images[0])
    check = AnswerCheck(images=len(samples.images), source=samples.source,
                        top1_agreement=_agreement(reference, served), jpeg_top1_agreement=_agreement(reference, jpeg),
                        max_abs_logit_diff=float(np.abs(reference - served).max()),
                        classification_label=f"{index}:{label}")
    if check.top1_agreement < 1.0 or check.jpeg_top1_agreement < 1.0:
        raise IntegrityError(f"Triton's top-1 differs from local OpenVINO on the same images "
                             f"(tensor {check.top1_agreement:.0%}, jpeg {check.jpeg_top1_agreement:.0%} agree)",
                             "the served files differ from --model; redeploy")
    if index != int(reference[0].argmax()) or label != meta.classes.names[index]:
        raise IntegrityError(f"Triton's classification answer '{index}:{label}' does not match class "
                             f"{int(reference[0].argmax())} '{meta.classes.names[int(reference[0].argmax())]}'",
                             "labels.txt is out of step with model.json; redeploy")
    return check


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
        raise ServiceError(f"Triton did not finish loading '{name}' ({_one_line(exc)})",
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


def ready_version(client, name: str) -> int | None:
    """The version of `name` Triton serves now, if any."""
    for entry in client.get_model_repository_index():
        if entry.get("name") == name and entry.get("state") == "READY" and entry.get("version"):
            return int(entry["version"])
    return None


# ------------------------------------------------------------------ the phase
@dataclass
class _Preflight:
    meta: InferenceMetadata
    http_url: str
    grpc_url: str
    client: object          # tritonclient.http.InferenceServerClient, reachable


def preflight(config: DeployConfig) -> _Preflight:
    """Everything that can be wrong before anything is written: settings, the model files, Triton's address."""
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
        tracker.log_metrics(result.as_metrics())
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
        model_name=config.model_name, jpeg_model_name=names[1], model_version=version, previous_version=previous,
        http_url=http_url, grpc_url=grpc_url, triton_repository=served_from.uri,
        published=[t.uri for t in targets], openvino_backend_repository=ov_target.uri,
        input_name=meta.input.name, input_shape=[-1, *meta.input.shape[1:]], load_s=round(load_s, 2), check=check)


def _triton_message(exc: Exception) -> str:
    """Triton's own load error in one line (its python tracebacks follow an 'At:' line)."""
    text = getattr(exc, "message", lambda: str(exc))() or str(exc)
    text = text.split("\n\nAt:")[0]
    return " ".join(text.split())[:400]


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
