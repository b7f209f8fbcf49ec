"""Robust image decoding: real ImageNet holds CMYK and grayscale JPEGs and a PNG saved as .JPEG.

`load_rgb` decodes by content (never by extension) and returns an RGB image (`load_rgb_array`: as an
array), or raises UnreadableImage with a reason a person can act on (zero bytes, truncated, not an image).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

T = TypeVar("T")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey bottom half


class UnreadableImage(Exception):
    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def load_rgb(path: str | os.PathLike[str], data: bytes | None = None) -> Image.Image:
    """Decode an image file by content and convert it to 8-bit RGB; `data`: its bytes, already read (an S3
    object), with `path` only naming it."""
    return _decoded(path, data, lambda img: img.copy() if img.mode == "RGB" else _as_rgb(img))


def load_rgb_array(path: str | os.PathLike[str], data: bytes | None = None) -> np.ndarray:
    """`load_rgb` as a uint8 HWC array, taken from the decoded image without an intermediate copy."""
    return _decoded(path, data, lambda img: np.asarray(_as_rgb(img)))


def _decoded(path: str | os.PathLike[str], data: bytes | None, take: Callable[[Image.Image], T]) -> T:
    """`take` applied to the decoded image while it is open, or UnreadableImage with the reason."""
    path = Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise UnreadableImage(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as img:
                img.load()
                return take(img)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image (unrecognised content)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(path, f"corrupt or truncated image ({exc})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(path, "image is implausibly large (decompression bomb guard)") from None


def _as_rgb(img: Image.Image) -> Image.Image:
    """The image itself when it is RGB (valid only while it is open), else a converted copy."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGB", img.size, (255, 255, 255))
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")  # CMYK, L, I;16, P, YCbCr ...


def resize_max_side(img: Image.Image | np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so that the longer side is at most `max_side` (never enlarges); a uint8 HWC array.

    OpenCV's INTER_AREA (pixel-area averaging), the filter FFCV's own RGBImageField writer shrinks with:
    alias-free when shrinking, and a third of PIL bicubic's time at ImageNet sizes (500 px -> 256 px).
    """
    import cv2

    array = np.asarray(img, dtype=np.uint8)
    height, width = array.shape[:2]
    if max(height, width) <= max_side:
        return array
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)
