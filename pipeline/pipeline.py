"""The KFP v2 DAG: fingerprint -> validate -> shard -> transfer -> train -> quantize -> deploy -> benchmark ->
promote | reject, all inside an exit handler whose final step ends the run's MLflow parent run with its real
status.

Each task is one phase's component (components/<phase>/component.py); data flows only through typed
artifacts and parameters. The raw data is read where it lies (`data_uri`), never imported as an artifact
(KFP's launcher would download all of it into every pod that takes it). deploy stages the new model as a
candidate beside the serving champion; benchmark measures it and decides; `dsl.If` on its decision promotes
it, `dsl.Else` withdraws it. Cluster-only settings (secrets, resources, retries) are attached here; kfp.local
accepts and ignores them, so the same definition runs in a cluster and on one machine.

Caching (docs/caching.md): the first step fingerprints the data and is never cached; validate, shard,
transfer, train and quantize are, keyed by that fingerprint and their settings (no input differs per run: the
run id reaches every task as an environment variable from its pod's `pipeline/runid` label); deploy,
benchmark, promote, reject and finish act on live services and are never cached.
"""

import inspect
from collections.abc import Callable

from kfp import dsl, kubernetes

from visionnode.components.benchmark.component import benchmark_op
from visionnode.components.benchmark.config import DEFAULTS as BENCHMARK
from visionnode.components.common.tracking import PIPELINE_RUN_ENV
from visionnode.components.common.training.recipe import LR_AUTO
from visionnode.components.deploy.component import deploy_op, promote_op, reject_op
from visionnode.components.deploy.config import DEFAULTS as DEPLOY
from visionnode.components.quantize.component import quantize_op
from visionnode.components.quantize.config import DEFAULTS as QUANTIZE
from visionnode.components.shard.component import shard_op
from visionnode.components.shard.config import DEFAULTS as SHARD
from visionnode.components.shard.config import SHARD_STORE
from visionnode.components.train.component import train_op
from visionnode.components.train.config import DEFAULTS as TRAIN
from visionnode.components.transfer.component import transfer_op
from visionnode.components.transfer.config import DEFAULTS as TRANSFER
from visionnode.components.validate.component import validate_op
from visionnode.components.validate.config import DEFAULTS as VALIDATE
from visionnode.pipeline.compile import dag_tasks, fed_parameter
from visionnode.pipeline.fingerprint import fingerprint_op
from visionnode.pipeline.finish import finish_op

PIPELINE_NAME = "visionnode-152"
S3_SECRET = "visionnode-s3"              # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, VISIONNODE_S3_ENDPOINT
MLFLOW_SECRET = "visionnode-mlflow"      # MLFLOW_TRACKING_URI
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "VISIONNODE_S3_ENDPOINT")
# KFP's API server labels every pod of a run with its id (backend/src/apiserver/template/v2_template.go:
# SetPodMetadataLabels(pipeline/runid, RunID)); the downward API hands it to the task as an environment
# variable, which is no part of the cache key (backend/src/v2/driver/cache.go: inputs, outputs, image,
# command, PVCs).
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"


def _with_services(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    """Credentials from Kubernetes Secrets (never in the pipeline spec), the run id, resource requests."""
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET,
                                 secret_key_to_env={k: k for k in S3_SECRET_KEYS})
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET,
                                 secret_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    kubernetes.use_field_path_as_env(task, env_name=PIPELINE_RUN_ENV, field_path=RUN_ID_FIELD)
    task.set_cpu_request(cpu).set_memory_request(memory)
    return task


def _cached(task: dsl.PipelineTask, cached: bool) -> dsl.PipelineTask:
    """Stated for every task: a step with side effects on a live service must never be served from cache."""
    return task.set_caching_options(enable_caching=cached)


def _retry(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """For steps that talk to services over the network: transient faults get exponential backoff."""
    return task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0,
                          backoff_max_duration="600s")


DESCRIPTION = ("ResNet-152 on ImageNet-1K: fingerprint, validate, shard (FFCV), transfer (S3), train (DDP, "
               "AMP), quantize (OpenVINO INT8), deploy (Triton), benchmark (QPS, P99, SLO), promote or "
               "reject.")


