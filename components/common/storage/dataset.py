"""A raw dataset read where it lies: a local directory (or a mounted volume) or an S3 prefix.

`list_dataset(root)` lists every file under the root once (S3: paginated `ListObjectsV2`, 1,000 keys a page)
with its size and a version (mtime in ns locally, the ETag in S3); hidden names (`.x`) are left out at any
depth, as no reader ever opens them. `DatasetListing.digest()` is the data fingerprint: 16 hex digits of
sha256 over the sorted `key, size, version` lines, so any added, removed, resized or rewritten file changes
it, and listing is all it costs (no byte of the data is read). `list_folder(root, folder)` lists one level
(S3: with delimiter '/'): a reader that needs a few class folders lists those, never the whole tree.

Readers never copy the whole dataset: `read_objects` GETs the objects a caller needs, a few at a time on
threads (shard's decode workers call it per chunk), with one S3 client per process (the decode pool forks,
and a boto3 client must not cross a fork); `fetch_files` copies a chosen subset (validate's) to a local dir.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from visionnode.components.common.errors import DataError, ServiceError
from visionnode.components.common.storage.s3 import (
    MISSING_BUCKET_CODES,
    NOT_FOUND_CODES,
    is_s3_uri,
    parse_s3_uri,
    s3_client,
    s3_error_code,
)

DIGEST_HEX = 16
READ_THREADS = 8           # concurrent GETs per reading process: hides S3's per-request latency


@dataclass(frozen=True)
class DataFile:
    key: str                 # relative to the root, '/'-separated
    size: int
    version: str             # local: mtime in ns; S3: the ETag


@dataclass
class DatasetListing:
    root: str                # a local absolute path, or s3://bucket/prefix (no trailing slash)
    files: list[DataFile]
    dirs: set[str] = field(default_factory=set)   # every directory (prefix) that holds something
    list_requests: int = 0   # S3 ListObjectsV2 pages read (0 for a local directory)

    @property
    def remote(self) -> bool:
        return is_s3_uri(self.root)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def location(self, key: str) -> Path | str:
        return location_of(self.root, key)

    def digest(self) -> str:
        digest = hashlib.sha256()
        for item in sorted(self.files, key=lambda f: f.key):
            digest.update(f"{item.key}\t{item.size}\t{item.version}\n".encode())
        return digest.hexdigest()[:DIGEST_HEX]


def location_of(root: str, key: str) -> Path | str:
    """Where a reader opens `key` under a normalized root: a local Path, or the object's s3:// URI."""
    return f"{root}/{key}" if is_s3_uri(root) else Path(root) / key


def normalize_root(root: str | os.PathLike[str]) -> str:
    text = os.fspath(root)
    if is_s3_uri(text):
        loc = parse_s3_uri(text.rstrip("/"))
        return loc.uri
    return str(Path(text).expanduser().resolve())


def list_dataset(root: str | os.PathLike[str]) -> DatasetListing:
    """Every (non-hidden) file under a local directory or an S3 prefix, with its size and version."""
    text = normalize_root(root)
    return _list_s3(text) if is_s3_uri(text) else _list_local(Path(text))


