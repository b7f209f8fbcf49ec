"""Move shards between local disk and S3: parallel, verified, resumable.

Uploads and downloads go through boto3's TransferManager (s3transfer): parallel multipart upload and ranged
parallel download on one bounded thread pool, with botocore's adaptive retries (exponential backoff + jitter)
from `common.storage.s3_client`. What it cannot do is written here, each with its reason:

- integrity: TransferManager checks nothing end to end. We upload with `ChecksumAlgorithm=SHA256`, so the
  server checks each part's SHA-256 as it receives it and keeps the (composite, for multipart) checksum; after
  the upload we compare that stored checksum with one computed from the local file (same part boundaries),
  and the manifest's whole-file sha256 is stored as object metadata `sha256`. No re-download is needed. When a
  server keeps no SHA-256 checksum we fall back to reading the object back and hashing it (slow but honest).
  Downloads are hashed locally and compared with the manifest.
- resume: TransferManager has no memory between runs. A re-run HEADs every object and skips those whose size,
  metadata and stored checksum match; multipart uploads abandoned by a killed run are aborted for our keys.
- whole-object retries: botocore retries single requests; a server restart can outlast them or leave a
  multipart upload broken, so each object is retried as a whole (backoff + jitter) a few more times.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.artifacts import MANIFEST_FILE, ShardInfo, ShardManifest
from ..common.errors import ConfigError, DataError, IntegrityError, ServiceError, VisionNodeError
from ..common.jsonio import SHA256_CHUNK, sha256_file, write_json
from ..common.progress import progress_bar
from ..common.settings import state_dir
from ..common.storage import S3Config, S3Location, is_s3_uri, parse_s3_uri, resolve_s3_config, s3_client
from ..common.tracking import tracked_run

MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB          # S3's smallest multipart part (except the last)
OBJECT_ATTEMPTS = 6               # whole-object tries on top of botocore's per-request retries
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 20.0
VERIFIED_SUFFIX = ".verified.json"  # sidecar in a fetch cache: the file was hashed at this size/mtime
PARTIAL_MARK = ".partial"

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
               "InvalidToken", "ExpiredToken"}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}


# --------------------------------------------------------------------------------------------- configs/results
@dataclass
class UploadConfig:
    shards_dir: Path
    destination: str                 # s3://bucket/prefix
    concurrency: int = 16            # parallel requests (parts and objects together)
    part_size_mb: int = 16
    create_bucket: bool = False
    output_dir: Path | None = None   # where the remote manifest.json is also written

    def validate(self) -> None:
        parse_s3_uri(self.destination)
        check_transfer_settings(self.concurrency, self.part_size_mb)


def check_transfer_settings(concurrency: int, part_size_mb: int) -> None:
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
    if part_size_mb * MIB < MIN_PART_BYTES:
        raise ConfigError(f"--part-size must be at least 5 MB (S3's minimum part), got {part_size_mb}")


@dataclass
class FetchConfig:
    source: str                      # s3://bucket/prefix holding manifest.json
    cache_dir: Path
    concurrency: int = 16
    part_size_mb: int = 16


@dataclass
class TransferResult:
    direction: str                   # "upload" or "fetch"
    source: str
    destination: str
    manifest: str                    # where the (remote) manifest now is
    objects: int
    objects_transferred: int
    objects_skipped: int
    bytes_total: int
    bytes_transferred: int
    seconds: float
    mb_per_s: float                  # bytes_transferred / seconds, 1 MB = 1e6 bytes
    retries: int                     # botocore request retries + whole-object retries
    stale_uploads_aborted: int = 0
    verification: str = ""           # how objects were verified
    local_manifest: str | None = None


# --------------------------------------------------------------------------------------------- local digests
@dataclass
class LocalDigest:
    """Whole-file sha256 plus the S3 composite SHA-256 for one way of cutting the file into parts."""

    path: Path
    size: int
    sha256: str
    part_size: int | None            # None: uploaded as one PUT
    s3_checksum: str                 # what S3 reports as ChecksumSHA256 for that cut


def s3_sha256_checksum(part_digests: list[bytes], single: bool) -> str:
    """S3's ChecksumSHA256: base64(sha256) of a single PUT, or base64(sha256(concat(part sha256s)))-N."""
    if single:
        return base64.b64encode(part_digests[0]).decode()
    composite = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(composite).decode()}-{len(part_digests)}"


