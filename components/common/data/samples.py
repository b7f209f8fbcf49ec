"""Real images to check and load a served model with: centre-cropped uint8 NHWC from the val shards.

Shared by deploy (Triton's answers vs local OpenVINO) and benchmark (request pool). Without shards the
images are generated (a fixed seed) and the caller says so in its result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionnode.components.common.errors import DataError


@dataclass
class SampleImages:
    images: np.ndarray        # uint8 [N, S, S, 3]
    source: str               # the shard dir / URI, or "synthetic"
    labels: np.ndarray | None = None  # int64 [N] class indices; None for generated images
    class_names: list[str] | None = None  # the shards' class names, by index (with labels from shards)


def sample_images(shards: str | Path | None, count: int, size: int, split: str = "val") -> SampleImages:
    """`count` images of `size`² from the `split` shards of `shards` (a shard dir, remote manifest dir or
    s3:// prefix; fetched and verified by transfer), else seeded random images."""
    if not shards:
        rng = np.random.default_rng(0)
        return SampleImages(rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), "synthetic")
    found = labelled_images(shards, count, size, split)
    images, labels = found.images, found.labels
    assert labels is not None
    if len(images) < count:  # a tiny val split: cycle it so the pool has the size asked for
        repeats = count // len(images) + 1
        images = np.concatenate([images] * repeats)[:count]
        labels = np.concatenate([labels] * repeats)[:count]
    return SampleImages(np.ascontiguousarray(images), found.source, labels, found.class_names)


def labelled_images(shards: str | Path, limit: int, size: int, split: str = "val") -> SampleImages:
    """Up to `limit` images of `size`² and their labels, in shard order, each image once: the same images for
    every caller that asks with the same shards and limit, whatever the size."""
    from visionnode.components.common.artifacts import ShardManifest
    from visionnode.components.common.data.ffcv_io import uint8_batches
    from visionnode.components.common.storage.shard_cache import materialize_shards

    local = materialize_shards(shards)
    manifest = ShardManifest.load(local)
    chosen = manifest.shards_for(split) or manifest.shards
    if not chosen:
        raise DataError(f"{shards} holds no shards", "point --shards at the output of `visionnode shard`")
    paths = [local / s.file for s in chosen]
    batches = list(uint8_batches(paths, batch_size=min(64, limit), resolution=size, limit=limit, workers=1))
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return SampleImages(np.ascontiguousarray(images), str(shards), labels, manifest.classes.names)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless encoding: the server decodes exactly these pixels back (a fair top-1 comparison)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
