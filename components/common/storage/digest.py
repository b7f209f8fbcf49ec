"""Local digests that match what S3 stores: whole-file sha256 and the composite SHA-256 of a multipart upload.

With `ChecksumAlgorithm=SHA256` the server checks each part as it arrives and keeps a checksum of the part
checksums; computing the same from the local file (same part boundaries) verifies an upload without
downloading it again.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from visionnode.components.common.jsonio import SHA256_CHUNK


@dataclass
class LocalDigest:
    """Whole-file sha256 plus the S3 composite SHA-256 for one way of cutting the file into parts."""

    path: Path
    size: int
    sha256: str
    part_size: int | None            # None: uploaded as one PUT
    s3_checksum: str                 # what S3 reports as ChecksumSHA256 for that cut


def s3_sha256_checksum(part_digests: list[bytes], single: bool) -> str:
    """S3's ChecksumSHA256: base64(sha256) of a single PUT, or base64(sha256(concat(part sha256s)))-N."""
    if single:
        return base64.b64encode(part_digests[0]).decode()
    composite = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(composite).decode()}-{len(part_digests)}"


def digest_file(path: Path, part_sizes: list[int] | None) -> LocalDigest:
    """One read of the file: whole sha256 and per-part sha256s. `part_sizes=None` means a single PUT."""
    whole = hashlib.sha256()
    parts: list[bytes] = []
    size = path.stat().st_size
    sizes = part_sizes or [size]
    with open(path, "rb") as fh:
        for part_size in sizes:
            part = hashlib.sha256()
            left = part_size
            while left > 0:
                chunk = fh.read(min(SHA256_CHUNK, left))
                if not chunk:
                    break
                whole.update(chunk)
                part.update(chunk)
                left -= len(chunk)
            parts.append(part.digest())
    uniform = part_sizes[0] if part_sizes else None
    return LocalDigest(path, size, whole.hexdigest(), uniform,
                       s3_sha256_checksum(parts, single=part_sizes is None))


def planned_part_sizes(size: int, part_size: int, threshold: int) -> list[int] | None:
    """The part sizes TransferManager will use for a file of `size` bytes (None: a single PUT)."""
    from s3transfer.utils import ChunksizeAdjuster

    if size < threshold:
        return None
    chunk = ChunksizeAdjuster().adjust_chunksize(part_size, size)
    full, rest = divmod(size, chunk)
    return [chunk] * full + ([rest] if rest else [])
