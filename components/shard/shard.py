"""Shard an ImageNet-layout tree into FFCV `.beton` files with a checksummed manifest.

Flow per split: scan the files (imagenet.py) -> a seeded shuffle, so every shard mixes classes -> decode,
convert to RGB, resize and JPEG-encode in a process pool (images.py, ffcv_io.encode_image) -> cut the readable
images into shards of `images_per_shard` in that order -> write each shard with ffcv_io.write_beton
(one deterministic writer, temp name then rename).

Resume: after each shard, a journal (`.shard-journal.json`) records which slice of the shuffled file list
it holds, a digest of those files (path, size, mtime), its sha256 and the files skipped in the slice. A
re-run reuses a shard only when slice, digest, settings and the file's sha256 all still match; anything else
is rewritten. `manifest.json` is written last, atomically.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.artifacts import ShardInfo, ShardManifest, SkippedFile, describe_skipped
from ..common.errors import ConfigError, DataError
from ..common.ffcv_io import DEFAULT_JPEG_QUALITY, EncodedImage, encode_image, train_loader, write_beton
from ..common.imagenet import ImageNetLayout, ImageRecord, SplitScan, open_imagenet
from ..common.images import UnreadableImage, load_rgb, resize_max_side
from ..common.jsonio import read_json, sha256_file, write_json
from ..common.progress import console, progress_bar
from ..common.tracking import tracked_run

SPLIT_CHOICES = ("train", "val", "both")
JOURNAL_FILE = ".shard-journal.json"
SHARD_NAME = re.compile(r"^(train|val)-\d{5}\.beton$")
FORMAT_VERSION = 2          # bump when the bytes written for the same settings change
DECODE_CHUNK = 8            # files per pool task: amortises inter-process overhead
READBACK_MAX_RESOLUTION = 224


@dataclass
class ShardConfig:
    data: Path
    out: Path
    split: str = "both"               # train | val | both
    images_per_shard: int = 5000
    max_resolution: int = 256         # longer side after resizing (never enlarged)
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    workers: int = 2
    shuffle_seed: int = 0             # file order before cutting shards
    readback: bool = True             # read the shards back once with the FFCV train pipeline

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
        data, out = Path(self.data).resolve(), Path(self.out).resolve()
        if out == data or data in out.parents and out.relative_to(data).parts[:1] in (("train",), ("val",)):
            raise ConfigError(f"--out {self.out} is inside the dataset",
                              "write shards to a separate directory")

    @property
    def splits(self) -> list[str]:
        return ["train", "val"] if self.split == "both" else [self.split]

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
    out: Path
    manifest: Path
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
    mlflow_run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        values = {"files_found": self.files_found, "images_written": self.images_written,
                  "files_skipped": self.files_skipped, "shards": self.shards,
                  "shards_written": self.shards_written, "shards_reused": self.shards_reused,
                  "total_mb": self.total_bytes / 1e6, "seconds": self.seconds,
                  "write_images_per_s": self.write_images_per_s,
                  "loader_images_per_s": self.loader_images_per_s, "loader_warmup_s": self.loader_warmup_s}
        return {k: float(v) for k, v in values.items() if v is not None}


# ---------------------------------------------------------------------------------------------- decoding

@dataclass
class Prepared:
    """A file after decoding: the encoded image, or why it was skipped."""

    image: EncodedImage | None
    reason: str | None = None


def prepare_files(paths: list[str], max_resolution: int, jpeg_quality: int) -> list[Prepared]:
    """Decode by content, convert to RGB, shrink to max side, JPEG-encode (runs in pool workers)."""
    prepared = []
    for path in paths:
        try:
            rgb = resize_max_side(load_rgb(path), max_resolution)
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
        # Read ahead a whole shard plus a margin: while the main process writes one shard (FFCV's writer forks
        # and polls every 0.1 s), the workers keep decoding the next instead of idling. Encoded images are
        # ~20 KB each, so a shard's worth costs a few MB.
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


# ---------------------------------------------------------------------------------------------- journal

@dataclass
class JournalEntry:
    file: str
    split: str
    start: int                        # slice of the shuffled record list this shard consumed
    end: int
    source_digest: str
    sha256: str
    bytes: int
    count: int
    class_histogram: dict[int, int]
    skipped: list[SkippedFile]

    def info(self) -> ShardInfo:
        return ShardInfo(self.file, self.split, self.count, self.bytes, self.sha256,
                         dict(self.class_histogram))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JournalEntry":
        data = dict(data)
        data["class_histogram"] = {int(k): int(v) for k, v in data["class_histogram"].items()}
        data["skipped"] = [SkippedFile(**s) for s in data["skipped"]]
        return cls(**data)


class Journal:
    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.path = out / JOURNAL_FILE
        self.settings = _settings_key(settings)
        self.entries: dict[str, JournalEntry] = {}
        if self.path.is_file():
            try:
                data = read_json(self.path)
                if data.get("settings") == self.settings:
                    self.entries = {k: JournalEntry.from_dict(v) for k, v in data["entries"].items()}
            except (DataError, KeyError, TypeError):
                self.entries = {}  # unreadable journal: rewrite everything

    def reusable(self, out: Path, name: str, start: int, records: list[ImageRecord],
                 root: Path) -> JournalEntry | None:
        """The journal's entry for this shard if the file on disk is still exactly what it recorded."""
        entry = self.entries.get(name)
        if entry is None or entry.start != start or entry.end > len(records):
            return None
        path = out / name
        if not path.is_file() or path.stat().st_size != entry.bytes:
            return None
        if entry.source_digest != source_digest(records[entry.start:entry.end], root):
            return None
        return entry if sha256_file(path) == entry.sha256 else None

    def record(self, entry: JournalEntry) -> None:
        self.entries[entry.file] = entry
        write_json(self.path, {"settings": self.settings, "entries": self.entries})


