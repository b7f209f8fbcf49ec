"""Deploy the INT8 model to Triton as a candidate: generate its model repository entry, publish it, load it on
every replica beside the serving champion, check its answers, register it in MLflow.

Steps (each a small function below):
1. check the quantize output (model.json + IR whose input really is uint8 [N, S, S, 3]);
2. generate version N+1 of `<name>_candidate` (python backend, OpenVINO IR) and `<name>_candidate_jpeg`
   (encoded images); N is the newest version of the production model `<name>` or of any earlier candidate;
3. publish: into the repository the running Triton reads (`resolve_endpoints().triton_repository`, a local
   dir or S3) and, when `--repository` names another place, a copy there too (e.g. s3:// for a cluster);
4. load through every replica's repository API (explicit model control): `<name>`, the champion, keeps
   serving untouched;
5. ask each replica for sample images (tensor model, and PNG bytes through the JPEG model) and compare the
   top-1 with local OpenVINO inference on the same IR;
6. register the INT8 model as a new version of the MLflow registered model `<name>` (its accuracy, its FP32
   parent version, the Triton name and version it is staged as).

Benchmark then measures the candidate; promote.py makes it the champion (or withdraws it).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.artifacts import MODEL_METADATA_FILE, InferenceMetadata
from visionnode.components.common.errors import ConfigError, DataError
from visionnode.components.common.registry import PROMOTION_TAG, register_files
from visionnode.components.common.serving.triton import (
    JPEG_SUFFIX,
    STACK_HINT,
    RepositoryTarget,
    ready_version,
)
from visionnode.components.common.settings import resolve_endpoints
from visionnode.components.common.tracking import Tracker
from visionnode.components.deploy.answers import AnswerCheck, check_answers, local_reference
from visionnode.components.deploy.config import DeployConfig, ServingConfig, candidate_name
from visionnode.components.deploy.publish import publish, remote_versions, repository_targets
from visionnode.components.deploy.replicas import Replica, connect_replicas, load_everywhere
from visionnode.components.deploy.repository import serving_input_spec, write_served_models


@dataclass
class DeployResult:
    model_name: str                 # the production name; the model serves there only once promoted
    candidate_name: str             # the name it is staged and benchmarked under
    jpeg_model_name: str            # the candidate's encoded-image front end
    model_version: int              # its version, as candidate now and under model_name once promoted
    champion_version: int | None    # the version model_name serves now (None: nothing yet)
    http_url: str
    grpc_url: str
    replica_spec: str               # what names every replica (HOST:PORT list or headless Service)
    replicas: list[str]             # the replicas it resolved to, each loaded and checked
    triton_repository: str          # the repository Triton loaded the model from
    published: list[str]            # every place the served repository was written
    input_name: str
    input_shape: list[int]
    load_s: float
    registered_version: str         # MLflow registered model version 'name/version' ('' without tracking)
    source_model: str               # the FP32 registered version it was quantized from ('' if unknown)
    serving: ServingConfig          # what config.pbtxt was generated from (promotion reuses it)
    checks: list[AnswerCheck]       # one per replica

    @property
    def check(self) -> AnswerCheck:
        return self.checks[0]

    def metrics(self) -> dict[str, float]:
        return {"model_version": float(self.model_version), "load_s": self.load_s,
                "replicas": float(len(self.replicas)),
                "top1_agreement": min(c.top1_agreement for c in self.checks),
                "jpeg_top1_agreement": min(c.jpeg_top1_agreement for c in self.checks),
                "max_abs_logit_diff": max(c.max_abs_logit_diff for c in self.checks)}


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


def check_served_input(replica: Replica, name: str, version: int, meta: InferenceMetadata) -> None:
    served = replica.client.get_model_metadata(name, str(version))["inputs"][0]
    expected = {"name": meta.input.name, "datatype": "UINT8", "shape": [-1, *meta.input.shape[1:]]}
    got = {"name": served["name"], "datatype": served["datatype"], "shape": [int(d) for d in served["shape"]]}
    if got != expected:
        raise ConfigError(f"wrong input spec: Triton at {replica.url} serves '{name}' with {got}, expected "
                          f"{expected}", "another model of that name is in the repository; pass --name")


def check_replicas(replicas: list[Replica], name: str, version: int, model_dir: Path, meta: InferenceMetadata,
                   shards: str | None, check_images: int, serving: ServingConfig) -> list[AnswerCheck]:
    """Every replica serves `name` version `version` with the model's input and answers as local OpenVINO."""
    reference = local_reference(model_dir, meta, shards, check_images)
    checks = []
    for replica in replicas:
        check_served_input(replica, name, version, meta)
        checks.append(check_answers(replica.client, replica.url, name, reference, serving.max_batch_size))
    return checks


