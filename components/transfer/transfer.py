"""Upload a shard directory to S3: parallel, verified, resumable (fetch: common/storage/shard_cache.py).

Uploads go through boto3's TransferManager via `storage.session.S3Session` (parallel multipart, botocore's
adaptive retries, whole-object retries). What TransferManager cannot do is written here, with its reason:

- integrity: TransferManager checks nothing end to end. We upload with `ChecksumAlgorithm=SHA256`, so the
  server checks each part's SHA-256 as it receives it and keeps the (composite, for multipart) checksum; after
  the upload we compare that stored checksum with one computed from the local file (`common.s3_digest`), and
  the manifest's whole-file sha256 is stored as object metadata `sha256`. No re-download is needed. When a
  server keeps no SHA-256 checksum we fall back to reading the object back and hashing it (slow but honest).
- resume: TransferManager has no memory between runs. A re-run HEADs every object and skips those whose size,
  metadata and stored checksum match; multipart uploads abandoned by a killed run are aborted for our keys.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from visionnode.components.common.artifacts import MANIFEST_FILE, ShardInfo, ShardManifest
from visionnode.components.common.errors import ConfigError, DataError, IntegrityError
from visionnode.components.common.jsonio import SHA256_CHUNK, to_jsonable
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.storage.digest import LocalDigest, digest_file, planned_part_sizes
from visionnode.components.common.storage.s3 import S3Location, parse_s3_uri
from visionnode.components.common.storage.session import (
    Rewindable,
    S3Session,
    head_or_none,
    progress_subscriber,
)
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
from visionnode.components.common.tracking import tracked_run
from visionnode.components.transfer.config import UploadConfig

__all__ = ["FetchConfig", "TransferResult", "UploadConfig", "fetch_shards", "materialize_shards",
           "upload_shards"]


def abort_stale_uploads(session: S3Session, bucket: str, keys: set[str], prefix: str) -> int:
    """Abort multipart uploads a killed run left behind for our keys (they hold storage and never finish)."""
    aborted = 0
    paginator = session.client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []) or []:
            if upload["Key"] in keys:
                session.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                      UploadId=upload["UploadId"])
                aborted += 1
    return aborted


def remote_part_sizes(session: S3Session, bucket: str, key: str) -> list[int]:
    sizes: list[int] = []
    marker = 0
    while True:
        attrs = session.client.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=["ObjectParts"],
                                                     MaxParts=1000, PartNumberMarker=marker)
        parts = attrs.get("ObjectParts", {})
        sizes.extend(p["Size"] for p in parts.get("Parts", []) or [])
        if not parts.get("IsTruncated"):
            return sizes
        marker = parts["NextPartNumberMarker"]


def read_back_sha256(session: S3Session, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    body = session.client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(SHA256_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def remote_matches(session: S3Session, loc: S3Location, local: LocalDigest, head: dict) -> tuple[bool, str]:
    """Does the stored object hold exactly the local bytes? Returns (match, how it was checked)."""
    if head.get("ContentLength") != local.size:
        return False, "size"
    if head.get("Metadata", {}).get("sha256") != local.sha256:
        return False, "metadata"
    stored = head.get("ChecksumSHA256")
    if not stored:
        return read_back_sha256(session, loc.bucket, loc.key) == local.sha256, "read-back"
    if stored == local.s3_checksum:
        return True, "s3-checksum-sha256"
    if "-" not in stored:  # a single PUT: the checksum is the whole-file sha256
        return base64.b64decode(stored).hex() == local.sha256, "s3-checksum-sha256"
    # Uploaded earlier with another part size: re-cut the local file the way the server has it.
    sizes = remote_part_sizes(session, loc.bucket, loc.key)
    return digest_file(local.path, sizes).s3_checksum == stored, "s3-checksum-sha256"


def upload_one(session: S3Session, shard: ShardInfo, shards_dir: Path, dest: S3Location,
               advance: Callable[[int], None]) -> ObjectOutcome:
    path = shards_dir / shard.file
    loc = shard_location(dest, shard)
    if path.stat().st_size != shard.bytes:
        raise _local_mismatch(path, path.stat().st_size, "size", shard)
    part_sizes = planned_part_sizes(shard.bytes, session.part_size,
                                    session.transfer_config.multipart_threshold)
    head = session.with_object_retries(f"check {loc.uri}", loc.bucket, lambda: head_or_none(session, loc))
    if head is not None:  # resume: hash first, skip when the stored object is exactly this file
        local = _checked_digest(path, part_sizes, shard)
        present, how = session.with_object_retries(f"check {loc.uri}", loc.bucket,
                                                   lambda: remote_matches(session, loc, local, head))
        if present:
            advance(local.size)
            return ObjectOutcome(False, 0, how)
        pending_digest = None
    else:  # a new object: hash while the bytes are on the wire instead of before
        pending_digest = session.hash_pool.submit(_checked_digest, path, part_sizes, shard)

    def upload_and_verify() -> tuple[bool, str]:
        progress = Rewindable(advance)
        try:
            future = session.manager.upload(
                str(path), loc.bucket, loc.key,
                extra_args={"Metadata": {"sha256": shard.sha256}, "ChecksumAlgorithm": "SHA256"},
                subscribers=[progress_subscriber(progress)])
            future.result()
        except BaseException:
            progress.rewind()
            raise
        head = session.client.head_object(Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED")
        return remote_matches(session, loc, digest_for(), head)

    digest: list[LocalDigest] = []

    def digest_for() -> LocalDigest:
        if not digest:
            try:
                digest.append(pending_digest.result() if pending_digest else local)
            except IntegrityError:  # the local file is not what the manifest says: take back its upload
                session.client.delete_object(Bucket=loc.bucket, Key=loc.key)
                raise
        return digest[0]

    ok, how = session.with_object_retries(
        f"upload {loc.uri}", loc.bucket, upload_and_verify,
        before_retry=lambda: abort_stale_uploads(session, loc.bucket, {loc.key}, loc.key))
    if not ok:
        raise IntegrityError(f"{loc.uri} does not match {path} after upload ({how} check failed)",
                             "re-run the upload; if it persists the server is corrupting data")
    return ObjectOutcome(True, shard.bytes, how)


def _checked_digest(path: Path, part_sizes: list[int] | None, shard: ShardInfo) -> LocalDigest:
    local = digest_file(path, part_sizes)
    if local.sha256 != shard.sha256:
        raise _local_mismatch(path, local.sha256[:16] + "…", "sha256", shard)
    return local


def _local_mismatch(path: Path, found: object, what: str, shard: ShardInfo) -> IntegrityError:
    expected = shard.bytes if what == "size" else shard.sha256[:16] + "…"
    return IntegrityError(f"local shard {path} has {what} {found} but the manifest says {expected}",
                          "re-create the shards with `visionnode shard`")


def remote_manifest(local: ShardManifest, dest: S3Location) -> ShardManifest:
    shards = [dataclasses.replace(s, uri=shard_location(dest, s).uri) for s in local.shards]
    return dataclasses.replace(local, shards=shards, base_uri=dest.uri)


def upload_shards(config: UploadConfig) -> TransferResult:
    """Upload a shard dir to `s3://bucket/prefix`; verified, resumable; the remote manifest goes up last."""
    config.validate()
    shards_dir = Path(config.shards_dir)
    manifest = ShardManifest.load(shards_dir)
    missing = [s.file for s in manifest.shards if not (shards_dir / s.file).is_file()]
    if missing:
        raise DataError(f"{len(missing)} shard file(s) named in {shards_dir / MANIFEST_FILE} are missing "
                        f"(first: {missing[0]})", "re-create the shards with `visionnode shard`")
    dest = parse_s3_uri(config.destination.rstrip("/"))
    if not dest.key:
        raise ConfigError(f"'{config.destination}' has no prefix", "write it as s3://bucket/prefix")
    session = S3Session(config.concurrency, config.part_size_mb)
    try:
        with tracked_run("transfer", tags={"direction": "upload"}) as tracker:
            tracker.log_params({"source": str(shards_dir), "destination": dest.uri,
                                "concurrency": config.concurrency, "part_size_mb": config.part_size_mb})
            session.check_bucket(dest.bucket, config.create_bucket)
            keys = {shard_location(dest, s).key for s in manifest.shards} | {dest.child(MANIFEST_FILE).key}
            aborted = session.with_object_retries(
                f"list multipart uploads in s3://{dest.bucket}", dest.bucket,
                lambda: abort_stale_uploads(session, dest.bucket, keys, dest.key))
            start = time.perf_counter()
            with progress_bar(manifest.total_bytes, f"upload → {dest.uri}", bytes_mode=True) as advance:
                outcomes = run_objects(
                    manifest.shards, config.concurrency,
                    lambda s: upload_one(session, s, shards_dir, dest, advance))
            remote = remote_manifest(manifest, dest)
            local_manifest = remote.save(config.output_dir) if config.output_dir else None
            body = (json.dumps(to_jsonable(remote), indent=2, sort_keys=True) + "\n").encode()
            manifest_loc = dest.child(MANIFEST_FILE)
            session.with_object_retries(f"upload {manifest_loc.uri}", dest.bucket,
                                        lambda: session.client.put_object(
                Bucket=dest.bucket, Key=manifest_loc.key, Body=body, ChecksumAlgorithm="SHA256",
                Metadata={"sha256": hashlib.sha256(body).hexdigest()}))
            seconds = time.perf_counter() - start
            result = transfer_result("upload", str(shards_dir), dest.uri, manifest_loc.uri, manifest,
                                     outcomes,
                             seconds, session.retries.count, aborted,
                             str(local_manifest) if local_manifest else None)
            tracker.log_metrics(result.metrics())
            return result
    finally:
        session.close()


