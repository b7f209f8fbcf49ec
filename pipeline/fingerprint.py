"""The DAG's first step: the data's fingerprint, from a listing of the dataset (no byte of it read).

Never cached: it is what tells the cached steps whether the data changed. validate, shard, transfer and train
take its `data_digest` as an input, so their KFP cache keys follow the data and not the run; shard also names
the shards' place in the store by it. It runs in the light transfer image (boto3, no torch).
"""

from typing import NamedTuple

from kfp.dsl import Metrics, Output

from visionnode.components.common.adapters.kfp import phase_component


@phase_component("transfer")
def fingerprint_op(
    data_uri: str,
    metrics: Output[Metrics],
) -> NamedTuple("FingerprintOutputs", [("data_digest", str)]):
    """List the raw dataset and digest (key, size, ETag or mtime) of every file into 16 hex digits.

    Args:
        data_uri: The dataset root: s3://bucket/prefix (listed 1,000 keys a request) or a directory.
        metrics: files, total_mb, list_requests, seconds.

    Returns:
        data_digest: the fingerprint; any added, removed, resized or rewritten file changes it.
    """
    from visionnode.components.common.adapters.kfp import record_metrics
    from visionnode.components.common.storage.dataset import fingerprint_dataset

    found = fingerprint_dataset(data_uri)
    print(f"data fingerprint {found.digest}: {found.files:,} files, {found.total_bytes / 1e9:.3f} GB, "
          f"{found.list_requests} list requests, {found.seconds:.1f} s")
    record_metrics(metrics, found.metrics())
    outputs = NamedTuple("FingerprintOutputs", [("data_digest", str)])
    return outputs(found.digest)