# ------------------------------------------------------------------ the phase
@dataclass
class _Preflight:
    meta: InferenceMetadata
    http_url: str
    grpc_url: str
    replica_spec: str
    replicas: list[Replica]     # every Triton server, reachable


def preflight(config: DeployConfig) -> _Preflight:
    """Everything that can be wrong before anything is written:
    settings, the model files, Triton's addresses."""
    config.validate()
    meta = check_model_dir(Path(config.model_dir))
    endpoints = resolve_endpoints()
    http_url = config.triton_http or endpoints.triton_http
    if not http_url:
        raise ConfigError("no Triton address is known", STACK_HINT)
    replica_spec = config.replicas or http_url
    return _Preflight(meta, http_url, config.triton_grpc or endpoints.triton_grpc or "", replica_spec,
                      connect_replicas(replica_spec, config.load_timeout_s))


def deploy(config: DeployConfig) -> DeployResult:
    """The deploy phase, tracked in MLflow (a no-op without a tracking URI)."""
    from visionnode.components.common.tracking import tracked_run

    checked = preflight(config)  # a user mistake fails here, before an MLflow run is opened
    with tracked_run("deploy", tags={"phase": "deploy", "model_name": config.model_name}) as tracker:
        result = deploy_model(config, checked, tracker)
        tracker.log_params({"model_name": result.model_name, "candidate_name": result.candidate_name,
                            "model_version": result.model_version, "replicas": result.replicas,
                            "triton_repository": result.triton_repository, "published": result.published,
                            "registered_version": result.registered_version,
                            "max_batch_size": config.serving.max_batch_size,
                            "preferred_batch_sizes": config.serving.preferred_batch_sizes,
                            "max_queue_delay_us": config.serving.max_queue_delay_us})
        tracker.log_metrics(result.metrics())
    return result


def next_version(served_from: RepositoryTarget, model_name: str, replicas: list[Replica]) -> int:
    """One above every version the production model or an earlier candidate ever had, here or on a replica."""
    known = [*remote_versions(served_from, model_name),
             *remote_versions(served_from, candidate_name(model_name))]
    known += [v for r in replicas if (v := ready_version(r.client, model_name)) is not None]
    return max([0, *known]) + 1


def deploy_model(config: DeployConfig, checked: _Preflight | None = None,
                 tracker: Tracker | None = None) -> DeployResult:
    checked = checked or preflight(config)
    meta, replicas = checked.meta, checked.replicas
    served_from, targets = repository_targets(config.repository, resolve_endpoints().triton_repository)
    candidate = candidate_name(config.model_name)
    names = [candidate, candidate + JPEG_SUFFIX]
    champion = ready_version(replicas[0].client, config.model_name)
    version = config.version or next_version(served_from, config.model_name, replicas)
    with tempfile.TemporaryDirectory(prefix="visionnode-deploy-") as tmp:
        write_served_models(Path(tmp), candidate, version, Path(config.model_dir), meta, config.serving)
        for target in targets:
            publish(Path(tmp), target, names, version)
    load_s = load_everywhere(replicas, names, version, config.load_timeout_s)
    checks = check_replicas(replicas, candidate, version, Path(config.model_dir), meta, config.shards,
                            config.check_images, config.serving)
    registered = register_int8(tracker or Tracker(), config, meta, candidate, version)
    return DeployResult(
        model_name=config.model_name, candidate_name=candidate, jpeg_model_name=names[1],
        model_version=version, champion_version=champion,
        http_url=checked.http_url, grpc_url=checked.grpc_url, replica_spec=checked.replica_spec,
        replicas=[r.url for r in replicas], triton_repository=served_from.uri,
        published=[t.uri for t in targets], input_name=meta.input.name,
        input_shape=[-1, *meta.input.shape[1:]], load_s=round(load_s, 2),
        registered_version=str(registered or ""), source_model=meta.source_model, serving=config.serving,
        checks=checks)


def register_int8(tracker: Tracker, config: DeployConfig, meta: InferenceMetadata, candidate: str,
                  version: int):
    """The staged INT8 model as a new version of the registered model named like the production model."""
    model_dir = Path(config.model_dir)
    xml = model_dir / meta.ir_xml
    return register_files(
        tracker, config.model_name, [xml, xml.with_suffix(".bin"), model_dir / MODEL_METADATA_FILE],
        model_type="openvino-ir-int8",
        description=f"{meta.arch} {meta.precision.upper()} (OpenVINO IR) served by Triton as "
                    f"'{config.model_name}'; the alias 'champion' marks the version serving now",
        metrics=meta.accuracy,
        tags={"triton_model": config.model_name, "triton_version": str(version),
              "triton_candidate": candidate, "fp32_model": meta.source_model or "unknown",
              "arch": meta.arch, PROMOTION_TAG: "candidate"})
