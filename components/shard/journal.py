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
from visionnode.components.common.jsonio import read_json, sha256_file, write_json

JOURNAL_FILE = ".shard-journal.json"


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
        line = f"{relative_path(record.path, root)}\t{record.label}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def relative_path(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return os.fspath(path)