def digest_file(path: Path, part_sizes: list[int] | None) -> LocalDigest:
    """One read of the file: whole sha256 and per-part sha256s. `part_sizes=None` means a single PUT."""
    whole = hashlib.sha256()
    parts: list[bytes] = []
    size = path.stat().st_size
    sizes = part_sizes or [size]
    with open(path, "rb") as fh:
        for part_size in sizes:
            part = hashlib.sha256()
            left = part_size
            while left > 0:
                chunk = fh.read(min(SHA256_CHUNK, left))
                if not chunk:
                    break
                whole.update(chunk)
                part.update(chunk)
                left -= len(chunk)
            parts.append(part.digest())
    uniform = part_sizes[0] if part_sizes else None
    return LocalDigest(path, size, whole.hexdigest(), uniform,
                       s3_sha256_checksum(parts, single=part_sizes is None))


def planned_part_sizes(size: int, part_size: int, threshold: int) -> list[int] | None:
    """The part sizes TransferManager will use for a file of `size` bytes (None: a single PUT)."""
    from s3transfer.utils import ChunksizeAdjuster

    if size < threshold:
        return None
    chunk = ChunksizeAdjuster().adjust_chunksize(part_size, size)
    full, rest = divmod(size, chunk)
    return [chunk] * full + ([rest] if rest else [])


# --------------------------------------------------------------------------------------------- S3 session
class RetryCounter:
    """Counts botocore's request retries (from each response's RetryAttempts) and our object retries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        if n:
            with self._lock:
                self.count += n

    def on_after_call(self, parsed: dict | None = None, **_: Any) -> None:
        if isinstance(parsed, dict):
            self.add(int(parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0))


class S3Session:
    """One client, one TransferManager and the error translation every S3 call here goes through."""

    def __init__(self, concurrency: int, part_size_mb: int, config: S3Config | None = None) -> None:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        check_transfer_settings(concurrency, part_size_mb)
        base = config or resolve_s3_config()
        # Every upload here sends ChecksumSHA256, which the server verifies; signing the payload too would
        # hash each byte once more on both ends (botocore always does over plain http) for no extra safety.
        self.config = dataclasses.replace(base, max_pool_connections=max(base.max_pool_connections,
                                                                         concurrency + 4),
                                          payload_signing=False)
        self.endpoint = self.config.endpoint or "AWS S3"
        self.client = s3_client(self.config)
        # Preflight calls fail fast instead of backing off for a minute on a wrong endpoint.
        self.quick_client = s3_client(dataclasses.replace(self.config, max_attempts=2, connect_timeout_s=5.0))
        self.retries = RetryCounter()
        self.client.meta.events.register("after-call.s3", self.retries.on_after_call)
        self.part_size = part_size_mb * MIB
        self.transfer_config = TransferConfig(
            multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
            max_concurrency=concurrency, use_threads=True,
            # CRT would bypass our botocore retry config and checksum choice; keep the classic manager.
            preferred_transfer_client="classic")
        self.manager = create_transfer_manager(self.client, self.transfer_config)
        # botocore sends `Expect: 100-continue` with every part and waits for the answer: one extra round
        # trip per part (200 ms on a long link). Bucket and credentials are checked up front, so the early
        # refusal it could save is not worth that.
        from botocore.handlers import add_expect_header

        self.client.meta.events.unregister("before-call.s3", add_expect_header)
        self.hash_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vn-hash")

    def close(self) -> None:
        self.manager.shutdown()
        self.hash_pool.shutdown(cancel_futures=True)

    def translate(self, exc: Exception, what: str, bucket: str | None = None) -> VisionNodeError | None:
        """A user-facing error for failures that retrying cannot fix; None for transient ones."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, VisionNodeError):
            return exc
        if isinstance(exc, NoCredentialsError):
            return ServiceError(f"no S3 credentials for {self.endpoint}",
                                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or run `visionnode stack up`")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _AUTH_CODES:
                return ServiceError(f"S3 at {self.endpoint} rejected the credentials while trying to {what} "
                                    f"({code})", "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
            if code in _MISSING_BUCKET_CODES or (code == "404" and what.startswith("check bucket")):
                return ConfigError(f"bucket '{bucket}' does not exist on {self.endpoint}",
                                   "check the URI, or create it (`transfer upload --create-bucket`)")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status and status < 500 and code not in {"RequestTimeout", "SlowDown", "Throttling"}:
                return ServiceError(f"S3 at {self.endpoint} refused to {what}: {code} "
                                    f"{exc.response.get('Error', {}).get('Message', '')}".strip())
            return None
        if isinstance(exc, EndpointConnectionError) and what.startswith("check bucket"):
            return ServiceError(f"cannot connect to the S3 endpoint {self.endpoint}",
                                "check VISIONNODE_S3_ENDPOINT or start the stack with `visionnode stack up`")
        return None

    def check_bucket(self, bucket: str, create: bool) -> None:
        """Endpoint reachable, credentials accepted, bucket present (or created when asked)."""
        try:
            self.quick_client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            return
        except Exception as exc:  # noqa: BLE001 - translated or re-raised below
            error = self.translate(exc, f"check bucket {bucket}", bucket)
            if error is None:
                raise ServiceError(f"S3 at {self.endpoint} failed while checking bucket '{bucket}' "
                                   f"({type(exc).__name__})", "retry later") from None
            if not (create and isinstance(error, ConfigError)):
                raise error from None
        try:
            self.quick_client.create_bucket(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001
            raise (self.translate(exc, f"create bucket {bucket}", bucket)
                   or ServiceError(f"could not create bucket '{bucket}' ({type(exc).__name__})")) from None

    def with_object_retries(self, what: str, bucket: str, action: Callable[[], Any],
                            before_retry: Callable[[], None] | None = None) -> Any:
        """Run `action`; on transient failures retry it whole with exponential backoff and full jitter."""
        for attempt in range(1, OBJECT_ATTEMPTS + 1):
            try:
                return action()
            except Exception as exc:  # noqa: BLE001 - classified right here
                error = self.translate(exc, what, bucket)
                if error is not None:
                    raise error from None
                if attempt == OBJECT_ATTEMPTS:
                    raise ServiceError(f"gave up trying to {what} after {attempt} attempts "
                                       f"({type(exc).__name__}: {_one_line(exc)})",
                                       f"is {self.endpoint} up? re-run to resume") from None
                self.retries.add(1)
                time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt)))
                if before_retry is not None:
                    try:
                        before_retry()
                    except Exception:  # noqa: BLE001 - best effort; the next attempt reports real errors
                        pass
        raise AssertionError("unreachable")


