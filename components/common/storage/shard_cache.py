"""Shards from S3 into a local cache (fetch) and `materialize_shards`, which every shard reader calls.

Fetch uses ranged parallel GETs and checks each file's sha256. A fetched file gets a sidecar stamp (sha256
at its size and mtime), so a 150 GB cache is not re-hashed on every run; a killed fetch leaves only
`.partial` temp files, which the next run removes. `TransferResult` is shared with uploads.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.artifacts import MANIFEST_FILE, ShardInfo, ShardManifest
from visionnode.components.common.errors import DataError, IntegrityError
from visionnode.components.common.jsonio import sha256_file, write_json
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.settings import state_dir
from visionnode.components.common.storage.s3 import (
    NOT_FOUND_CODES,
    S3Location,
    is_s3_uri,
    parse_s3_uri,
    s3_error_code,
)
from visionnode.components.common.storage.session import (
    DEFAULT_CONCURRENCY,
    Rewindable,
    S3Session,
    concurrency_setting,
    part_size_setting,
    progress_subscriber,
)
from visionnode.components.common.tracking import tracked_run

VERIFIED_SUFFIX = ".verified.json"  # sidecar in a fetch cache: the file was hashed at this size/mtime
PARTIAL_MARK = ".partial"


@dataclass
class FetchConfig:
    source: str                      # s3://bucket/prefix holding manifest.json
    cache_dir: Path
    concurrency: int = concurrency_setting()
    part_size_mb: int = part_size_setting()


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

    def metrics(self) -> dict[str, float]:
        return {"bytes_total": self.bytes_total, "bytes_transferred": self.bytes_transferred,
                "seconds": self.seconds, "mb_per_s": self.mb_per_s, "retries": self.retries,
                "objects_transferred": self.objects_transferred, "objects_skipped": self.objects_skipped}


def shard_location(destination: S3Location, shard: ShardInfo) -> S3Location:
    return destination.child(shard.file)


@dataclass
class ObjectOutcome:
    transferred: bool
    bytes: int
    verification: str


def merge_verification(methods: Iterable[str]) -> str:
    return ",".join(sorted({m for m in methods if m})) or "none"


def run_objects(shards: list[ShardInfo], concurrency: int,
                 work: Callable[[ShardInfo], ObjectOutcome]) -> list[ObjectOutcome]:
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


def transfer_result(direction: str, source: str, destination: str, manifest_uri: str, manifest: ShardManifest,
            outcomes: list[ObjectOutcome], seconds: float, retries: int, aborted: int,
            local_manifest: str | None) -> TransferResult:
    moved = sum(o.bytes for o in outcomes)
    return TransferResult(
        direction=direction, source=source, destination=destination, manifest=manifest_uri,
        objects=len(outcomes), objects_transferred=sum(o.transferred for o in outcomes),
        objects_skipped=sum(not o.transferred for o in outcomes), bytes_total=manifest.total_bytes,
        bytes_transferred=moved, seconds=round(seconds, 3),
        mb_per_s=round(moved / seconds / 1e6, 3) if seconds > 0 else 0.0, retries=retries,
        stale_uploads_aborted=aborted, verification=merge_verification(o.verification for o in outcomes),
        local_manifest=local_manifest)


def load_remote_manifest(session: S3Session, source: S3Location) -> ShardManifest:
    from botocore.exceptions import ClientError

    loc = source.child(MANIFEST_FILE)

    def get() -> bytes:
        try:
            return session.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except ClientError as exc:
            if s3_error_code(exc) in NOT_FOUND_CODES:
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
              advance: Callable[[int], None]) -> ObjectOutcome:
    target = cache_dir / shard.file
    if is_verified_copy(target, shard):
        advance(shard.bytes)
        return ObjectOutcome(False, 0, "sha256-local")
    loc = parse_s3_uri(shard.uri) if shard.uri else shard_location(base, shard)
    tmp = target.with_name(f".{target.name}{PARTIAL_MARK}")
    target.parent.mkdir(parents=True, exist_ok=True)

    def download() -> str:
        progress = Rewindable(advance)
        try:
            session.manager.download(loc.bucket, loc.key, str(tmp),
                                     subscribers=[progress_subscriber(progress)]).result()
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
    return ObjectOutcome(True, shard.bytes, "sha256-local")


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
                outcomes = run_objects(manifest.shards, config.concurrency,
                                        lambda s: fetch_one(session, s, cache_dir, source, advance))
            local_manifest = manifest.save(cache_dir)  # last: its presence means every shard is verified
            seconds = time.perf_counter() - start
            result = transfer_result("fetch", source.uri, str(cache_dir), source.child(MANIFEST_FILE).uri,
                                     manifest,
                             outcomes, seconds, session.retries.count, 0, str(local_manifest))
            tracker.log_metrics(result.metrics())
            return result
    finally:
        session.close()


def default_cache_dir(location: S3Location) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{location.bucket}/{location.key}".strip("/"))
    return state_dir() / "shard-cache" / safe


def materialize_shards(source: str | Path, cache_dir: Path | None = None,
                       concurrency: int = DEFAULT_CONCURRENCY) -> Path:
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
        raise DataError(f"{directory} lacks shard files its manifest names and has no base_uri to fetch them "
                        "from",
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
