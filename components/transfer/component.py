"""KFP v2 component: upload shards to S3 and hand on the remote manifest."""

from kfp.dsl import Dataset, Input, Metrics, Output

from visionnode.components.common.adapters.kfp import phase_component


@phase_component("transfer")
def transfer_op(
    shards: Input[Dataset],
    remote_shards: Output[Dataset],
    metrics: Output[Metrics],
    destination: str,
    concurrency: int = 16,
    part_size_mb: int = 16,
    pipeline_run_id: str = "",
):
    """Upload a shard dataset to S3 with parallel multipart transfers, verify every object, resume re-runs.

    Args:
        shards: Shard dir from the shard step (manifest.json + .beton files).
        remote_shards: Output dir holding the remote manifest.json (per-shard `uri`, `base_uri`, sha256);
            its metadata["base_uri"] is `destination`.
        metrics: bytes, seconds, MB/s, retries, objects transferred/skipped.
        destination: s3://bucket/prefix to upload to (the bucket must exist).
        concurrency: Parallel requests (multipart parts and objects together).
        part_size_mb: Multipart part size in MiB (at least 5).
        pipeline_run_id: Pipeline run id; nests this step's MLflow run under the pipeline's parent run.
    """
    from pathlib import Path

    from visionnode.components.common.adapters.kfp import enter_pipeline_context
    from visionnode.components.transfer.transfer import UploadConfig, upload_shards

    enter_pipeline_context(pipeline_run_id)
    out_dir = Path(remote_shards.path)
    result = upload_shards(UploadConfig(Path(shards.path), destination, concurrency, part_size_mb,
                                        output_dir=out_dir))
    remote_shards.metadata["base_uri"] = result.destination
    remote_shards.metadata["manifest_uri"] = result.manifest
    remote_shards.metadata["objects"] = result.objects
    remote_shards.metadata["bytes"] = result.bytes_total
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