def _settings_key(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "split"}  # the split of a shard is in its name


def source_digest(records: list[ImageRecord], root: Path) -> str:
    """Identity of a shard's inputs: relative path, label, size and mtime of every file in its slice."""
    digest = hashlib.sha256()
    for record in records:
        stat = record.path.stat()
        digest.update(f"{_relative(record.path, root)}\t{record.label}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
                      .encode())
    return digest.hexdigest()


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
    scans = {split: _scan(layout, split, config.split) for split in config.splits}
    out = Path(config.out)
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _shard_into(config, layout, scans, out)
    except BaseException:
        if created_out and not any(SHARD_NAME.match(p.name) for p in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)  # nothing written: no empty output that looks like a result
        raise


def _shard_into(config: ShardConfig, layout: ImageNetLayout, scans: dict[str, SplitScan], out: Path) -> ShardResult:
    _remove_partials(out)
    settings = config.settings()
    journal = Journal(out, settings)
    started = time.perf_counter()
    with tracked_run("shard", tags={"phase": "shard"}) as tracker:
        tracker.log_params({**settings, "data": os.fspath(config.data), "workers": config.workers})
        outcomes = _write_splits(config, layout, scans, journal, out)
        write_seconds = time.perf_counter() - started
        entries = [e for outcome in outcomes.values() for e in outcome.entries]
        if not entries:
            skipped = [s for outcome in outcomes.values() for s in outcome.skipped]
            raise DataError(f"no readable images in {config.data} ({', '.join(config.splits)}): "
                            f"{describe_skipped(skipped, config.data)}",
                            "replace or remove the unreadable files, or check the dataset path")
        readback = _read_back(out, entries, config) if config.readback else None
        manifest = _manifest(layout, scans, outcomes, settings)
        _remove_stale_shards(out, {e.file for e in entries})
        manifest_path = manifest.save(out)
        result = _result(config, scans, outcomes, manifest, manifest_path, write_seconds, readback)
        result.seconds = round(time.perf_counter() - started, 3)
        tracker.log_metrics(result.metrics())
        tracker.log_artifact(manifest_path)
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