def _one_line(exc: Exception) -> str:
    return re.sub(r"\s+", " ", str(exc))[:200]


def _progress_subscriber(advance: Callable[[int], None]):
    from s3transfer.subscribers import BaseSubscriber

    class Progress(BaseSubscriber):
        def on_progress(self, future: Any, bytes_transferred: int, **_: Any) -> None:
            advance(bytes_transferred)

    return Progress()


# --------------------------------------------------------------------------------------------- upload
def shard_location(destination: S3Location, shard: ShardInfo) -> S3Location:
    return destination.child(shard.file)


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


def head_or_none(session: S3Session, loc: S3Location) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return session.client.head_object(Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


@dataclass
class _ObjectOutcome:
    transferred: bool
    bytes: int
    verification: str


def upload_one(session: S3Session, shard: ShardInfo, shards_dir: Path, dest: S3Location,
               advance: Callable[[int], None]) -> _ObjectOutcome:
    path = shards_dir / shard.file
    loc = shard_location(dest, shard)
    if path.stat().st_size != shard.bytes:
        raise _local_mismatch(path, path.stat().st_size, "size", shard)
    part_sizes = planned_part_sizes(shard.bytes, session.part_size, session.transfer_config.multipart_threshold)
    head = session.with_object_retries(f"check {loc.uri}", loc.bucket, lambda: head_or_none(session, loc))
    if head is not None:  # resume: hash first, skip when the stored object is exactly this file
        local = _checked_digest(path, part_sizes, shard)
        present, how = session.with_object_retries(f"check {loc.uri}", loc.bucket,
                                                   lambda: remote_matches(session, loc, local, head))
        if present:
            advance(local.size)
            return _ObjectOutcome(False, 0, how)
        pending_digest = None
    else:  # a new object: hash while the bytes are on the wire instead of before
        pending_digest = session.hash_pool.submit(_checked_digest, path, part_sizes, shard)

    def upload_and_verify() -> tuple[bool, str]:
        progress = _Rewindable(advance)
        try:
            future = session.manager.upload(
                str(path), loc.bucket, loc.key,
                extra_args={"Metadata": {"sha256": shard.sha256}, "ChecksumAlgorithm": "SHA256"},
                subscribers=[_progress_subscriber(progress)])
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
    return _ObjectOutcome(True, shard.bytes, how)


def _checked_digest(path: Path, part_sizes: list[int] | None, shard: ShardInfo) -> LocalDigest:
    local = digest_file(path, part_sizes)
    if local.sha256 != shard.sha256:
        raise _local_mismatch(path, local.sha256[:16] + "…", "sha256", shard)
    return local


def _local_mismatch(path: Path, found: object, what: str, shard: ShardInfo) -> IntegrityError:
    expected = shard.bytes if what == "size" else shard.sha256[:16] + "…"
    return IntegrityError(f"local shard {path} has {what} {found} but the manifest says {expected}",
                          "re-create the shards with `visionnode shard`")


class _Rewindable:
    """Progress callback that can take back what a failed attempt reported, so the bar stays honest."""

    def __init__(self, advance: Callable[[int], None]) -> None:
        self.advance = advance
        self.total = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n
        self.advance(n)

    def rewind(self) -> None:
        with self._lock:
            n, self.total = self.total, 0
        if n:
            self.advance(-n)


def remote_manifest(local: ShardManifest, dest: S3Location) -> ShardManifest:
    shards = [dataclasses.replace(s, uri=shard_location(dest, s).uri) for s in local.shards]
    return dataclasses.replace(local, shards=shards, base_uri=dest.uri)


def _merge_verification(methods: Iterable[str]) -> str:
    return ",".join(sorted({m for m in methods if m})) or "none"


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
                outcomes = _run_objects(
                    manifest.shards, config.concurrency,
                    lambda s: upload_one(session, s, shards_dir, dest, advance))
            remote = remote_manifest(manifest, dest)
            local_manifest = remote.save(config.output_dir) if config.output_dir else None
            body = (json.dumps(_jsonable(remote), indent=2, sort_keys=True) + "\n").encode()
            manifest_loc = dest.child(MANIFEST_FILE)
            session.with_object_retries(f"upload {manifest_loc.uri}", dest.bucket, lambda: session.client.put_object(
                Bucket=dest.bucket, Key=manifest_loc.key, Body=body, ChecksumAlgorithm="SHA256",
                Metadata={"sha256": hashlib.sha256(body).hexdigest()}))
            seconds = time.perf_counter() - start
            result = _result("upload", str(shards_dir), dest.uri, manifest_loc.uri, manifest, outcomes,
                             seconds, session.retries.count, aborted,
                             str(local_manifest) if local_manifest else None)
            tracker.log_metrics(_metrics(result))
            return result
    finally:
        session.close()


def _jsonable(value: Any) -> Any:
    from ..common.jsonio import to_jsonable

    return to_jsonable(value)


def _run_objects(shards: list[ShardInfo], concurrency: int,
                 work: Callable[[ShardInfo], _ObjectOutcome]) -> list[_ObjectOutcome]:
    """Per-object steps (hash, HEAD, transfer, verify) run side by side; TransferManager bounds the I/O."""
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(shards) or 1)),
                            thread_name_prefix="vn-object") as pool:
        futures = [pool.submit(work, s) for s in shards]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _result(direction: str, source: str, destination: str, manifest_uri: str, manifest: ShardManifest,
            outcomes: list[_ObjectOutcome], seconds: float, retries: int, aborted: int,
            local_manifest: str | None) -> TransferResult:
    moved = sum(o.bytes for o in outcomes)
    return TransferResult(
        direction=direction, source=source, destination=destination, manifest=manifest_uri,
        objects=len(outcomes), objects_transferred=sum(o.transferred for o in outcomes),
        objects_skipped=sum(not o.transferred for o in outcomes), bytes_total=manifest.total_bytes,
        bytes_transferred=moved, seconds=round(seconds, 3),
        mb_per_s=round(moved / seconds / 1e6, 3) if seconds > 0 else 0.0, retries=retries,
        stale_uploads_aborted=aborted, verification=_merge_verification(o.verification for o in outcomes),
        local_manifest=local_manifest)


