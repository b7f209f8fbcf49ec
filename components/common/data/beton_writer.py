"""Writing FFCV `.beton` shards, byte-identical for the same samples.

`encode_image` turns a decoded RGB image into the JPEG bytes FFCV stores (FFCV's encoder call), and
`write_beton` writes a list of such samples in order with FFCV's writer code in the calling process (FFCV's
multi-worker writer lays pages out in completion order, which is not deterministic; the expensive
decode/resize/encode work is parallelised by the caller instead; writing takes ~0.05 ms per image).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visionnode.components.common.data.ffcv_io import IMAGE_FIELD, LABEL_FIELD
from visionnode.components.common.errors import DataError
from visionnode.components.common.jsonio import atomic_path

if TYPE_CHECKING:
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter

MIN_PAGE_SIZE = 2 * 1024 * 1024        # FFCV's smallest page; a shard is at least two pages
# ffcv.fields.rgb_image.IMAGE_MODES["jpg"]; that table is a numba typed Dict, and reading it from Python
# JIT-compiles for about 0.45 s in every process that does (a test checks the two agree).
JPEG_MODE = 0


@dataclass(frozen=True)
class EncodedImage:
    """An RGB image already JPEG-encoded the way FFCV's RGBImageField(write_mode="jpg") stores it."""

    jpeg: np.ndarray  # uint8, 1-D
    height: int
    width: int


def encode_image(rgb: Any, jpeg_quality: int) -> EncodedImage:
    """JPEG-encode a PIL RGB image or uint8 HWC array exactly as FFCV's `encode_jpeg` does (OpenCV).

    Written out rather than imported so that decode workers need only OpenCV, not FFCV (whose import
    JIT-compiles for seconds).
    """
    import cv2

    array = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {array.shape}")
    if max(array.shape[:2]) > np.iinfo(np.uint16).max:
        raise ValueError(f"image {array.shape[1]}x{array.shape[0]} is larger than FFCV's 65535 px limit")
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(array, cv2.COLOR_RGB2BGR),
                            [int(cv2.IMWRITE_JPEG_QUALITY), int(jpeg_quality)])
    if not ok:
        raise ValueError("OpenCV could not JPEG-encode the image")
    return EncodedImage(jpeg.reshape(-1), array.shape[0], array.shape[1])


def _store_encoded_jpeg(destination: Any, image: EncodedImage, malloc: Any) -> None:
    """RGBImageField.encode for bytes encoded beforehand: same metadata and payload, no second encode."""
    destination["mode"] = JPEG_MODE
    destination["height"], destination["width"] = image.height, image.width
    destination["data_ptr"], storage = malloc(image.jpeg.nbytes)
    storage[:] = image.jpeg


def shard_fields(max_resolution: int, jpeg_quality: int) -> dict[str, Any]:
    """The shard schema: an RGB image (JPEG) and an integer class label."""
    from ffcv.fields import IntField, RGBImageField

    return {IMAGE_FIELD: RGBImageField(write_mode="jpg", max_resolution=max_resolution,
                                       jpeg_quality=jpeg_quality),
            LABEL_FIELD: IntField()}


def write_beton(target: str | os.PathLike[str], samples: Sequence[tuple[EncodedImage, int]],
                max_resolution: int, jpeg_quality: int) -> Path:
    """Write `samples` in order as one `.beton`, atomically (temp name, then rename); deterministic.

    FFCV's own writer code writes every byte (DatasetWriter.prepare: header and field descriptors; its page
    allocator and `handle_sample`; DatasetWriter.finalize: metadata and allocation tables), run in this
    process: `DatasetWriter.from_indexed_dataset` would fork a writer process per file, poll it every 0.1 s,
    and that process compiles FFCV's numba image-mode lookup afresh (about 0.45 s): 0.2-0.7 s per shard,
    more than decoding a small shard's images takes. The bytes are those of its one-worker output.
    """
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter

    if not samples:
        raise DataError(f"refusing to write an empty shard {target}")
    fields = shard_fields(max_resolution, jpeg_quality)
    # The field type must stay RGBImageField (its type id goes into the file header), so only this
    # instance's encode is replaced: it stores the bytes our worker pool already encoded.
    fields[IMAGE_FIELD].encode = _store_encoded_jpeg
    largest = max(image.jpeg.nbytes for image, _ in samples)
    page_size = max(MIN_PAGE_SIZE, 1 << int(largest).bit_length())
    with atomic_path(target) as tmp:
        writer = DatasetWriter(os.fspath(tmp), fields, page_size=page_size, num_workers=1)
        writer.num_samples = len(samples)
        writer.prepare()  # writes header and field descriptors; the metadata table lives in shared memory
        try:
            allocator = MemoryAllocator(os.fspath(tmp), writer.data_region_start, page_size)
            writer.finalize(_write_samples(writer, samples, allocator))
        finally:
            writer.metadata_sm.unlink()
        writer.metadata_sm.close()  # after success only: a failed sample's traceback may still view it
    return Path(target)


def _write_samples(writer: DatasetWriter, samples: Sequence[tuple[EncodedImage, int]],
                   allocator: MemoryAllocator) -> list[tuple[int, int, int]]:
    """FFCV's writer-worker loop (ffcv.writer.worker_job_indexed_dataset) for one worker: pages filled in
    sample order; returns the allocations for the table at the end of the file."""
    from ffcv.writer import handle_sample

    metadata = np.frombuffer(writer.metadata_sm.buf, dtype=writer.metadata_type)
    with allocator:  # flushes the last page on exit
        for index, (image, label) in enumerate(samples):
            handle_sample((image, int(label)), index, writer.metadata_type.names, metadata, allocator,
                          writer.fields)
    return allocator.allocations
