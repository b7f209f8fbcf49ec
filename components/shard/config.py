"""shard's settings and their defaults, importable without torch or FFCV (CLI, component, pipeline)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionnode.components.common.adapters.declared import at_least, between, check_ranges, one_of, setting
from visionnode.components.common.artifacts import data_digest_setting
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.storage.s3 import is_s3_uri, parse_s3_uri

SPLIT_CHOICES = ("train", "val", "both")
FORMAT_VERSION = 2          # bump when the bytes written for the same settings change


@dataclass
class ShardConfig:
    data: Path | str                  # ImageNet-layout dir or s3://bucket/prefix, read where it lies
    out: Path | str                   # local dir, or s3://bucket/prefix: straight into the store
    split: str = setting("both", "Split(s) to shard.", pipeline=False, check=one_of(*SPLIT_CHOICES))
    images_per_shard: int = setting(5000, "Images per .beton file (the last one of a split holds the rest).",
                                    check=at_least(1))
    max_resolution: int = setting(256, "Longer image side after resizing, in pixels (images are never "
                                  "enlarged).", check=between(16, 4096))
    jpeg_quality: int = setting(90, "JPEG quality of the stored images.", check=between(1, 100))
    workers: int = setting(2, "Decode/encode processes; also the read-back loader's threads.",
                           check=at_least(1))
    shuffle_seed: int = 0             # file order before cutting shards
    readback: bool = setting(True, "Read the shards back once with the FFCV loader and report its images/s.",
                             pipeline=False)
    data_digest: str = data_digest_setting()
    manifest_copy: Path | None = None  # also write manifest.json here (the pipeline step's output artifact)
    # the pipeline's shards go to `<shards_uri>/<data digest>/<settings digest>/` (store_location); the CLI
    # writes to --out as given
    shards_uri: str = setting("s3://visionnode/shards", "Base of the shard store (s3://bucket/prefix).",
                              pipeline="shard_store_uri", cli=False)

    def validate(self) -> None:
        check_ranges(self)
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
