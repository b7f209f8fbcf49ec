"""Shard an ImageNet-layout tree into FFCV `.beton` files with a checksummed manifest.

Flow per split: list the files where they lie (a directory or an S3 prefix: imagenet.py) -> a seeded
shuffle, so every shard mixes classes -> read (S3 objects a chunk at a time, never the whole dataset), decode,
convert to RGB, resize and JPEG-encode in a process pool (images.py, ffcv_io.encode_image) -> cut the
readable images into shards of the configured size in that order -> write each shard in this process with
beton_writer.write_beton (FFCV's writer code, pages in file order, temp name then rename; ~0.2 ms per image,
while the pool decodes ahead) into the output: a local dir, or the S3 store shard by shard (store.py: only
the shard being written is on local disk).

Resume: after each shard, a journal (`.shard-journal.json`, beside the shards) records which slice of the
shuffled file list it holds, a digest of those files (path, size, mtime or ETag), its sha256 and the files
skipped in the slice. A re-run reuses a shard only when slice, digest, settings and the stored file's sha256
all still match; anything else is rewritten. `manifest.json` is written last, atomically.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionnode.components.common.artifacts import MANIFEST_FILE, ShardManifest, SkippedFile, describe_skipped
from visionnode.components.common.data.beton_writer import EncodedImage, write_beton
from visionnode.components.common.data.ffcv_io import train_loader
from visionnode.components.common.data.imagenet import ImageNetLayout, ImageRecord, SplitScan, open_imagenet
from visionnode.components.common.errors import DataError
from visionnode.components.common.jsonio import sha256_file, to_jsonable
from visionnode.components.common.progress import console, progress_bar
from visionnode.components.common.storage.dataset import check_fingerprint
from visionnode.components.common.storage.s3 import is_s3_uri
from visionnode.components.common.tracking import tracked_run
from visionnode.components.shard.config import ShardConfig
from visionnode.components.shard.decode import DecodeStream, Prepared
from visionnode.components.shard.journal import Journal, JournalEntry, relative_path, source_digest
from visionnode.components.shard.store import JOURNAL_FILE, SHARD_NAME, ShardTarget, open_target

__all__ = ["JOURNAL_FILE", "ShardConfig", "ShardResult", "shard_dataset"]

READBACK_MAX_RESOLUTION = 224


@dataclass
class SplitSummary:
    split: str
    files_found: int
    images_written: int
    files_skipped: int
    shards: int
    empty_classes: list[str] = field(default_factory=list)


@dataclass
class ShardResult:
    out: Path | str                   # the shard dir, or s3://bucket/prefix when written into the store
    manifest: Path | str
    splits: dict[str, SplitSummary]
    files_found: int
    images_written: int
    files_skipped: int
    shards: int
    shards_written: int               # written by this run
    shards_reused: int                # complete and verified from an earlier run
    total_bytes: int
    seconds: float
    write_images_per_s: float         # images decoded+encoded+written by this run / its wall time
    loader_images_per_s: float | None = None   # FFCV train pipeline read-back, after JIT warm-up
    loader_warmup_s: float | None = None       # first batch of each shard (numba compile)
    readback_resolution: int | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    data_digest: str = ""             # fingerprint of the raw data listing (common/storage/dataset.py)
    mlflow_run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        values = {"files_found": self.files_found, "images_written": self.images_written,
                  "files_skipped": self.files_skipped, "shards": self.shards,
                  "shards_written": self.shards_written, "shards_reused": self.shards_reused,
                  "total_mb": self.total_bytes / 1e6, "seconds": self.seconds,
                  "write_images_per_s": self.write_images_per_s,
                  "loader_images_per_s": self.loader_images_per_s, "loader_warmup_s": self.loader_warmup_s}
        return {k: float(v) for k, v in values.items() if v is not None}


# ---------------------------------------------------------------------------------------------- sharding

@dataclass
class _SplitOutcome:
    entries: list[JournalEntry]
    written: int = 0                  # shards written by this run
    images_written_now: int = 0
    trailing_skipped: list[SkippedFile] = field(default_factory=list)  # unreadable files after the last shard

    @property
    def skipped(self) -> list[SkippedFile]:
        return [s for e in self.entries for s in e.skipped] + self.trailing_skipped


def shard_dataset(config: ShardConfig) -> ShardResult:
    """Write FFCV shards + manifest.json for the chosen split(s) of an ImageNet-layout tree."""
    config.validate()
    layout = open_imagenet(config.data)
    check_fingerprint(layout.listing, config.data_digest)
    scans = {split: _scan(layout, split, config.split) for split in config.splits}
    local_out = None if is_s3_uri(os.fspath(config.out)) else Path(config.out)
    created_out = local_out is not None and not local_out.exists()
    if local_out is not None:
        local_out.mkdir(parents=True, exist_ok=True)
    target = open_target(config.out)
    try:
        return _shard_into(config, layout, scans, target)
    except BaseException:
        if created_out and not any(SHARD_NAME.match(p.name) for p in local_out.iterdir()):
            shutil.rmtree(local_out,
                          ignore_errors=True)  # nothing written: no empty output that looks like a result
        raise
    finally:
        target.close()


def _shard_into(config: ShardConfig, layout: ImageNetLayout, scans: dict[str, SplitScan],
                target: ShardTarget) -> ShardResult:
    out = target.scratch
    _remove_partials(out)
    settings = config.settings()
    journal = Journal(target, settings)
    started = time.perf_counter()
    with tracked_run("shard", tags={"phase": "shard"}) as tracker:
        tracker.log_params({**settings, "data": os.fspath(config.data), "out": target.location,
                            "workers": config.workers})
        outcomes = _write_splits(config, layout, scans, journal, out)
        write_seconds = time.perf_counter() - started
        entries = [e for outcome in outcomes.values() for e in outcome.entries]
        if not entries:
            skipped = [s for outcome in outcomes.values() for s in outcome.skipped]
            raise DataError(f"no readable images in {config.data} ({', '.join(config.splits)}): "
                            f"{describe_skipped(skipped, config.data)}",
                            "replace or remove the unreadable files, or check the dataset path")
        readback = _read_back(target, entries, config) if config.readback else None
        manifest = _manifest(layout, scans, outcomes, settings)
        manifest_location, manifest = target.finish(manifest, {e.file for e in entries})
        if config.manifest_copy is not None:
            manifest.save(config.manifest_copy)
        result = _result(config, target, scans, outcomes, manifest, manifest_location, write_seconds,
                         readback)
        result.seconds = round(time.perf_counter() - started, 3)
        tracker.log_metrics(result.metrics())
        tracker.log_text(json.dumps(to_jsonable(manifest), indent=2, sort_keys=True), MANIFEST_FILE)
        result.mlflow_run_id = tracker.run_id
    return result


def _scan(layout: ImageNetLayout, split: str, requested: str) -> SplitScan:
    if not layout.has_split(split):
        hint = "use --split train" if requested == "both" and split == "val" else "check --data"
        raise DataError(f"{layout.root} has no {split}/ folder", hint)
    return layout.scan(split)


def _write_splits(config: ShardConfig, layout: ImageNetLayout, scans: dict[str, SplitScan], journal: Journal,
                  out: Path) -> dict[str, _SplitOutcome]:
    import cv2  # noqa: F401  imported before forking, so decode workers start warm

    total = sum(scan.files_found for scan in scans.values())
    context = multiprocessing.get_context("fork")  # workers inherit the imported modules: no re-import cost
    with ProcessPoolExecutor(config.workers, mp_context=context) as pool, \
            progress_bar(total, "sharding") as advance:
        stream = DecodeStream(pool, config.workers, config)
        outcomes = {}
        for split, scan in scans.items():
            advance(len(scan.unlabelled))
            records = shuffled(scan.records, config.shuffle_seed)
            outcomes[split] = _write_split(split, records, layout.root, config, journal, out, stream, advance)
    return outcomes


def shuffled(records: list[ImageRecord], seed: int) -> list[ImageRecord]:
    """A seeded permutation of the (sorted) scan, so every shard holds a mix of classes."""
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[int(i)] for i in order]


def _write_split(split: str, records: list[ImageRecord], root: Path | str, config: ShardConfig,
                 journal: Journal, out: Path, stream: DecodeStream, advance: Any) -> _SplitOutcome:
    outcome = _SplitOutcome([])
    cursor, index = 0, 0
    decoded: Iterator[tuple[ImageRecord, Prepared]] | None = None
    while cursor < len(records):
        name = f"{split}-{index:05d}.beton"
        entry = journal.reusable(name, cursor, records, root)
        if entry is not None:
            decoded = _close(decoded)
            advance(entry.end - cursor)
        else:
            decoded = decoded or stream.from_index(records, cursor)
            samples, skipped, end = _collect(decoded, records, cursor, config.images_per_shard, root, advance)
            if not samples:
                outcome.trailing_skipped = skipped
                break
            path = write_beton(out / name, samples, config.max_resolution, config.jpeg_quality)
            histogram = Counter(label for _, label in samples)
            entry = JournalEntry(name, split, cursor, end, source_digest(records[cursor:end], root),
                                 sha256_file(path), path.stat().st_size, len(samples),
                                 dict(sorted(histogram.items())), skipped)
            journal.record(entry)
            outcome.written += 1
            outcome.images_written_now += entry.count
        outcome.entries.append(entry)
        cursor, index = entry.end, index + 1
    _close(decoded)
    return outcome


def _close(decoded: Any) -> None:
    if decoded is not None:
        decoded.close()
    return None


def _collect(decoded: Iterator[tuple[ImageRecord, Prepared]], records: list[ImageRecord], start: int,
             limit: int, root: Path | str,
             advance: Any) -> tuple[list[tuple[EncodedImage, int]], list[SkippedFile], int]:
    """The next `limit` readable images from `start` on, the files skipped on the way, and the stop index."""
    samples: list[tuple[EncodedImage, int]] = []
    skipped: list[SkippedFile] = []
    end = start
    while len(samples) < limit and end < len(records):
        record, prepared = next(decoded)
        end += 1
        advance(1)
        if prepared.image is None:
            skipped.append(SkippedFile(relative_path(record.path, root), prepared.reason or "unreadable"))
        else:
            samples.append((prepared.image, record.label))
    return samples, skipped, end


# ---------------------------------------------------------------------------------------------- read-back

@dataclass
class ReadBack:
    images: int
    seconds: float                    # after each shard's first batch
    warmup_seconds: float             # the first batch of every shard: numba compiles the pipeline
    resolution: int

    @property
    def images_per_s(self) -> float | None:
        return round(self.images / self.seconds, 1) if self.seconds > 0 and self.images else None


def read_back(paths: list[Path], resolution: int, workers: int, batch_size: int) -> ReadBack:
    """One pass over the shards with the FFCV train pipeline (what training sees), timed per shard."""
    loader = train_loader(paths, batch_size, resolution, workers)
    images, seconds, warmup = 0, 0.0, 0.0
    for _, batches in loader.iter_shards():
        started = time.perf_counter()
        if next(batches, None) is None:
            continue
        first_done = time.perf_counter()
        warmup += first_done - started
        for images_batch, _ in batches:
            images += len(images_batch)
        seconds += time.perf_counter() - first_done
    return ReadBack(images, seconds, warmup, resolution)


def _read_back(target: ShardTarget, entries: list[JournalEntry], config: ShardConfig) -> ReadBack | None:
    """All shards of a local dir; for the S3 store, those still on local disk (the first of each split)."""
    paths = target.readable([e.file for e in entries])
    if not paths:
        return None
    counts = {e.file: e.count for e in entries}
    smallest = min(counts[p.name] for p in paths)
    batch_size = int(min(64, max(1, smallest // 4)))  # several batches per shard, so warm-up can be separated
    resolution = min(READBACK_MAX_RESOLUTION, config.max_resolution)
    with console.status("reading the shards back with the FFCV loader"):
        return read_back(paths, resolution, config.workers, batch_size)


# ---------------------------------------------------------------------------------------------- outputs

def _manifest(layout: ImageNetLayout, scans: dict[str, SplitScan], outcomes: dict[str, _SplitOutcome],
              settings: dict[str, Any]) -> ShardManifest:
    skipped = [s for split in scans for s in list(scans[split].unlabelled) + outcomes[split].skipped]
    empty = sorted({wnid for scan in scans.values() for wnid in scan.empty_classes})
    shards = [e.info() for outcome in outcomes.values() for e in outcome.entries]
    return ShardManifest(classes=layout.classes, shards=shards, settings=settings, skipped=skipped,
                         empty_classes=empty, data_digest=layout.listing.digest())


def _result(config: ShardConfig, target: ShardTarget, scans: dict[str, SplitScan],
            outcomes: dict[str, _SplitOutcome], manifest: ShardManifest, manifest_location: str,
            write_seconds: float, readback: ReadBack | None) -> ShardResult:
    splits = {}
    for split, scan in scans.items():
        outcome = outcomes[split]
        splits[split] = SplitSummary(split, scan.files_found, sum(e.count for e in outcome.entries),
                                     len(scan.unlabelled) + len(outcome.skipped), len(outcome.entries),
                                     list(scan.empty_classes))
    written_now = sum(o.images_written_now for o in outcomes.values())
    return ShardResult(
        out=target.location if is_s3_uri(target.location) else Path(target.location),
        manifest=manifest_location if is_s3_uri(manifest_location) else Path(manifest_location),
        splits=splits,
        files_found=sum(s.files_found for s in splits.values()),
        images_written=sum(s.images_written for s in splits.values()),
        files_skipped=sum(s.files_skipped for s in splits.values()),
        shards=len(manifest.shards),
        shards_written=sum(o.written for o in outcomes.values()),
        shards_reused=sum(len(o.entries) - o.written for o in outcomes.values()),
        total_bytes=manifest.total_bytes, seconds=0.0,
        write_images_per_s=round(written_now / write_seconds, 1) if written_now and write_seconds else 0.0,
        loader_images_per_s=readback.images_per_s if readback else None,
        loader_warmup_s=round(readback.warmup_seconds, 2) if readback else None,
        readback_resolution=readback.resolution if readback else None,
        skipped=list(manifest.skipped), empty_classes=list(manifest.empty_classes),
        data_digest=manifest.data_digest or "",
    )


def _remove_partials(out: Path) -> None:
    """Temp files a killed run left behind (atomic_path names them `.<target>.<random>.partial`)."""
    for leftover in out.glob(".*.partial"):
        leftover.unlink(missing_ok=True)
