"""shard's resume journal: per shard, its slice of the files, their digest, the settings and its sha256."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionnode.components.common.artifacts import ShardInfo, SkippedFile
from visionnode.components.common.data.imagenet import ImageRecord
from visionnode.components.common.errors import DataError
from visionnode.components.shard.store import ShardTarget


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
    """Per shard: the slice of files it holds and its sha256, kept where the shards are (ShardTarget)."""

    def __init__(self, target: ShardTarget, settings: dict[str, Any]) -> None:
        self.target = target
        self.settings = _settings_key(settings)
        self.entries: dict[str, JournalEntry] = {}
        try:
            data = target.load_journal()
            if data and data.get("settings") == self.settings:
                self.entries = {k: JournalEntry.from_dict(v) for k, v in data["entries"].items()}
        except (DataError, KeyError, TypeError):
            self.entries = {}  # unreadable journal: rewrite everything

    def reusable(self, name: str, start: int, records: list[ImageRecord],
                 root: Path | str) -> JournalEntry | None:
        """The journal's entry for this shard if the stored file is still exactly what it recorded."""
        entry = self.entries.get(name)
        if entry is None or entry.start != start or entry.end > len(records):
            return None
        if entry.source_digest != source_digest(records[entry.start:entry.end], root):
            return None
        return entry if self.target.holds(name, entry.bytes, entry.sha256) else None

    def record(self, entry: JournalEntry) -> None:
        """Store the shard just written (an upload, for the S3 store), then note it in the journal."""
        self.target.commit(entry.file, entry.sha256)
        self.entries[entry.file] = entry
        self.target.save_journal({"settings": self.settings, "entries": self.entries})


def _settings_key(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "split"}  # the split of a shard is in its name


def source_digest(records: list[ImageRecord], root: Path | str) -> str:
    """Identity of a shard's inputs: relative path, label, size and version (mtime or ETag, as listed) of
    every file in its slice."""
    digest = hashlib.sha256()
    for record in records:
        line = f"{relative_path(record.path, root)}\t{record.label}\t{record.size}\t{record.version}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def relative_path(path: Path | str, root: Path | str) -> str:
    """`path` relative to the dataset root ('/'-separated), for a local file or an s3:// object alike."""
    text, base = os.fspath(path), os.fspath(root).rstrip("/") + "/"
    return text[len(base):] if text.startswith(base) else text
