"""KFP v2 component: hand the shards to training where they are (verified) or copied server-side."""

from kfp.dsl import Dataset, Input, Metrics, Output

from visionnode.components.common.adapters.kfp import phase_component


@phase_component("transfer")
def transfer_op(
    shards: Input[Dataset],
    data_digest: str,
    remote_shards: Output[Dataset],
    metrics: Output[Metrics],
    destination: str = "",
    concurrency: int = 16,
    part_size_mb: int = 16,
):
    """Check every shard in the store against its manifest, or copy the shards to another prefix of the store.

    The shard step wrote the shards into the store; its artifact is the manifest only. So this step moves no
    shard bytes through its pod: with no `destination` it HEADs each object (size, sha256 metadata, the
    server's own SHA-256 where it has one); with one it asks the store for a server-side copy.

    Args:
        shards: The shard step's manifest (manifest.json with base_uri + per-shard uri).
        data_digest: The fingerprint step's digest; the manifest must name the same data.
        remote_shards: Output dir holding the manifest.json train reads (per-shard `uri`, `base_uri`, sha256);
            its metadata["base_uri"] is where the shards are.
        metrics: bytes, seconds, MB/s, retries, objects transferred/skipped.
        destination: Empty: the shards stay where the shard step put them. s3://bucket/prefix on the same
            endpoint: copied there server-side (e.g. a bucket replicated near the trainers).
        concurrency: Parallel requests (objects, and parts of a large copy).
        part_size_mb: Multipart part size in MiB for a large copy (at least 5).
    """
    from pathlib import Path

    from visionnode.components.common.adapters.kfp import record_metrics
    from visionnode.components.transfer.transfer import PlaceConfig, place_shards

    out_dir = Path(remote_shards.path)
    result = place_shards(PlaceConfig(Path(shards.path), destination, data_digest, concurrency, part_size_mb,
                                      output_dir=out_dir))
    remote_shards.metadata["base_uri"] = result.destination
    remote_shards.metadata["manifest_uri"] = result.manifest
    remote_shards.metadata["objects"] = result.objects
    remote_shards.metadata["bytes"] = result.bytes_total
    record_metrics(metrics, result.metrics())
