"""shard's decoding: by content, to RGB, shrunk, JPEG-encoded in a process pool, results in file order."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from visionnode.components.common.data.beton_writer import EncodedImage, encode_image
from visionnode.components.common.data.imagenet import ImageRecord
from visionnode.components.common.data.images import UnreadableImage, load_rgb_array, resize_max_side
from visionnode.components.common.storage.dataset import read_objects
from visionnode.components.shard.config import ShardConfig

DECODE_CHUNK = 8            # files per pool task: amortises inter-process overhead


@dataclass
class Prepared:
    """A file after decoding: the encoded image, or why it was skipped."""

    image: EncodedImage | None
    reason: str | None = None


def prepare_files(paths: list[str], max_resolution: int, jpeg_quality: int) -> list[Prepared]:
    """Decode by content, convert to RGB, shrink to max side, JPEG-encode (runs in pool workers)."""
    prepared = []
    for path, source in zip(paths, read_objects(paths)):  # S3 objects are fetched side by side
        try:
            rgb = resize_max_side(load_rgb_array(path, source if isinstance(source, bytes) else None),
                                  max_resolution)
            prepared.append(Prepared(encode_image(rgb, jpeg_quality)))
        except UnreadableImage as exc:
            prepared.append(Prepared(None, exc.reason))
        except ValueError as exc:  # e.g. an image FFCV cannot store
            prepared.append(Prepared(None, str(exc)))
    return prepared


class DecodeStream:
    """Ordered, bounded parallel decoding of records[start:], restartable at any index."""

    def __init__(self, pool: ProcessPoolExecutor, workers: int, config: ShardConfig) -> None:
        self.pool = pool
        # Read ahead a whole shard plus a margin: while the main process writes, fsyncs, hashes and journals
        # one shard (and uploads it, for the store), the workers keep decoding the next instead of idling.
        # Encoded images are ~15-20 KB each: about 100 MB for a default 5,000-image shard.
        self.window = max(2, workers * 4, -(-config.images_per_shard // DECODE_CHUNK) + workers * 2)
        self.config = config

    def from_index(self, records: list[ImageRecord], start: int) -> Iterator[tuple[ImageRecord, Prepared]]:
        pending: deque[tuple[list[ImageRecord], Future]] = deque()
        next_start = start
        try:
            while pending or next_start < len(records):
                while len(pending) < self.window and next_start < len(records):
                    chunk = records[next_start:next_start + DECODE_CHUNK]
                    future = self.pool.submit(prepare_files, [os.fspath(r.path) for r in chunk],
                                              self.config.max_resolution, self.config.jpeg_quality)
                    pending.append((chunk, future))
                    next_start += len(chunk)
                chunk, future = pending.popleft()
                yield from zip(chunk, future.result())
        finally:
            for _, future in pending:  # abandoned read-ahead (the caller reused a later shard)
                future.cancel()
