"""Reader for the ImageNet-1K directory layout, on a local directory or an S3 prefix.

    root/train/<wnid>/*.JPEG
    root/val/<wnid>/*.JPEG            (foldered), or
    root/val/*.JPEG + LOC_val_solution.csv   (flat, as Kaggle ships it; CSV in root/ or root/val/)
    root/LOC_synset_mapping.txt       (optional: "<wnid> <names>" per line)

Class index = position of the wnid in the sorted list of train wnids, as torchvision's ImageFolder does.
The layout is read from one listing of the root (common/storage/dataset.py), or, for a reader of a few
classes, from the listings of those class folders (`class_records`): nothing is downloaded but the two small
metadata files; decoding (and rejecting bad files) is images.load_rgb's job. A record's `path` is a
local Path or, for a dataset in S3, the object's s3:// URI.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from visionnode.components.common.artifacts import ClassIndex, SkippedFile
from visionnode.components.common.errors import DataError
from visionnode.components.common.storage.dataset import (
    DataFile,
    DatasetListing,
    list_dataset,
    list_folder,
    location_of,
    read_text,
)

SPLITS = ("train", "val")
WNID_PATTERN = re.compile(r"^n\d{8}$")
SYNSET_MAPPING_FILE = "LOC_synset_mapping.txt"
VAL_SOLUTION_FILE = "LOC_val_solution.csv"
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ImageRecord:
    path: Path | str         # a local Path, or the s3:// URI of the object
    label: int
    wnid: str
    size: int = -1           # bytes, from the listing
    version: str = ""        # mtime in ns (local) or ETag (S3), from the listing


@dataclass
class SplitScan:
    split: str
    records: list[ImageRecord]
    empty_classes: list[str] = field(default_factory=list)
    unlabelled: list[SkippedFile] = field(default_factory=list)  # flat val files the CSV does not name

    @property
    def files_found(self) -> int:
        return len(self.records) + len(self.unlabelled)


class _Tree:
    """Directories and files of a listing, by parent directory ("" is the root)."""

    def __init__(self, listing: DatasetListing) -> None:
        self.listing = listing
        self.files: dict[str, list[DataFile]] = defaultdict(list)
        self.subdirs: dict[str, list[str]] = defaultdict(list)
        for item in listing.files:
            parent, _, _ = item.key.rpartition("/")
            self.files[parent].append(item)
        for directory in listing.dirs:
            parent, _, name = directory.rpartition("/")
            self.subdirs[parent].append(name)
        for entries in self.files.values():
            entries.sort(key=lambda f: f.key)

    def is_dir(self, rel: str) -> bool:
        return rel in self.listing.dirs

    def class_dirs(self, rel: str) -> list[str]:
        return sorted(self.subdirs.get(rel, []))

    def files_in(self, rel: str) -> list[DataFile]:
        return self.files.get(rel, [])

    def has_file(self, key: str) -> bool:
        parent, _, _ = key.rpartition("/")
        return any(f.key == key for f in self.files.get(parent, []))

    def record(self, item: DataFile, label: int, wnid: str) -> ImageRecord:
        return ImageRecord(self.listing.location(item.key), label, wnid, item.size, item.version)


@dataclass
class ImageNetLayout:
    root: Path | str
    classes: ClassIndex
    tree: _Tree = field(repr=False)

    @property
    def listing(self) -> DatasetListing:
        return self.tree.listing

    def has_split(self, split: str) -> bool:
        return self.tree.is_dir(split)

    def scan(self, split: str) -> SplitScan:
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'", f"use one of {', '.join(SPLITS)}")
        if not self.tree.is_dir(split):
            raise DataError(f"{self.listing.location(split)} does not exist",
                            f"the dataset has no '{split}' split")
        if self.tree.class_dirs(split):
            return self._scan_foldered(split)
        return self._scan_flat_val(split)

    def _scan_foldered(self, split: str) -> SplitScan:
        label_of = {wnid: i for i, wnid in enumerate(self.classes.wnids)}
        unknown = [d for d in self.tree.class_dirs(split) if d not in label_of]
        if unknown:
            raise DataError(f"{self.listing.location(split)} has class folders absent from train/: "
                            f"{', '.join(unknown[:5])}", "every val class must also be a train class")
        records: list[ImageRecord] = []
        empty: list[str] = []
        for wnid in self.classes.wnids:
            files = self.tree.files_in(f"{split}/{wnid}")
            if not files:
                empty.append(wnid)
            records.extend(self.tree.record(item, label_of[wnid], wnid) for item in files)
        return SplitScan(split, records, empty)

    def _scan_flat_val(self, split: str) -> SplitScan:
        solution = next((key for key in (VAL_SOLUTION_FILE, f"val/{VAL_SOLUTION_FILE}")
                         if self.tree.has_file(key)), None)
        if solution is None:
            raise DataError(f"{self.listing.location(split)} holds no class folders and no "
                            f"{VAL_SOLUTION_FILE} was found",
                            f"put {VAL_SOLUTION_FILE} in {self.root} or sort val images into <wnid>/ folders")
        wnid_of_image = _read_val_solution(read_text(self.listing, solution), solution)
        label_of = {wnid: i for i, wnid in enumerate(self.classes.wnids)}
        records, unlabelled = [], []
        for item in self.tree.files_in(split):
            stem = item.key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            wnid = wnid_of_image.get(stem)
            if wnid in label_of:
                records.append(self.tree.record(item, label_of[wnid], wnid))
            else:
                unlabelled.append(SkippedFile(os.fspath(self.listing.location(item.key)),
                                              f"no label in {VAL_SOLUTION_FILE}"))
        seen = {r.wnid for r in records}
        return SplitScan(split, records, [w for w in self.classes.wnids if w not in seen], unlabelled)


def open_imagenet(root: str | os.PathLike[str], listing: DatasetListing | None = None) -> ImageNetLayout:
    """Open an ImageNet-layout tree (a directory or s3://bucket/prefix); classes come from train/ (or foldered
    val/ when train/ is absent). Pass the `listing` when the caller already made one."""
    listing = listing or list_dataset(root)
    tree = _Tree(listing)
    source = next((s for s in SPLITS if tree.is_dir(s) and tree.class_dirs(s)), None)
    if source is None:
        if any(tree.files_in(name) for name in tree.class_dirs("")):  # a train/ or val/ folder itself
            raise DataError(f"{listing.root} holds class folders of images itself, not train/ and val/",
                            "pass the folder above it, which holds train/<class>/ and val/")
        raise DataError(f"{listing.root} is not in ImageNet layout (no train/<wnid>/ or val/<wnid>/ folders)",
                        "expected train/<wnid>/*.JPEG and val/ as described in the README")
    wnids = tree.class_dirs(source)
    names = class_names(listing, tree, wnids)
    root_location: Path | str = listing.root if listing.remote else Path(listing.root)
    return ImageNetLayout(root_location, ClassIndex(wnids, names), tree)


@dataclass
class ClassSample:
    """The records of some class folders of a split, labelled 0..n-1 in the order they were named."""

    records: list[ImageRecord]
    empty_classes: list[str]
    list_requests: int


def class_folders(root: str | os.PathLike[str], split: str) -> tuple[list[str], int]:
    """The class folder names (wnids) of a split, sorted, and the S3 listing pages it took (one level)."""
    listing = list_folder(root, split)
    return listing.subfolders, listing.list_requests


def class_records(root: str | os.PathLike[str], split: str, wnids: list[str]) -> ClassSample:
    """The files of the named class folders only: one folder listing per class, never the whole tree."""
    records, empty, requests = [], [], 0
    for label, wnid in enumerate(wnids):
        listing = list_folder(root, f"{split}/{wnid}")
        requests += listing.list_requests
        if not listing.files:
            empty.append(wnid)
        records += [ImageRecord(location_of(listing.root, f.key), label, wnid, f.size, f.version)
                    for f in listing.files]
    return ClassSample(records, empty, requests)


def class_names(listing: DatasetListing, tree: _Tree, wnids: list[str]) -> list[str]:
    """Names from LOC_synset_mapping.txt, else torchvision's bundled list for the 1,000 standard wnids."""
    mapping = _read_synset_mapping(read_text(listing, SYNSET_MAPPING_FILE)) \
        if tree.has_file(SYNSET_MAPPING_FILE) else {}
    if mapping:
        return [mapping.get(w, w) for w in wnids]
    if len(wnids) == IMAGENET_CLASSES and all(WNID_PATTERN.match(w) for w in wnids):
        from torchvision.models._meta import _IMAGENET_CATEGORIES  # ordered by sorted wnid

        return list(_IMAGENET_CATEGORIES)
    return list(wnids)


def _read_synset_mapping(text: str) -> dict[str, str]:
    mapping = {}
    for line in text.splitlines():
        wnid, _, names = line.strip().partition(" ")
        if wnid:
            mapping[wnid] = names.strip() or wnid
    return mapping


def _read_val_solution(text: str, name: str) -> dict[str, str]:
    """ImageId -> wnid of the first box in PredictionString ("n01751748 x1 y1 x2 y2 ...")."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
        raise DataError(f"{name} lacks the ImageId/PredictionString columns",
                        "use the LOC_val_solution.csv that ships with ImageNet")
    return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader if row["PredictionString"]}