def _metrics(result: TransferResult) -> dict[str, float]:
    return {"bytes_total": result.bytes_total, "bytes_transferred": result.bytes_transferred,
            "seconds": result.seconds, "mb_per_s": result.mb_per_s, "retries": result.retries,
            "objects_transferred": result.objects_transferred, "objects_skipped": result.objects_skipped}


# --------------------------------------------------------------------------------------------- fetch
def load_remote_manifest(session: S3Session, source: S3Location) -> ShardManifest:
    from botocore.exceptions import ClientError

    loc = source.child(MANIFEST_FILE)

    def get() -> bytes:
        try:
            return session.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in {"NoSuchKey", "404"}:
                raise DataError(f"{loc.uri} does not exist",
                                "upload shards there first with `visionnode transfer upload`") from None
            raise

    body = session.with_object_retries(f"read {loc.uri}", loc.bucket, get)
    with tempfile.TemporaryDirectory() as tmp:  # ShardManifest.load validates the format; reuse it
        (Path(tmp) / MANIFEST_FILE).write_bytes(body)
        try:
            return ShardManifest.load(Path(tmp))
        except DataError:
            raise DataError(f"{loc.uri} is not a VisionNode shard manifest",
                            "point at the prefix `visionnode transfer upload` wrote") from None


def stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{VERIFIED_SUFFIX}")