def _write_split(split: str, records: list[ImageRecord], root: Path, config: ShardConfig, journal: Journal,
                 out: Path, stream: DecodeStream, advance: Any) -> _SplitOutcome:
    outcome = _SplitOutcome([])
    cursor, index = 0, 0
    decoded: Iterator[tuple[ImageRecord, Prepared]] | None = None
    while cursor < len(records):
        name = f"{split}-{index:05d}.beton"
        entry = journal.reusable(out, name, cursor, records, root)
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
             limit: int, root: Path, advance: Any) -> tuple[list[tuple[EncodedImage, int]], list[SkippedFile], int]:
    """The next `limit` readable images from `start` on, the files skipped on the way, and the stop index."""
    samples: list[tuple[EncodedImage, int]] = []
    skipped: list[SkippedFile] = []
    end = start
    while len(samples) < limit and end < len(records):
        record, prepared = next(decoded)
        end += 1
        advance(1)
        if prepared.image is None:
            skipped.append(SkippedFile(_relative(record.path, root), prepared.reason or "unreadable"))
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
    for _, shard_loader in loader.iter_shards():
        started = time.perf_counter()
        batches = iter(shard_loader)
        if next(batches, None) is None:
            continue
        first_done = time.perf_counter()
        warmup += first_done - started
        for images_batch, _ in batches:
            images += len(images_batch)
        seconds += time.perf_counter() - first_done
    return ReadBack(images, seconds, warmup, resolution)


def _read_back(out: Path, entries: list[JournalEntry], config: ShardConfig) -> ReadBack:
    smallest = min(e.count for e in entries)
    batch_size = int(min(64, max(1, smallest // 4)))  # several batches per shard, so warm-up can be separated
    resolution = min(READBACK_MAX_RESOLUTION, config.max_resolution)
    with console.status("reading the shards back with the FFCV loader"):
        return read_back([out / e.file for e in entries], resolution, config.workers, batch_size)


# ---------------------------------------------------------------------------------------------- outputs

def _manifest(layout: ImageNetLayout, scans: dict[str, SplitScan], outcomes: dict[str, _SplitOutcome],
              settings: dict[str, Any]) -> ShardManifest:
    skipped = [s for split in scans for s in list(scans[split].unlabelled) + outcomes[split].skipped]
    empty = sorted({wnid for scan in scans.values() for wnid in scan.empty_classes})
    shards = [e.info() for outcome in outcomes.values() for e in outcome.entries]
    return ShardManifest(classes=layout.classes, shards=shards, settings=settings, skipped=skipped,
                         empty_classes=empty)


def _result(config: ShardConfig, scans: dict[str, SplitScan], outcomes: dict[str, _SplitOutcome],
            manifest: ShardManifest, manifest_path: Path, write_seconds: float,
            readback: ReadBack | None) -> ShardResult:
    splits = {}
    for split, scan in scans.items():
        outcome = outcomes[split]
        splits[split] = SplitSummary(split, scan.files_found, sum(e.count for e in outcome.entries),
                                     len(scan.unlabelled) + len(outcome.skipped), len(outcome.entries),
                                     list(scan.empty_classes))
    written_now = sum(o.images_written_now for o in outcomes.values())
    return ShardResult(
        out=Path(config.out), manifest=manifest_path, splits=splits,
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
    )


def _remove_partials(out: Path) -> None:
    """Temp files a killed run left behind (atomic_path names them `.<target>.<random>.partial`)."""
    for leftover in out.glob(".*.partial"):
        leftover.unlink(missing_ok=True)


def _remove_stale_shards(out: Path, keep: set[str]) -> None:
    """Shards of an earlier run with other settings that this manifest no longer lists."""
    for path in out.iterdir():
        if SHARD_NAME.match(path.name) and path.name not in keep:
            path.unlink()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return os.fspath(path)
