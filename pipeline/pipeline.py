"""The KFP v2 DAG: validate -> shard -> transfer -> train -> quantize -> deploy -> benchmark.

Each task is one phase's component (components/<phase>/component.py); data flows only through typed
artifacts. Cluster-only settings (secrets, resources, retries, caching) are attached here; kfp.local
accepts and ignores them, so the same definition runs in a cluster and on one machine.
"""

from kfp import dsl, kubernetes

from visionnode.components.benchmark.component import benchmark_op
from visionnode.components.deploy.component import deploy_op
from visionnode.components.quantize.component import quantize_op
from visionnode.components.shard.component import shard_op
from visionnode.components.train.component import train_op
from visionnode.components.transfer.component import transfer_op
from visionnode.components.validate.component import validate_op

PIPELINE_NAME = "visionnode-152"
S3_SECRET = "visionnode-s3"              # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, VISIONNODE_S3_ENDPOINT
MLFLOW_SECRET = "visionnode-mlflow"      # MLFLOW_TRACKING_URI
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "VISIONNODE_S3_ENDPOINT")


def _with_services(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    """Credentials from Kubernetes Secrets (never in the pipeline spec) and resource requests."""
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_SECRET_KEYS})
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET,
                                 secret_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    task.set_cpu_request(cpu).set_memory_request(memory)
    return task


def _retry(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """For steps that talk to services over the network: transient faults get exponential backoff."""
    return task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")


@dsl.pipeline(name=PIPELINE_NAME,
              description="ResNet-152 on ImageNet-1K: validate, shard (FFCV), transfer (S3), train (DDP, AMP), "
                          "quantize (OpenVINO INT8), deploy (Triton), benchmark (QPS, P99, SLO).")
def visionnode_pipeline(
    data_uri: str,
    shards_uri: str = "s3://visionnode/shards",
    checkpoint_uri: str = "s3://visionnode/checkpoints",
    model_repository: str = "",
    triton_http: str = "",
    triton_grpc: str = "",
    model_name: str = "resnet152_int8",
    validate_subset: int = 256,
    validate_image_size: int = 64,
    validate_steps: int = 30,
    validate_lr_range_steps: int = 40,
    images_per_shard: int = 5000,
    max_resolution: int = 256,
    jpeg_quality: int = 90,
    transfer_concurrency: int = 16,
    arch: str = "resnet152",
    epochs: int = 16,
    batch_size: int = 64,
    lr: float = 0.0,
    crop_min_scale: float = 0.08,
    flip: bool = True,
    init_weights: str = "",
    head_epochs: int = 0,
    res_schedule: str = "160:192",
    precision: str = "auto",
    workers: int = 2,
    calibration_images: int = 300,
    max_accuracy_drop: float = 1.0,
    full_int8: bool = False,
    benchmark_protocol: str = "grpc",
    benchmark_concurrency: str = "1,2,4,8,16",
    benchmark_duration_s: float = 10.0,
    target_qps: float = 100.0,
    target_p99_ms: float = 150.0,
) -> None:
    """The whole pipeline. Empty `model_repository`/`triton_*` mean "from the components' settings".

    `lr` 0.0 means "auto": train takes validate's LR range-test suggestion (`suggested_lr`).
    """
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    raw = dsl.importer(artifact_uri=data_uri, artifact_class=dsl.Dataset, reimport=False)
    raw.set_display_name("raw images")

    validate = validate_op(data=raw.output, subset=validate_subset, image_size=validate_image_size,
                           steps=validate_steps, lr_range_steps=validate_lr_range_steps, pipeline_run_id=run_id)
    _with_services(validate, cpu="2", memory="8G")

    shard = shard_op(data=raw.output, images_per_shard=images_per_shard, max_resolution=max_resolution,
                     jpeg_quality=jpeg_quality, workers=workers, pipeline_run_id=run_id).after(validate)
    _with_services(shard, cpu="4", memory="8G").set_caching_options(True)

    transfer = transfer_op(shards=shard.outputs["shards"], destination=shards_uri,
                           concurrency=transfer_concurrency, pipeline_run_id=run_id)
    _retry(_with_services(transfer, cpu="2", memory="4G"))

    train = train_op(remote_shards=transfer.outputs["remote_shards"], epochs=epochs, batch_size=batch_size, lr=lr,
                     suggested_lr=validate.outputs["suggested_lr"], arch=arch, res_schedule=res_schedule,
                     precision=precision, checkpoint_uri=checkpoint_uri, workers=workers,
                     crop_min_scale=crop_min_scale, flip=flip, init_weights=init_weights, head_epochs=head_epochs,
                     pipeline_run_id=run_id)
    _with_services(train, cpu="8", memory="32G").set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
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

    benchmark = benchmark_op(endpoint=deploy.outputs["endpoint"], remote_shards=transfer.outputs["remote_shards"],
                             protocol=benchmark_protocol, concurrency=benchmark_concurrency,
                             duration_s=benchmark_duration_s, target_qps=target_qps, target_p99_ms=target_p99_ms,
                             pipeline_run_id=run_id)
    _with_services(benchmark, cpu="2", memory="2G")

    for task, name in ((validate, "validate"), (shard, "shard"), (transfer, "transfer"), (train, "train"),
                       (quantize, "quantize"), (deploy, "deploy"), (benchmark, "benchmark")):
        task.set_display_name(name)
