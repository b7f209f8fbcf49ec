"""KFP v2 component: FFCV shards from raw ImageNet-layout images (thin adapter over shard.shard_dataset)."""

from kfp.dsl import Dataset, Input, Metrics, Output

from visionnode.components.common.adapters.kfp import phase_component


@phase_component("shard")
def shard_op(
    data: Input[Dataset],
    shards: Output[Dataset],
    metrics: Output[Metrics],
    split: str = "both",
    images_per_shard: int = 5000,
    max_resolution: int = 256,
    jpeg_quality: int = 90,
    workers: int = 2,
    pipeline_run_id: str = "",
):
    """Write FFCV `.beton` shards and a checksummed `manifest.json` from an ImageNet-layout dataset.

    Unreadable files (truncated, zero-byte, not an image) are skipped and listed in the manifest with their
    reason; CMYK, greyscale and PNG-as-JPEG files are converted. The same input and settings give
    byte-identical shards.

    Args:
        data: Raw images in ImageNet layout (`train/<wnid>/*.JPEG`, `val/` foldered or flat with
            `LOC_val_solution.csv`).
        shards: Output directory: `train-NNNNN.beton`, `val-NNNNN.beton` and `manifest.json` (per shard:
            file, count, bytes, sha256, class histogram; class index, settings, skipped files). Metadata:
            `images`, `shards`, `total_bytes`, `manifest`.
        metrics: files_found, images_written, files_skipped, shards, total_mb, write_images_per_s,
            loader_images_per_s (FFCV train-pipeline read-back), seconds.
        split: "train", "val" or "both".
        images_per_shard: Images per `.beton` file (the last one of a split holds the rest).
        max_resolution: Longer image side after resizing, in pixels (images are never enlarged).
        jpeg_quality: JPEG quality of the stored images (1-100).
        workers: Decode/encode processes; also the read-back loader's threads.
        pipeline_run_id: The pipeline run's id; nests this step's MLflow run under the pipeline's run.
    """
    from pathlib import Path

    from visionnode.components.common.adapters.kfp import enter_pipeline_context
    from visionnode.components.shard.shard import ShardConfig, shard_dataset

    enter_pipeline_context(pipeline_run_id)
    result = shard_dataset(ShardConfig(
        data=Path(data.path), out=Path(shards.path), split=split, images_per_shard=images_per_shard,
        max_resolution=max_resolution, jpeg_quality=jpeg_quality, workers=workers))
    shards.metadata.update({"images": result.images_written, "shards": result.shards,
                            "total_bytes": result.total_bytes, "manifest": "manifest.json",
                            "files_skipped": result.files_skipped})
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