def _pipeline(
    data_uri: str,
    shard_store_uri: str = SHARD_STORE,
    transfer_destination: str = TRANSFER.destination,
    train_checkpoint_uri: str = TRAIN.checkpoint_uri,
    deploy_repository: str = "",
    deploy_triton_http: str = "",
    deploy_triton_grpc: str = "",
    deploy_replicas: str = DEPLOY.replicas,
    deploy_model_name: str = DEPLOY.model_name,
    validate_subset: int = VALIDATE.subset,
    validate_image_size: int = VALIDATE.image_size,
    validate_steps: int = VALIDATE.steps,
    validate_lr_probe_steps: int = VALIDATE.lr_probe_steps,
    shard_images_per_shard: int = SHARD.images_per_shard,
    shard_max_resolution: int = SHARD.max_resolution,
    shard_jpeg_quality: int = SHARD.jpeg_quality,
    transfer_concurrency: int = TRANSFER.concurrency,
    train_arch: str = TRAIN.arch,
    train_epochs: int = TRAIN.epochs,
    train_batch_size: int = TRAIN.batch_size,
    train_lr: str = LR_AUTO,
    train_crop_min_scale: float = TRAIN.crop_min_scale,
    train_flip: bool = TRAIN.flip,
    train_init_weights: str = TRAIN.init_weights,
    train_head_epochs: int = TRAIN.head_epochs,
    train_max_steps: int = TRAIN.max_steps,
    train_res_schedule: str = TRAIN.res_schedule,
    train_precision: str = TRAIN.precision,
    shard_workers: int = SHARD.workers,
    train_workers: int = TRAIN.workers,
    quantize_calibration_images: int = QUANTIZE.calibration_images,
    quantize_max_accuracy_drop: float = QUANTIZE.max_accuracy_drop,
    quantize_full_int8: bool = QUANTIZE.full_int8,
    benchmark_protocol: str = BENCHMARK.protocol,
    benchmark_concurrency: str = ",".join(map(str, BENCHMARK.concurrency)),
    benchmark_duration_s: float = BENCHMARK.duration_s,
    benchmark_target_qps: float = BENCHMARK.target_qps,
    benchmark_target_p99_ms: float = BENCHMARK.target_p99_ms,
    benchmark_max_top1_regression: float = BENCHMARK.max_top1_regression,
    benchmark_accuracy_images: int = BENCHMARK.accuracy_images,
) -> None:
    """The whole pipeline. A parameter's name starts with the phase it configures (`data_uri` feeds several).
    Empty `deploy_repository`/`deploy_triton_*` mean "from the components' settings".

    `shard_store_uri` is the base of the shard store: shards go to `<it>/<data digest>/<settings digest>/`.
    `train_checkpoint_uri` empty gives each run its own (`s3://<shards bucket>/checkpoints/<run id>`).
    """
    # The final step runs after the others whatever they did: it ends the MLflow parent run with the real
    # status.
    finish = finish_op()
    _cached(_with_services(finish, cpu="1", memory="1G"), False).set_display_name("finish")
    with dsl.ExitHandler(finish, name="run"):
        fingerprint = fingerprint_op(data_uri=data_uri)
        _cached(_with_services(fingerprint, cpu="1", memory="1G"), False)  # it alone sees the data change
        data_digest = fingerprint.outputs["data_digest"]

        validate = validate_op(data_uri=data_uri, data_digest=data_digest, subset=validate_subset,
                               image_size=validate_image_size, steps=validate_steps,
                               lr_probe_steps=validate_lr_probe_steps)
        _cached(_with_services(validate, cpu="2", memory="8G"), True)

        shard = shard_op(data_uri=data_uri, data_digest=data_digest, shards_uri=shard_store_uri,
                         images_per_shard=shard_images_per_shard, max_resolution=shard_max_resolution,
                         jpeg_quality=shard_jpeg_quality, workers=shard_workers).after(validate)
        _cached(_with_services(shard, cpu="4", memory="8G"), True)

        transfer = transfer_op(shards=shard.outputs["shards"], data_digest=data_digest,
                               destination=transfer_destination, concurrency=transfer_concurrency)
        _cached(_retry(_with_services(transfer, cpu="2", memory="4G")), True)

        train = train_op(remote_shards=transfer.outputs["remote_shards"], data_digest=data_digest,
                         epochs=train_epochs, batch_size=train_batch_size, lr=train_lr,
                         suggested_lr=validate.outputs["suggested_lr"], arch=train_arch,
                         res_schedule=train_res_schedule, precision=train_precision,
                         checkpoint_uri=train_checkpoint_uri, workers=train_workers,
                         crop_min_scale=train_crop_min_scale, flip=train_flip,
                         init_weights=train_init_weights, head_epochs=train_head_epochs,
                         max_steps=train_max_steps)
        _with_services(train, cpu="8",
                       memory="32G").set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        # A preempted train task resumes its own newest checkpoint (same run id), so a retry is safe.
        _cached(_retry(train), True)

        quantize = quantize_op(model=train.outputs["model"], remote_shards=transfer.outputs["remote_shards"],
                               calibration_images=quantize_calibration_images,
                               max_accuracy_drop=quantize_max_accuracy_drop, full_int8=quantize_full_int8)
        _cached(_with_services(quantize, cpu="4", memory="8G"), True)

        deploy = deploy_op(int8_model=quantize.outputs["int8_model"], repository=deploy_repository,
                           triton_http=deploy_triton_http, triton_grpc=deploy_triton_grpc,
                           replicas=deploy_replicas, model_name=deploy_model_name)
        _cached(_retry(_with_services(deploy, cpu="1", memory="2G")), False)  # stages a model on live servers

        benchmark = benchmark_op(endpoint=deploy.outputs["endpoint"],
                                 remote_shards=transfer.outputs["remote_shards"],
                                 protocol=benchmark_protocol, concurrency=benchmark_concurrency,
                                 duration_s=benchmark_duration_s, target_qps=benchmark_target_qps,
                                 target_p99_ms=benchmark_target_p99_ms,
                                 max_top1_regression=benchmark_max_top1_regression,
                                 accuracy_images=benchmark_accuracy_images)
        _cached(_with_services(benchmark, cpu="2", memory="2G"), False)  # measures the servers as they are

        # Champion/challenger: the candidate serves under the production name only if benchmark says so.
        with dsl.If(benchmark.outputs["promote"] == True, name="candidate-proved-itself"):  # noqa: E712
            promote = promote_op(int8_model=quantize.outputs["int8_model"],
                                 endpoint=deploy.outputs["endpoint"], decision=benchmark.outputs["decision"])
            _cached(_retry(_with_services(promote, cpu="1", memory="2G")), False)
        with dsl.Else(name="candidate-refused"):
            reject = reject_op(endpoint=deploy.outputs["endpoint"], decision=benchmark.outputs["decision"])
            _cached(_retry(_with_services(reject, cpu="1", memory="1G")), False)

        for task, name in ((fingerprint, "fingerprint"), (validate, "validate"), (shard, "shard"),
                           (transfer, "transfer"), (train, "train"), (quantize, "quantize"),
                           (deploy, "deploy"), (benchmark, "benchmark"), (promote, "promote"),
                           (reject, "reject")):
            task.set_display_name(name)


