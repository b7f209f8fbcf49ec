"""shard's settings and their defaults, importable without torch or FFCV (CLI, component, pipeline)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionnode.components.common.errors import ConfigError
from visionnode.components.common.storage.s3 import is_s3_uri, parse_s3_uri

SPLIT_CHOICES = ("train", "val", "both")
FORMAT_VERSION = 2          # bump when the bytes written for the same settings change
SHARD_STORE = "s3://visionnode/shards"  # the pipeline's base of the shard store (ShardConfig.store_location)


@dataclass
class ShardConfig:
    data: Path | str                  # ImageNet-layout dir or s3://bucket/prefix, read where it lies
    out: Path | str                   # local dir, or s3://bucket/prefix: straight into the store
    split: str = "both"               # train | val | both
    images_per_shard: int = 5000
    max_resolution: int = 256         # longer side after resizing (never enlarged)
    jpeg_quality: int = 90
    workers: int = 2
    shuffle_seed: int = 0             # file order before cutting shards
    readback: bool = True             # read the shards back once with the FFCV train pipeline
    data_digest: str = ""             # the data's fingerprint as the run saw it; "" = not checked
    manifest_copy: Path | None = None  # also write manifest.json here (the pipeline step's output artifact)

    def validate(self) -> None:
        if self.split not in SPLIT_CHOICES:
            raise ConfigError(f"--split {self.split!r} is not valid",
                              f"use one of {', '.join(SPLIT_CHOICES)}")
        if self.images_per_shard < 1:
            raise ConfigError(f"--images-per-shard {self.images_per_shard} must be positive",
                              "use e.g. 5000 (about 100 MB per shard at 256 px)")
        if not 16 <= self.max_resolution <= 4096:
            raise ConfigError(f"--max-resolution {self.max_resolution} is out of range",
                              "use 16..4096 (e.g. 256)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality {self.jpeg_quality} is out of range", "use 1..100 (e.g. 90)")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers} must be at least 1", "use the number of CPU cores")
        for name, value in (("data", self.data), ("out", self.out)):
            if is_s3_uri(os.fspath(value)) and not parse_s3_uri(os.fspath(value)).key.strip("/"):
                raise ConfigError(f"--{name} {value} names a whole bucket", "write it as s3://bucket/prefix")
        if is_s3_uri(os.fspath(self.data)) or is_s3_uri(os.fspath(self.out)):
            return
        data, out = Path(self.data).resolve(), Path(self.out).resolve()
        if out == data or data in out.parents and out.relative_to(data).parts[:1] in (("train",), ("val",)):
            raise ConfigError(f"--out {self.out} is inside the dataset",
                              "write shards to a separate directory")

    @property
    def splits(self) -> list[str]:
        return ["train", "val"] if self.split == "both" else [self.split]

    def store_location(self, base: str) -> str:
        """Where the pipeline keeps these shards: `<base>/<data fingerprint>/<settings digest>`, derived from
        all that determines their bytes, so identical inputs share shards and different ones never meet."""
        if not self.data_digest:
            raise ConfigError("the shards' place in the store needs the data fingerprint",
                              "pass the fingerprint step's data_digest")
        settings = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]
        return f"{base.rstrip('/')}/{self.data_digest}/{settings}"

    def settings(self) -> dict[str, Any]:
        """What determines the bytes of every shard; stored in the manifest and checked on resume."""
        return {
            "split": self.split, "max_resolution": self.max_resolution, "jpeg_quality": self.jpeg_quality,
            "images_per_shard": self.images_per_shard, "shuffle_seed": self.shuffle_seed,
            "resize": "OpenCV INTER_AREA, longer side <= max_resolution, never enlarged",
            "jpeg_encoder": "OpenCV (FFCV RGBImageField write_mode=jpg)",
            "color": "RGB (CMYK/grey/palette converted)",
            "format_version": FORMAT_VERSION,
        }


DEFAULTS = ShardConfig(data=Path("."), out=Path("."))
