"""KFP v2 component: FFCV shards from raw ImageNet-layout images (thin adapter over shard.shard_dataset)."""

from kfp.dsl import Dataset, Metrics, Output

from visionnode.components.common.adapters.kfp import phase_component


@phase_component("shard")
def shard_op(
    data_uri: str,
    data_digest: str,
    shards: Output[Dataset],
    metrics: Output[Metrics],
    shards_uri: str = "s3://visionnode/shards",
    split: str = "both",
    images_per_shard: int = 5000,
    max_resolution: int = 256,
    jpeg_quality: int = 90,
    workers: int = 2,
):
    """Write FFCV `.beton` shards straight into the store, with a checksummed manifest.

    Unreadable files (truncated, zero-byte, not an image) are skipped and listed in the manifest with their
    reason; CMYK, greyscale and PNG-as-JPEG files are converted. The same input and settings give
    byte-identical shards, so they are kept at a place derived from both:
    `<shards_uri>/<data_digest>/<settings digest>/`. A run with the same data and settings finds them there
    (and a retried pod resumes from the journal beside them); different data or settings never collide.

    Args:
        data_uri: Raw images in ImageNet layout (`train/<wnid>/*.JPEG`, `val/` foldered or flat with
            `LOC_val_solution.csv`), an s3://bucket/prefix or a directory: read where they lie, a chunk at a
            time (never copied whole into the pod).
        data_digest: The fingerprint step's digest of the data listing; the step fails if the data changed.
        shards: The manifest only (`manifest.json`: per shard file, uri, count, bytes, sha256, class
            histogram; class index, settings, skipped files, base_uri). Metadata: `images`, `shards`,
            `total_bytes`, `base_uri`.
        metrics: files_found, images_written, files_skipped, shards, total_mb, write_images_per_s,
            loader_images_per_s (FFCV read-back of the first shard of each split), seconds.
        shards_uri: Base of the shard store (s3://bucket/prefix).
        split: "train", "val" or "both".
        images_per_shard: Images per `.beton` file (the last one of a split holds the rest).
        max_resolution: Longer image side after resizing, in pixels (images are never enlarged).
        jpeg_quality: JPEG quality of the stored images (1-100).
        workers: Decode/encode processes; also the read-back loader's threads.
    """
    from pathlib import Path

    from visionnode.components.common.adapters.kfp import record_metrics
    from visionnode.components.shard.shard import ShardConfig, shard_dataset

    config = ShardConfig(data=data_uri, out="", split=split, images_per_shard=images_per_shard,
                         max_resolution=max_resolution, jpeg_quality=jpeg_quality, workers=workers,
                         data_digest=data_digest, manifest_copy=Path(shards.path))
    config.out = config.store_location(shards_uri)
    result = shard_dataset(config)
    shards.metadata.update({"images": result.images_written, "shards": result.shards,
                            "total_bytes": result.total_bytes, "manifest": "manifest.json",
                            "files_skipped": result.files_skipped, "base_uri": str(result.out)})
    record_metrics(metrics, result.metrics())