def is_verified_copy(path: Path, shard: ShardInfo) -> bool:
    """Already fetched and hashed? A sidecar stamp records sha256 at the file's size and mtime, so a cache of
    150 GB is not re-hashed on every run; a changed size or mtime forces a fresh hash."""
    if not path.is_file():
        return False
    stat = path.stat()
    if stat.st_size != shard.bytes:
        return False
    stamp = stamp_path(path)
    try:
        data = json.loads(stamp.read_text())
        if (data.get("sha256") == shard.sha256 and data.get("size") == stat.st_size
                and data.get("mtime_ns") == stat.st_mtime_ns):
            return True
    except (OSError, json.JSONDecodeError):
        pass
    if sha256_file(path) != shard.sha256:
        return False
    write_stamp(path, shard.sha256)
    return True


def write_stamp(path: Path, sha256: str) -> None:
    stat = path.stat()
    write_json(stamp_path(path), {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


def clean_partials(cache_dir: Path) -> None:
    """Temp files of a killed fetch (ours `.<name>.partial`, s3transfer's `.<name>.partial.<random>`)."""
    for stray in cache_dir.glob(f".*{PARTIAL_MARK}*"):
        if stray.is_file():
            stray.unlink(missing_ok=True)


def fetch_one(session: S3Session, shard: ShardInfo, cache_dir: Path, base: S3Location,
              advance: Callable[[int], None]) -> _ObjectOutcome:
    target = cache_dir / shard.file
    if is_verified_copy(target, shard):
        advance(shard.bytes)
        return _ObjectOutcome(False, 0, "sha256-local")
    loc = parse_s3_uri(shard.uri) if shard.uri else shard_location(base, shard)
    tmp = target.with_name(f".{target.name}{PARTIAL_MARK}")
    target.parent.mkdir(parents=True, exist_ok=True)

    def download() -> str:
        progress = _Rewindable(advance)
        try:
            session.manager.download(loc.bucket, loc.key, str(tmp),
                                     subscribers=[_progress_subscriber(progress)]).result()
        except BaseException:
            progress.rewind()
            tmp.unlink(missing_ok=True)
            raise
        digest = sha256_file(tmp)
        if digest != shard.sha256:
            progress.rewind()
        return digest

    # A mismatch could be a torn read; fetch once more before calling the object corrupt.
    for attempt in (1, 2):
        digest = session.with_object_retries(f"download {loc.uri}", loc.bucket, download)
        if digest == shard.sha256:
            break
        tmp.unlink(missing_ok=True)
        if attempt == 2:
            raise IntegrityError(f"{loc.uri} has sha256 {digest[:16]}… but the manifest says "
                                 f"{shard.sha256[:16]}… (downloaded twice)",
                                 "the object in the bucket is corrupt: re-run `visionnode transfer upload`")
    os.replace(tmp, target)
    write_stamp(target, shard.sha256)
    return _ObjectOutcome(True, shard.bytes, "sha256-local")


def fetch_shards(config: FetchConfig) -> TransferResult:
    """Bring the shards under `s3://bucket/prefix` into a local dir, each file sha256-checked."""
    source = parse_s3_uri(config.source.rstrip("/"))
    cache_dir = Path(config.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    session = S3Session(config.concurrency, config.part_size_mb)
    try:
        with tracked_run("transfer", tags={"direction": "fetch"}) as tracker:
            tracker.log_params({"source": source.uri, "destination": str(cache_dir),
                                "concurrency": config.concurrency})
            session.check_bucket(source.bucket, create=False)
            manifest = load_remote_manifest(session, source)
            clean_partials(cache_dir)
            start = time.perf_counter()
            with progress_bar(manifest.total_bytes, f"fetch ← {source.uri}", bytes_mode=True) as advance:
                outcomes = _run_objects(manifest.shards, config.concurrency,
                                        lambda s: fetch_one(session, s, cache_dir, source, advance))
            local_manifest = manifest.save(cache_dir)  # last: its presence means every shard is verified
            seconds = time.perf_counter() - start
            result = _result("fetch", source.uri, str(cache_dir), source.child(MANIFEST_FILE).uri, manifest,
                             outcomes, seconds, session.retries.count, 0, str(local_manifest))
            tracker.log_metrics(_metrics(result))
            return result
    finally:
        session.close()


# --------------------------------------------------------------------------------------------- materialize
def default_cache_dir(location: S3Location) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{location.bucket}/{location.key}".strip("/"))
    return state_dir() / "shard-cache" / safe


def materialize_shards(source: str | Path, cache_dir: Path | None = None, concurrency: int = 16) -> Path:
    """A local dir with manifest.json and verified .beton files, for FFCV (which needs local, seekable files).

    `source` is a local shard dir (returned as is once its files check out), a remote-manifest dir (the
    transfer artifact: manifest.json with `base_uri`; shards are fetched from there unless already beside it),
    or `s3://bucket/prefix`. Remote shards land in `cache_dir` (default: `<state dir>/shard-cache/...`).
    """
    text = str(source)
    if is_s3_uri(text):
        location = parse_s3_uri(text.rstrip("/"))
        target = Path(cache_dir) if cache_dir else default_cache_dir(location)
        fetch_shards(FetchConfig(location.uri, target, concurrency=concurrency))
        return target
    directory = Path(source)
    manifest = ShardManifest.load(directory)
    if all(is_local_copy_ok(directory / s.file, s) for s in manifest.shards):
        return directory
    if not manifest.base_uri:
        raise DataError(f"{directory} lacks shard files its manifest names and has no base_uri to fetch them from",
                        "re-create the shards with `visionnode shard`")
    location = parse_s3_uri(manifest.base_uri)
    target = Path(cache_dir) if cache_dir else default_cache_dir(location)
    fetch_shards(FetchConfig(location.uri, target, concurrency=concurrency))
    return target


def is_local_copy_ok(path: Path, shard: ShardInfo) -> bool:
    """Present with the right size and sha256 (a missing file is normal for a remote-manifest dir)."""
    if not path.is_file():
        return False
    if path.stat().st_size != shard.bytes:
        raise IntegrityError(f"{path} is {path.stat().st_size} B but the manifest says {shard.bytes} B",
                             "re-create or re-fetch the shards")
    if stamp_path(path).is_file() and is_verified_copy(path, shard):
        return True
    if sha256_file(path) != shard.sha256:
        raise IntegrityError(f"{path} does not match the sha256 in its manifest",
                             "re-create or re-fetch the shards")
    return True