def with_parameter_descriptions(pipeline: Callable[..., None]) -> Callable[..., None]:
    """Append an `Args:` section to the pipeline's docstring, which KFP turns into the run form's parameter
    descriptions: each parameter is described by the component inputs it feeds, as the DAG wires it (a
    parameter feeding several phases says so per phase). The help text stays in one place, the component."""
    from google.protobuf import json_format

    spec = json_format.MessageToDict(dsl.pipeline(name=PIPELINE_NAME)(pipeline).pipeline_spec)
    fed: dict[str, dict[str, str]] = {}
    for name, task in dag_tasks(spec).items():
        component = spec["components"][task["componentRef"]["name"]]["inputDefinitions"]["parameters"]
        for input_name, source in task.get("inputs", {}).get("parameters", {}).items():
            parameter = fed_parameter(source)
            if parameter and component[input_name].get("description"):
                phase = name.removesuffix("-op")
                fed.setdefault(parameter, {})[phase] = " ".join(component[input_name]["description"].split())
    missing = [name for name in inspect.signature(pipeline).parameters if name not in fed]
    if missing:
        raise TypeError(f"pipeline parameters without a described component input: {missing}")
    lines = [f"    {name}: {_joined(fed[name])}" for name in inspect.signature(pipeline).parameters]
    pipeline.__doc__ = f"{inspect.cleandoc(pipeline.__doc__ or '')}\n\nArgs:\n" + "\n".join(lines) + "\n"
    return pipeline


def _joined(by_phase: dict[str, str]) -> str:
    texts = set(by_phase.values())
    if len(texts) == 1:
        return texts.pop()
    return " ".join(f"[{phase}] {text}" for phase, text in sorted(by_phase.items()))  # the same every time


visionnode_pipeline = dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(
    with_parameter_descriptions(_pipeline))
