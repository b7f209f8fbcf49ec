"""Writing FFCV `.beton` shards, byte-identical for the same samples.

`encode_image` turns a decoded RGB image into the JPEG bytes FFCV stores (FFCV's encoder call), and
`write_beton` writes a list of such samples with one FFCV writer process (FFCV's multi-worker writer lays
pages out in completion order, which is not deterministic; the expensive decode/resize/encode work is
parallelised by the caller instead).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionnode.components.common.data.ffcv_io import IMAGE_FIELD, LABEL_FIELD
from visionnode.components.common.errors import DataError
from visionnode.components.common.jsonio import atomic_path

MIN_PAGE_SIZE = 2 * 1024 * 1024        # FFCV's smallest page; a shard is at least two pages


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
    from ffcv.fields.rgb_image import IMAGE_MODES

    destination["mode"] = IMAGE_MODES["jpg"]
    destination["height"], destination["width"] = image.height, image.width
    destination["data_ptr"], storage = malloc(image.jpeg.nbytes)
    storage[:] = image.jpeg


def shard_fields(max_resolution: int, jpeg_quality: int) -> dict[str, Any]:
    """The shard schema: an RGB image (JPEG) and an integer class label."""
    from ffcv.fields import IntField, RGBImageField

    return {IMAGE_FIELD: RGBImageField(write_mode="jpg", max_resolution=max_resolution,
                                       jpeg_quality=jpeg_quality),
            LABEL_FIELD: IntField()}


class _EncodedSamples:
    """The indexable dataset FFCV's writer reads: (EncodedImage, label) pairs."""

    def __init__(self, samples: Sequence[tuple[EncodedImage, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[EncodedImage, int]:
        image, label = self.samples[index]
        return image, int(label)


def write_beton(target: str | os.PathLike[str], samples: Sequence[tuple[EncodedImage, int]],
                max_resolution: int, jpeg_quality: int) -> Path:
    """Write `samples` in order as one `.beton`, atomically (temp name, then rename); deterministic."""
    from ffcv.writer import DatasetWriter

    if not samples:
        raise DataError(f"refusing to write an empty shard {target}")
    fields = shard_fields(max_resolution, jpeg_quality)
    # The field type must stay RGBImageField (its type id goes into the file header), so only this
    # instance's encode is replaced: it stores the bytes our worker pool already encoded.
    fields[IMAGE_FIELD].encode = _store_encoded_jpeg
    largest = max(image.jpeg.nbytes for image, _ in samples)
    page_size = max(MIN_PAGE_SIZE, 1 << int(largest).bit_length())
    with atomic_path(target) as tmp, _quiet_tqdm():
        writer = DatasetWriter(os.fspath(tmp), fields, page_size=page_size, num_workers=1)
        writer.from_indexed_dataset(_EncodedSamples(samples), chunksize=max(1, len(samples)))
    return Path(target)


@contextmanager
def _quiet_tqdm() -> Iterator[None]:
    """FFCV's writer draws its own tqdm bar; ours (progress.py) is the one users see."""
    import ffcv.writer

    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        ffcv.writer.tqdm = original
