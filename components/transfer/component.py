"""KFP v2 component: hand the shards to training where they are (verified) or copied server-side."""

from kfp.dsl import Dataset, Input, Metrics, Output

from visionnode.components.common.adapters.declared import with_setting_inputs
from visionnode.components.common.adapters.kfp import phase_component
from visionnode.components.transfer.config import PlaceConfig


@phase_component("transfer")
@with_setting_inputs(PlaceConfig)
def transfer_op(
    shards: Input[Dataset],
    data_digest: str,
    remote_shards: Output[Dataset],
    metrics: Output[Metrics],
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
    """
    settings = dict(locals())
    from pathlib import Path

    from visionnode.components.common.adapters.declared import build
    from visionnode.components.common.adapters.kfp import record_metrics
    from visionnode.components.transfer.transfer import PlaceConfig, place_shards

    result = place_shards(build(PlaceConfig, settings, shards=Path(shards.path),
                                output_dir=Path(remote_shards.path)))
    remote_shards.metadata["base_uri"] = result.destination
    remote_shards.metadata["manifest_uri"] = result.manifest
    remote_shards.metadata["objects"] = result.objects
    remote_shards.metadata["bytes"] = result.bytes_total
    record_metrics(metrics, result.metrics())