def _hidden(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def _list_local(root: Path) -> DatasetListing:
    if not root.is_dir():
        raise DataError(f"dataset directory {root} {'is a file' if root.exists() else 'does not exist'}",
                        "pass the folder that contains train/ and val/ (e.g. from `visionnode data synth`)")
    files, dirs = [], set()
    for directory, subdirs, names in os.walk(root, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        rel_dir = Path(directory).relative_to(root).as_posix()
        if rel_dir != ".":
            dirs.add(rel_dir)
        for name in sorted(names):
            if name.startswith("."):
                continue
            stat = os.stat(os.path.join(directory, name))
            key = name if rel_dir == "." else f"{rel_dir}/{name}"
            files.append(DataFile(key, stat.st_size, str(stat.st_mtime_ns)))
    return DatasetListing(str(root), files, dirs)


def _list_s3(root: str) -> DatasetListing:
    loc = parse_s3_uri(root)
    prefix = f"{loc.key}/" if loc.key else ""
    client = s3_client()
    files, dirs, pages = [], set(), 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            pages += 1
            for obj in page.get("Contents", []) or []:
                key = obj["Key"][len(prefix):]
                parts = key.rstrip("/").split("/")
                if not key or _hidden(parts):
                    continue
                dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
                if key.endswith("/"):  # a "folder" marker object some tools create
                    dirs.add(key.rstrip("/"))
                    continue
                files.append(DataFile(key, int(obj["Size"]), str(obj.get("ETag", "")).strip('"')))
    except Exception as exc:  # botocore raises several types for a refusing or unreachable S3
        raise _read_error(exc, root) from None
    if not files:
        raise DataError(f"{root} holds no objects",
                        "check the URI: the dataset's train/ and val/ go under it")
    return DatasetListing(root, files, dirs, pages)


@dataclass
class FolderListing:
    """One level of a folder under a dataset root: what a reader of a few classes lists, not the tree."""

    root: str                # as DatasetListing.root
    folder: str              # relative to the root, '/'-separated
    subfolders: list[str]    # names, sorted
    files: list[DataFile]    # keys relative to the root, sorted
    list_requests: int = 0   # S3 ListObjectsV2 pages read (0 for a local directory)


def list_folder(root: str | os.PathLike[str], folder: str) -> FolderListing:
    """The subfolders and (non-hidden) files directly in `folder` (S3: ListObjectsV2 with delimiter '/',
    paginated); a folder that does not exist lists as empty."""
    text = normalize_root(root)
    return _list_s3_folder(text, folder) if is_s3_uri(text) else _list_local_folder(text, folder)


def _list_local_folder(root: str, folder: str) -> FolderListing:
    path = Path(root) / folder
    entries = sorted(os.scandir(path), key=lambda e: e.name) if path.is_dir() else []
    visible = [e for e in entries if not e.name.startswith(".")]
    files = [DataFile(f"{folder}/{e.name}", (stat := e.stat()).st_size, str(stat.st_mtime_ns))
             for e in visible if e.is_file()]
    return FolderListing(root, folder, [e.name for e in visible if e.is_dir()], files)


def _list_s3_folder(root: str, folder: str) -> FolderListing:
    loc = parse_s3_uri(root)
    base = f"{loc.key}/" if loc.key else ""
    prefix = f"{base}{folder}/"
    subfolders, files, pages = set(), [], 0
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix,
                                                                          Delimiter="/"):
            pages += 1
            subfolders.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
            files += [DataFile(obj["Key"][len(base):], int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
                      for obj in page.get("Contents", []) or []
                      if not obj["Key"].endswith("/") and not _hidden([obj["Key"][len(prefix):]])]
    except Exception as exc:  # botocore raises several types for a refusing or unreachable S3
        raise _read_error(exc, f"{root}/{folder}") from None
    visible = sorted(name for name in subfolders if name and not name.startswith("."))
    return FolderListing(root, folder, visible, sorted(files, key=lambda f: f.key), pages)


def _read_error(exc: BaseException, uri: str) -> Exception:
    code = s3_error_code(exc)
    if code in MISSING_BUCKET_CODES:
        return DataError(f"the bucket of {uri} does not exist", "check the dataset URI")
    if code in NOT_FOUND_CODES:
        return DataError(f"{uri} does not exist (it was there when the dataset was listed)",
                         "the dataset changed while this step ran: re-run the pipeline")
    if isinstance(exc, DataError):
        return exc
    return ServiceError(f"could not read {uri} ({code or type(exc).__name__})",
                        "check the S3 endpoint (VISIONNODE_S3_ENDPOINT) and credentials")


_PROCESS_CLIENT: dict[int, object] = {}


def _client_for_this_process():
    """One client per process: the decode pool forks, and a boto3 client must not be shared across a fork."""
    pid = os.getpid()
    if pid not in _PROCESS_CLIENT:
        _PROCESS_CLIENT.clear()
        _PROCESS_CLIENT[pid] = s3_client()
    return _PROCESS_CLIENT[pid]


def read_object(uri: str) -> bytes:
    loc = parse_s3_uri(uri)
    try:
        return _client_for_this_process().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except Exception as exc:  # noqa: BLE001 - translated for the user
        raise _read_error(exc, uri) from None


def read_objects(locations: list[str | os.PathLike[str]]) -> list[bytes | str | os.PathLike[str]]:
    """The bytes of every s3:// location (fetched side by side); local paths are passed through as is."""
    remote = [i for i, loc in enumerate(locations) if is_s3_uri(os.fspath(loc))]
    if not remote:
        return list(locations)
    result: list[bytes | str | os.PathLike[str]] = list(locations)
    with ThreadPoolExecutor(min(READ_THREADS, len(remote)), thread_name_prefix="vn-read") as pool:
        for index, data in zip(remote, pool.map(lambda i: read_object(os.fspath(locations[i])), remote)):
            result[index] = data
    return result


def read_text(listing: DatasetListing, key: str) -> str:
    location = listing.location(key)
    data = read_object(location) if isinstance(location, str) else location.read_bytes()
    return data.decode("utf-8")


def fetch_files(locations: list[str], target: Path) -> dict[str, Path]:
    """Copy the given s3:// objects (a chosen subset, never the dataset) into `target`, named by key."""
    copies: dict[str, Path] = {}
    target.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(locations), READ_THREADS * 4):
        chunk = locations[start:start + READ_THREADS * 4]
        for location, data in zip(chunk, read_objects(chunk)):
            local = target / parse_s3_uri(location).key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)  # type: ignore[arg-type]  (an s3:// location always reads as bytes)
            copies[location] = local
    return copies


def check_fingerprint(listing: DatasetListing, expected: str) -> None:
    """The data must be what the run's fingerprint step saw: that fingerprint keys the cache of every step
    that reads it and names where its shards are kept."""
    found = listing.digest()
    if expected and found != expected:
        raise DataError(f"the data under {listing.root} changed since this run's fingerprint step "
                        f"(fingerprint {expected}, now {found})",
                        "re-run the pipeline on the data as it is now")


@dataclass
class Fingerprint:
    data: str
    digest: str
    files: int
    total_bytes: int
    list_requests: int
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {"files": float(self.files), "total_mb": self.total_bytes / 1e6,
                "list_requests": float(self.list_requests), "seconds": self.seconds}


def fingerprint_dataset(root: str | os.PathLike[str]) -> Fingerprint:
    """List the dataset (no byte of it is read) and digest the listing: the data's identity for caching."""
    started = time.perf_counter()
    listing = list_dataset(root)
    return Fingerprint(listing.root, listing.digest(), len(listing.files), listing.total_bytes,
                       listing.list_requests, round(time.perf_counter() - started, 3))
