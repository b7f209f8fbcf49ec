"""Verified, resumable upload of one shard file to S3, and the clean-up of abandoned multipart uploads.

Uploads go through boto3's TransferManager via `storage.session.S3Session` (parallel multipart, botocore's
adaptive retries, whole-object retries). What TransferManager cannot do is here, with its reason:

- integrity: TransferManager checks nothing end to end. We upload with `ChecksumAlgorithm=SHA256`, so the
  server checks each part's SHA-256 as it receives it and keeps the (composite, for multipart) checksum; after
  the upload we compare that stored checksum with one computed from the local file (`storage.digest`), and
  the manifest's whole-file sha256 is stored as object metadata `sha256`. No re-download is needed. When a
  server keeps no SHA-256 checksum we fall back to reading the object back and hashing it (slow but honest).
- resume: TransferManager has no memory between runs. A re-run HEADs every object and skips those whose size,
  metadata and stored checksum match.
- abandoned multipart uploads (a killed process never completes or aborts them; they hold storage): aborted
  for our own keys only, and only when started more than STALE_UPLOAD_AGE_S ago. Shard prefixes are shared
  by every run with the same data and settings, so an upload of the same key may be another run's, in
  flight; no upload of ours lasts anywhere near that long (a shard or checkpoint of 1 GB at a 1 MB/s floor
  takes 17 min), and s3transfer aborts the uploads it fails itself.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from visionnode.components.common.artifacts import MANIFEST_FILE, ShardInfo, ShardManifest
from visionnode.components.common.errors import IntegrityError
from visionnode.components.common.jsonio import SHA256_CHUNK, to_jsonable
from visionnode.components.common.storage.digest import LocalDigest, digest_file, planned_part_sizes
from visionnode.components.common.storage.s3 import S3Location
from visionnode.components.common.storage.session import (
    Rewindable,
    S3Session,
    head_or_none,
    progress_subscriber,
)
from visionnode.components.common.storage.shard_cache import ObjectOutcome, shard_location

STALE_UPLOAD_AGE_S = 24 * 3600   # the S3 lifecycle rule's own unit (AbortIncompleteMultipartUpload: 1 day)


def abort_stale_uploads(session: S3Session, bucket: str, keys: set[str], prefix: str,
                        older_than_s: float = STALE_UPLOAD_AGE_S) -> int:
    """Abort multipart uploads of `keys` started more than `older_than_s` ago (left by a killed process)."""
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than_s)
    aborted = 0
    paginator = session.client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []) or []:
            initiated = upload.get("Initiated")
            if upload["Key"] in keys and initiated is not None and initiated < cutoff:
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


def stored_copy_matches(head: dict | None, shard: ShardInfo) -> tuple[bool, str]:
    """Without the local bytes: is the object the one a verified upload of `shard` left (size, sha256)?
    A single-PUT object's server-computed checksum is its whole-file sha256, so it is checked outright."""
    if head is None:
        return False, "missing"
    if head.get("ContentLength") != shard.bytes or head.get("Metadata", {}).get("sha256") != shard.sha256:
        return False, "size/metadata"
    stored = head.get("ChecksumSHA256") or ""
    if stored and "-" not in stored:
        return base64.b64decode(stored).hex() == shard.sha256, "s3-checksum-sha256"
    return True, "size+sha256-metadata"


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

    # A failed multipart attempt is aborted by s3transfer itself; nothing else needs cleaning before a retry.
    ok, how = session.with_object_retries(f"upload {loc.uri}", loc.bucket, upload_and_verify)
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
    """The manifest of shards stored under `dest`: every shard's `uri`, and `base_uri`."""
    shards = [dataclasses.replace(s, uri=shard_location(dest, s).uri) for s in local.shards]
    return dataclasses.replace(local, shards=shards, base_uri=dest.uri)


def put_manifest(session: S3Session, manifest: ShardManifest, dest: S3Location) -> S3Location:
    """Write `manifest.json` under `dest`, last: its presence there means every shard it names is stored."""
    body = (json.dumps(to_jsonable(manifest), indent=2, sort_keys=True) + "\n").encode()
    loc = dest.child(MANIFEST_FILE)
    session.with_object_retries(f"upload {loc.uri}", dest.bucket, lambda: session.client.put_object(
        Bucket=dest.bucket, Key=loc.key, Body=body, ChecksumAlgorithm="SHA256",
        Metadata={"sha256": hashlib.sha256(body).hexdigest()}))
    return loc
