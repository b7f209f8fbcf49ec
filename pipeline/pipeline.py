"""The KFP v2 DAG: validate -> shard -> transfer -> train -> quantize -> deploy -> benchmark.

Each task is one phase's component (components/<phase>/component.py); data flows only through typed
artifacts. Cluster-only settings (secrets, resources, retries, caching) are attached here; kfp.local
accepts and ignores them, so the same definition runs in a cluster and on one machine.
"""

from kfp import dsl, kubernetes

from visionnode.components.benchmark.component import benchmark_op
from visionnode.components.benchmark.config import DEFAULTS as BENCHMARK
from visionnode.components.deploy.component import deploy_op
from visionnode.components.deploy.config import DEFAULTS as DEPLOY
from visionnode.components.quantize.component import quantize_op
from visionnode.components.quantize.config import DEFAULTS as QUANTIZE
from visionnode.components.shard.component import shard_op
from visionnode.components.shard.config import DEFAULTS as SHARD
from visionnode.components.train.component import train_op
from visionnode.components.train.config import DEFAULTS as TRAIN
from visionnode.components.transfer.component import transfer_op
from visionnode.components.transfer.config import DEFAULTS as TRANSFER
from visionnode.components.validate.component import validate_op
from visionnode.components.validate.config import DEFAULTS as VALIDATE

PIPELINE_NAME = "visionnode-152"
S3_SECRET = "visionnode-s3"              # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, VISIONNODE_S3_ENDPOINT
MLFLOW_SECRET = "visionnode-mlflow"      # MLFLOW_TRACKING_URI
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "VISIONNODE_S3_ENDPOINT")


def _with_services(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    """Credentials from Kubernetes Secrets (never in the pipeline spec) and resource requests."""
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET,
                                 secret_key_to_env={k: k for k in S3_SECRET_KEYS})
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET,
                                 secret_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    task.set_cpu_request(cpu).set_memory_request(memory)
    return task


def _retry(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """For steps that talk to services over the network: transient faults get exponential backoff."""
    return task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0,
                          backoff_max_duration="600s")


@dsl.pipeline(name=PIPELINE_NAME,
              description="ResNet-152 on ImageNet-1K: validate, shard (FFCV), transfer (S3), train (DDP, "
              "AMP), "
                          "quantize (OpenVINO INT8), deploy (Triton), benchmark (QPS, P99, SLO).")
def visionnode_pipeline(
    data_uri: str,
    shards_uri: str = "s3://visionnode/shards",
    checkpoint_uri: str = "s3://visionnode/checkpoints",
    model_repository: str = "",
    triton_http: str = "",
    triton_grpc: str = "",
    model_name: str = DEPLOY.model_name,
    validate_subset: int = VALIDATE.subset,
    validate_image_size: int = VALIDATE.image_size,
    validate_steps: int = VALIDATE.steps,
    validate_lr_probe_steps: int = VALIDATE.lr_probe_steps,
    images_per_shard: int = SHARD.images_per_shard,
    max_resolution: int = SHARD.max_resolution,
    jpeg_quality: int = SHARD.jpeg_quality,
    transfer_concurrency: int = TRANSFER.concurrency,
    arch: str = TRAIN.arch,
    epochs: int = TRAIN.epochs,
    batch_size: int = TRAIN.batch_size,
    lr: float = TRAIN.recipe.lr,
    crop_min_scale: float = TRAIN.crop_min_scale,
    flip: bool = TRAIN.flip,
    init_weights: str = TRAIN.init_weights,
    head_epochs: int = TRAIN.head_epochs,
    res_schedule: str = TRAIN.res_schedule,
    precision: str = TRAIN.precision,
    workers: int = TRAIN.workers,
    calibration_images: int = QUANTIZE.calibration_images,
    max_accuracy_drop: float = QUANTIZE.max_accuracy_drop,
    full_int8: bool = QUANTIZE.full_int8,
    benchmark_protocol: str = BENCHMARK.protocol,
    benchmark_concurrency: str = ",".join(map(str, BENCHMARK.concurrency)),
    benchmark_duration_s: float = BENCHMARK.duration_s,
    target_qps: float = BENCHMARK.target_qps,
    target_p99_ms: float = BENCHMARK.target_p99_ms,
) -> None:
    """The whole pipeline. Empty `model_repository`/`triton_*` mean "from the components' settings".

    `lr` 0.0 means "auto": train takes validate's LR probe suggestion (`suggested_lr`).
    """
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    raw = dsl.importer(artifact_uri=data_uri, artifact_class=dsl.Dataset, reimport=False)
    raw.set_display_name("raw images")

    validate = validate_op(data=raw.output, subset=validate_subset, image_size=validate_image_size,
                           steps=validate_steps, lr_probe_steps=validate_lr_probe_steps,
                           pipeline_run_id=run_id)
    _with_services(validate, cpu="2", memory="8G")

    shard = shard_op(data=raw.output, images_per_shard=images_per_shard, max_resolution=max_resolution,
                     jpeg_quality=jpeg_quality, workers=workers, pipeline_run_id=run_id).after(validate)
    _with_services(shard, cpu="4", memory="8G").set_caching_options(True)

    transfer = transfer_op(shards=shard.outputs["shards"], destination=shards_uri,
                           concurrency=transfer_concurrency, pipeline_run_id=run_id)
    _retry(_with_services(transfer, cpu="2", memory="4G"))

    train = train_op(remote_shards=transfer.outputs["remote_shards"], epochs=epochs, batch_size=batch_size,
                     lr=lr,
                     suggested_lr=validate.outputs["suggested_lr"], arch=arch, res_schedule=res_schedule,
                     precision=precision, checkpoint_uri=checkpoint_uri, workers=workers,
                     crop_min_scale=crop_min_scale, flip=flip, init_weights=init_weights,
                     head_epochs=head_epochs,
                     pipeline_run_id=run_id)
    _with_services(train, cpu="8",
                   memory="32G").set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    # A preempted train task resumes from its newest checkpoint (`--resume auto`), so a retry is safe.
    _retry(train)

    quantize = quantize_op(model=train.outputs["model"], remote_shards=transfer.outputs["remote_shards"],
                           calibration_images=calibration_images, max_accuracy_drop=max_accuracy_drop,
                           full_int8=full_int8, pipeline_run_id=run_id)
    _with_services(quantize, cpu="4", memory="8G")

    deploy = deploy_op(int8_model=quantize.outputs["int8_model"], repository=model_repository,
                       triton_http=triton_http, triton_grpc=triton_grpc, model_name=model_name,
                       pipeline_run_id=run_id)
    _retry(_with_services(deploy, cpu="1", memory="2G"))

    benchmark = benchmark_op(endpoint=deploy.outputs["endpoint"],
                             remote_shards=transfer.outputs["remote_shards"],
                             protocol=benchmark_protocol, concurrency=benchmark_concurrency,
                             duration_s=benchmark_duration_s, target_qps=target_qps,
                             target_p99_ms=target_p99_ms,
                             pipeline_run_id=run_id)
    _with_services(benchmark, cpu="2", memory="2G")

    for task, name in ((validate, "validate"), (shard, "shard"), (transfer, "transfer"), (train, "train"),
                       (quantize, "quantize"), (deploy, "deploy"), (benchmark, "benchmark")):
        task.set_display_name(name)
