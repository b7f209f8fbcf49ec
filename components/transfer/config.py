"""transfer's settings and their defaults, importable without boto3 (CLI, component, pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.adapters.declared import setting
from visionnode.components.common.artifacts import data_digest_setting
from visionnode.components.common.storage.s3 import parse_s3_uri
from visionnode.components.common.storage.session import (
    check_transfer_settings,
    concurrency_setting,
    part_size_setting,
)


@dataclass
class UploadConfig:
    shards_dir: Path
    destination: str                 # s3://bucket/prefix
    concurrency: int = concurrency_setting()
    part_size_mb: int = part_size_setting()
    create_bucket: bool = setting(False, "Create the bucket when it does not exist.", pipeline=False)
    output_dir: Path | None = None   # where the remote manifest.json is also written

    def validate(self) -> None:
        parse_s3_uri(self.destination)
        check_transfer_settings(self.concurrency, self.part_size_mb)


@dataclass
class PlaceConfig:
    shards: Path                     # dir holding the manifest.json of shards already in the store (base_uri)
    destination: str = setting("", "Empty: the shards stay where the shard step put them, verified (no byte "
                               "moves). s3://bucket/prefix on the same endpoint: copied there server-side "
                               "(e.g. a bucket replicated near the trainers).")
    data_digest: str = data_digest_setting()
    concurrency: int = concurrency_setting()
    part_size_mb: int = part_size_setting()
    output_dir: Path | None = None   # where the remote manifest.json is also written

    def validate(self) -> None:
        if self.destination:
            parse_s3_uri(self.destination)
        check_transfer_settings(self.concurrency, self.part_size_mb)
