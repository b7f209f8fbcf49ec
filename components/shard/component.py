"""KFP v2 component: FFCV shards from raw ImageNet-layout images (thin adapter over shard.shard_dataset)."""

from kfp.dsl import Dataset, Metrics, Output

from visionnode.components.common.adapters.declared import with_setting_inputs
from visionnode.components.common.adapters.kfp import phase_component
from visionnode.components.shard.config import ShardConfig


@phase_component("shard")
@with_setting_inputs(ShardConfig)
def shard_op(
    data_uri: str,
    data_digest: str,
    shards: Output[Dataset],
    metrics: Output[Metrics],
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
    """
    settings = dict(locals())
    from pathlib import Path

    from visionnode.components.common.adapters.declared import build
    from visionnode.components.common.adapters.kfp import record_metrics
    from visionnode.components.shard.shard import ShardConfig, shard_dataset

    config = build(ShardConfig, settings, data=data_uri, out="", manifest_copy=Path(shards.path))
    config.out = config.store_location(config.shards_uri)
    result = shard_dataset(config)
    shards.metadata.update({"images": result.images_written, "shards": result.shards,
                            "total_bytes": result.total_bytes, "manifest": "manifest.json",
                            "files_skipped": result.files_skipped, "base_uri": str(result.out)})
    record_metrics(metrics, result.metrics())
