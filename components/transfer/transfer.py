"""Hand the shards to training: upload a local shard dir, or place shards already in the store.

Two ways in, one remote manifest out (its `base_uri` says where train fetches from):

- `upload_shards`: a local shard dir (manifest.json + .beton files, e.g. made on a workstation) to
  `s3://bucket/prefix`: parallel multipart, sha256-verified, resumable (common/storage/upload.py).
- `place_shards`: shards the shard step already wrote into the store (a manifest whose `base_uri` is set).
  With no destination, or the same one, it is a verified no-op: every object is HEADed (size, sha256 metadata
  and, for a single-PUT object, the server's own SHA-256) and no byte moves. With another destination on the
  same endpoint the store copies server-side (CopyObject / UploadPartCopy); the bytes never pass through this
  pod. So each shard byte crosses the network twice between shard and train's first read: shard's PUT and
  train's GET.

Fetching shards back (train, quantize, benchmark) is common/storage/shard_cache.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from visionnode.components.common.artifacts import MANIFEST_FILE, ShardInfo, ShardManifest
from visionnode.components.common.errors import ConfigError, DataError, IntegrityError
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.storage.s3 import S3Location, parse_s3_uri
from visionnode.components.common.storage.session import S3Session, head_or_none
from visionnode.components.common.storage.shard_cache import (
    FetchConfig,
    ObjectOutcome,
    TransferResult,
    fetch_shards,
    materialize_shards,
    run_objects,
    shard_location,
    transfer_result,
)
from visionnode.components.common.storage.upload import (
    abort_stale_uploads,
    put_manifest,
    remote_manifest,
    stored_copy_matches,
    upload_one,
)
from visionnode.components.common.tracking import tracked_run
from visionnode.components.transfer.config import PlaceConfig, UploadConfig

__all__ = ["FetchConfig", "PlaceConfig", "TransferResult", "UploadConfig", "fetch_shards",
           "materialize_shards", "place_shards", "upload_shards"]


def upload_shards(config: UploadConfig) -> TransferResult:
    """Upload a shard dir to `s3://bucket/prefix`; verified, resumable; the remote manifest goes up last."""
    config.validate()
    shards_dir = Path(config.shards_dir)
    manifest = ShardManifest.load(shards_dir)
    missing = [s.file for s in manifest.shards if not (shards_dir / s.file).is_file()]
    if missing:
        raise DataError(f"{len(missing)} shard file(s) named in {shards_dir / MANIFEST_FILE} are missing "
                        f"(first: {missing[0]})", "re-create the shards with `visionnode shard`")
    dest = _prefix(config.destination)
    session = S3Session(config.concurrency, config.part_size_mb)
    try:
        with tracked_run("transfer", tags={"phase": "transfer", "direction": "upload"}) as tracker:
            tracker.log_params({"source": str(shards_dir), "destination": dest.uri,
                                "concurrency": config.concurrency, "part_size_mb": config.part_size_mb})
            session.check_bucket(dest.bucket, config.create_bucket)
            keys = {shard_location(dest, s).key for s in manifest.shards} | {dest.child(MANIFEST_FILE).key}
            aborted = session.with_object_retries(
                f"list multipart uploads in s3://{dest.bucket}", dest.bucket,
                lambda: abort_stale_uploads(session, dest.bucket, keys, dest.key))
            start = time.perf_counter()
            with progress_bar(manifest.total_bytes, f"upload → {dest.uri}", bytes_mode=True) as advance:
                outcomes = run_objects(manifest.shards, config.concurrency,
                                       lambda s: upload_one(session, s, shards_dir, dest, advance))
            result = _finish("upload", str(shards_dir), dest, manifest, outcomes, start, session, aborted,
                             config.output_dir)
            tracker.log_metrics(result.metrics())
            return result
    finally:
        session.close()


def place_shards(config: PlaceConfig) -> TransferResult:
    """Shards already in the store: verify them where they are, or copy them server-side to `destination`."""
    manifest = ShardManifest.load(config.shards)
    if not manifest.base_uri:
        raise DataError(f"{config.shards} names no store location (base_uri)",
                        "upload a local shard dir with `visionnode transfer upload DIR s3://bucket/prefix`")
    manifest.check_made_from(config.data_digest)
    source = parse_s3_uri(manifest.base_uri)
    dest = _prefix(config.destination) if config.destination else source
    direction = "verify" if dest == source else "copy"
    session = S3Session(config.concurrency, config.part_size_mb)
    try:
        with tracked_run("transfer", tags={"direction": direction}) as tracker:
            tracker.log_params({"source": source.uri, "destination": dest.uri,
                                "concurrency": config.concurrency})
            session.check_bucket(dest.bucket, create=False)
            start = time.perf_counter()
            with progress_bar(manifest.total_bytes, f"{direction} {dest.uri}", bytes_mode=True) as advance:
                outcomes = run_objects(manifest.shards, config.concurrency,
                                       lambda s: _place_one(session, s, source, dest, advance))
            result = _finish(direction, source.uri, dest, manifest, outcomes, start, session, 0,
                             config.output_dir)
            tracker.log_metrics(result.metrics())
            return result
    finally:
        session.close()


def _place_one(session: S3Session, shard: ShardInfo, source: S3Location, dest: S3Location,
               advance: Callable[[int], None]) -> ObjectOutcome:
    loc = shard_location(dest, shard)
    ok, how = _stored_check(session, loc, shard)
    if ok:
        advance(shard.bytes)
        return ObjectOutcome(False, 0, how)
    if dest == source:
        raise IntegrityError(f"{loc.uri} is not the shard its manifest names ({how} check failed)",
                             "re-run the pipeline from the shard step (`--no-cache`)")
    origin = shard_location(source, shard)
    session.with_object_retries(f"copy {origin.uri} to {loc.uri}", dest.bucket, lambda: session.manager.copy(
        {"Bucket": origin.bucket, "Key": origin.key}, loc.bucket, loc.key,
        extra_args={"Metadata": {"sha256": shard.sha256}, "MetadataDirective": "REPLACE"}).result())
    ok, how = _stored_check(session, loc, shard)
    if not ok:
        raise IntegrityError(f"{loc.uri} does not match {origin.uri} after a server-side copy ({how})",
                             "re-run; if it persists the server is corrupting data")
    advance(shard.bytes)
    return ObjectOutcome(True, 0, f"server-side copy, {how}")  # 0: no byte crossed this pod's network


def _stored_check(session: S3Session, loc: S3Location, shard: ShardInfo) -> tuple[bool, str]:
    head = session.with_object_retries(f"check {loc.uri}", loc.bucket, lambda: head_or_none(session, loc))
    return stored_copy_matches(head, shard)


def _finish(direction: str, source: str, dest: S3Location, manifest: ShardManifest,
            outcomes: list[ObjectOutcome], start: float, session: S3Session, aborted: int,
            output_dir: Path | None) -> TransferResult:
    """The remote manifest goes up last (and into `output_dir`, the step's output artifact); verifying in
    place writes nothing: the shard step's manifest is already there."""
    remote = remote_manifest(manifest, dest)
    local_manifest = remote.save(output_dir) if output_dir else None
    manifest_loc = dest.child(MANIFEST_FILE) if direction == "verify" else put_manifest(session, remote, dest)
    return transfer_result(direction, source, dest.uri, manifest_loc.uri, manifest, outcomes,
                           time.perf_counter() - start, session.retries.count, aborted,
                           str(local_manifest) if local_manifest else None)


def _prefix(uri: str) -> S3Location:
    dest = parse_s3_uri(uri.rstrip("/"))
    if not dest.key:
        raise ConfigError(f"'{uri}' has no prefix", "write it as s3://bucket/prefix")
    return dest
