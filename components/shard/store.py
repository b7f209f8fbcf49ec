"""Where shard puts its output: a local directory, or straight into the S3 store, one shard at a time.

`LocalShards(out)`: the shards, the resume journal and manifest.json stay in `out`.

`StoredShards(s3://bucket/prefix)`: each shard is written to a local scratch file, uploaded (parallel
multipart, sha256-verified: common/storage/upload.py) and deleted, so local disk holds the shard being written
plus the first shard of each split (kept for the FFCV read-back), never the dataset's worth. The journal lives
beside the shards in the store, so a retried pod (a new, empty disk) reuses what an earlier attempt stored;
the manifest (with every shard's URI and `base_uri`) goes up last. Shards are byte-deterministic, so a second
run writing the same prefix at the same time finds or writes the same bytes (an upload first HEADs its key).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from visionnode.components.common.artifacts import ShardManifest
from visionnode.components.common.jsonio import read_json, sha256_file, to_jsonable, write_json
from visionnode.components.common.storage.s3 import (
    NOT_FOUND_CODES,
    S3Location,
    is_s3_uri,
    parse_s3_uri,
    s3_error_code,
)

JOURNAL_FILE = ".shard-journal.json"
SHARD_NAME = re.compile(r"^(train|val)-\d{5}\.beton$")
KEPT_FOR_READBACK = re.compile(r"-00000\.beton$")


class ShardTarget(Protocol):
    location: str        # what the manifest's location is reported as: a dir or s3://bucket/prefix
    scratch: Path        # where the writer puts each .beton file

    def load_journal(self) -> dict[str, Any] | None: ...
    def save_journal(self, data: dict[str, Any]) -> None: ...
    def holds(self, name: str, size: int, sha256: str) -> bool: ...
    def commit(self, name: str, sha256: str) -> None: ...
    def readable(self, names: list[str]) -> list[Path]: ...
    def finish(self, manifest: ShardManifest, keep: set[str]) -> tuple[str, ShardManifest]: ...
    def close(self) -> None: ...


def open_target(out: str | Path) -> ShardTarget:
    return StoredShards(parse_s3_uri(str(out).rstrip("/"))) if is_s3_uri(str(out)) else LocalShards(Path(out))


class LocalShards:
    def __init__(self, out: Path) -> None:
        self.scratch = out
        self.location = str(out)
        self.journal = out / JOURNAL_FILE

    def load_journal(self) -> dict[str, Any] | None:
        return read_json(self.journal) if self.journal.is_file() else None

    def save_journal(self, data: dict[str, Any]) -> None:
        write_json(self.journal, data)

    def holds(self, name: str, size: int, sha256: str) -> bool:
        path = self.scratch / name
        return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha256

    def commit(self, name: str, sha256: str) -> None:
        pass  # written in place

    def readable(self, names: list[str]) -> list[Path]:
        return [self.scratch / name for name in names]

    def finish(self, manifest: ShardManifest, keep: set[str]) -> tuple[str, ShardManifest]:
        """Drop shards of an earlier run with other settings that this manifest no longer lists."""
        for path in self.scratch.iterdir():
            if SHARD_NAME.match(path.name) and path.name not in keep:
                path.unlink()
        return str(manifest.save(self.scratch)), manifest

    def close(self) -> None:
        pass


class StoredShards:
    def __init__(self, dest: S3Location) -> None:
        from visionnode.components.common.storage.session import (
            DEFAULT_CONCURRENCY,
            DEFAULT_PART_SIZE_MB,
            S3Session,
        )

        self.dest = dest
        self.location = dest.uri
        self.session = S3Session(DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE_MB)
        self.session.check_bucket(dest.bucket, create=False)
        self._scratch = tempfile.TemporaryDirectory(prefix="vn-shard-scratch-")
        self.scratch = Path(self._scratch.name)

    def load_journal(self) -> dict[str, Any] | None:
        loc = self.dest.child(JOURNAL_FILE)
        try:
            body = self.session.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - a missing journal is a first run
            if s3_error_code(exc) in NOT_FOUND_CODES:
                return None
            raise
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return None  # unreadable journal: rewrite everything

    def save_journal(self, data: dict[str, Any]) -> None:
        loc = self.dest.child(JOURNAL_FILE)
        body = (json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n").encode()
        self.session.with_object_retries(f"write {loc.uri}", loc.bucket,
                                         lambda: self.session.client.put_object(Bucket=loc.bucket,
                                                                                Key=loc.key, Body=body))

    def holds(self, name: str, size: int, sha256: str) -> bool:
        from visionnode.components.common.artifacts import ShardInfo
        from visionnode.components.common.storage.session import head_or_none
        from visionnode.components.common.storage.upload import stored_copy_matches

        loc = self.dest.child(name)
        head = self.session.with_object_retries(f"check {loc.uri}", loc.bucket,
                                                lambda: head_or_none(self.session, loc))
        return stored_copy_matches(head, ShardInfo(name, "", 0, size, sha256, {}))[0]

    def commit(self, name: str, sha256: str) -> None:
        """Upload the shard just written (verified), then free its scratch space."""
        from visionnode.components.common.artifacts import ShardInfo
        from visionnode.components.common.storage.upload import upload_one

        path = self.scratch / name
        shard = ShardInfo(name, "", 0, path.stat().st_size, sha256, {})
        upload_one(self.session, shard, self.scratch, self.dest, lambda _n: None)
        if not KEPT_FOR_READBACK.search(name):
            path.unlink()

    def readable(self, names: list[str]) -> list[Path]:
        """Shards still on local disk: the first of each split written by this run."""
        return [self.scratch / name for name in names if (self.scratch / name).is_file()]

    def finish(self, manifest: ShardManifest, keep: set[str]) -> tuple[str, ShardManifest]:
        from visionnode.components.common.storage.upload import put_manifest, remote_manifest

        prefix = self.dest.key.rstrip("/") + "/"
        stale = [obj["Key"] for page in self.session.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.dest.bucket, Prefix=prefix, Delimiter="/") for obj in page.get("Contents", []) or []
            if SHARD_NAME.match(obj["Key"][len(prefix):]) and obj["Key"][len(prefix):] not in keep]
        for key in stale:
            self.session.client.delete_object(Bucket=self.dest.bucket, Key=key)
        stored = remote_manifest(manifest, self.dest)
        return put_manifest(self.session, stored, self.dest).uri, stored

    def close(self) -> None:
        self.session.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self._scratch.cleanup()
