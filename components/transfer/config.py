"""transfer's settings and their defaults, importable without boto3 (CLI, component, pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.storage.s3 import parse_s3_uri
from visionnode.components.common.storage.session import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE_MB,
    check_transfer_settings,
)


@dataclass
class UploadConfig:
    shards_dir: Path
    destination: str                 # s3://bucket/prefix
    concurrency: int = DEFAULT_CONCURRENCY    # parallel requests (parts and objects together)
    part_size_mb: int = DEFAULT_PART_SIZE_MB
    create_bucket: bool = False
    output_dir: Path | None = None   # where the remote manifest.json is also written

    def validate(self) -> None:
        parse_s3_uri(self.destination)
        check_transfer_settings(self.concurrency, self.part_size_mb)


@dataclass
class PlaceConfig:
    shards: Path                     # dir holding the manifest.json of shards already in the store (base_uri)
    destination: str = ""            # "": verify them where they are; s3://bucket/prefix: server-side copy
    data_digest: str = ""            # the run's data fingerprint; the manifest's must match when both are set
    concurrency: int = DEFAULT_CONCURRENCY
    part_size_mb: int = DEFAULT_PART_SIZE_MB
    output_dir: Path | None = None   # where the remote manifest.json is also written

    def validate(self) -> None:
        if self.destination:
            parse_s3_uri(self.destination)
        check_transfer_settings(self.concurrency, self.part_size_mb)


DEFAULTS = PlaceConfig(shards=Path("."))
UPLOAD_DEFAULTS = UploadConfig(shards_dir=Path("."), destination="s3://bucket/prefix")
