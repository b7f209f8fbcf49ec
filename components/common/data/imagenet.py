"""Reader for the ImageNet-1K directory layout.

    root/train/<wnid>/*.JPEG
    root/val/<wnid>/*.JPEG            (foldered), or
    root/val/*.JPEG + LOC_val_solution.csv   (flat, as Kaggle ships it; CSV in root/ or root/val/)
    root/LOC_synset_mapping.txt       (optional: "<wnid> <names>" per line)

Class index = position of the wnid in the sorted list of train wnids, as torchvision's ImageFolder does.
Scanning only lists files; decoding (and rejecting bad files) is images.load_rgb's job.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from visionnode.components.common.artifacts import ClassIndex, SkippedFile
from visionnode.components.common.errors import DataError

SPLITS = ("train", "val")
WNID_PATTERN = re.compile(r"^n\d{8}$")
SYNSET_MAPPING_FILE = "LOC_synset_mapping.txt"
VAL_SOLUTION_FILE = "LOC_val_solution.csv"
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int
    wnid: str


@dataclass
class SplitScan:
    split: str
    records: list[ImageRecord]
    empty_classes: list[str] = field(default_factory=list)
    unlabelled: list[SkippedFile] = field(default_factory=list)  # flat val files the CSV does not name

    @property
    def files_found(self) -> int:
        return len(self.records) + len(self.unlabelled)


@dataclass
class ImageNetLayout:
    root: Path
    classes: ClassIndex

    def has_split(self, split: str) -> bool:
        return (self.root / split).is_dir()

    def scan(self, split: str) -> SplitScan:
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'", f"use one of {', '.join(SPLITS)}")
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} does not exist", f"the dataset has no '{split}' split")
        if _class_dirs(split_dir):
            return self._scan_foldered(split, split_dir)
        return self._scan_flat_val(split, split_dir)

    def _scan_foldered(self, split: str, split_dir: Path) -> SplitScan:
        label_of = {wnid: i for i, wnid in enumerate(self.classes.wnids)}
        records: list[ImageRecord] = []
        empty: list[str] = []
        unknown = [d.name for d in _class_dirs(split_dir) if d.name not in label_of]
        if unknown:
            raise DataError(f"{split_dir} has class folders absent from train/: {', '.join(unknown[:5])}",
                            "every val class must also be a train class")
        for wnid in self.classes.wnids:
            files = _files(split_dir / wnid)
            if not files:
                empty.append(wnid)
            records.extend(ImageRecord(path, label_of[wnid], wnid) for path in files)
        return SplitScan(split, records, empty)

    def _scan_flat_val(self, split: str, split_dir: Path) -> SplitScan:
        solution = _find_val_solution(self.root)
        if solution is None:
            raise DataError(f"{split_dir} holds no class folders and no {VAL_SOLUTION_FILE} was found",
                            f"put {VAL_SOLUTION_FILE} in {self.root} or sort val images into <wnid>/ folders")
        wnid_of_image = _read_val_solution(solution)
        label_of = {wnid: i for i, wnid in enumerate(self.classes.wnids)}
        records, unlabelled = [], []
        for path in _files(split_dir):
            wnid = wnid_of_image.get(path.stem)
            if wnid in label_of:
                records.append(ImageRecord(path, label_of[wnid], wnid))
            else:
                unlabelled.append(SkippedFile(str(path), f"no label in {solution.name}"))
        seen = {r.wnid for r in records}
        return SplitScan(split, records, [w for w in self.classes.wnids if w not in seen], unlabelled)


def open_imagenet(root: str | Path) -> ImageNetLayout:
    """Open an ImageNet-layout tree; classes come from train/ (or foldered val/ when train/ is absent)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset directory {root} {'is a file' if root.exists() else 'does not exist'}",
                        "pass the folder that contains train/ and val/ (e.g. from `visionnode data synth`)")
    source = next((root / s for s in SPLITS if (root / s).is_dir() and _class_dirs(root / s)), None)
    if source is None:
        raise DataError(f"{root} is not in ImageNet layout (no train/<wnid>/ or val/<wnid>/ folders)",
                        "expected train/<wnid>/*.JPEG and val/ as described in the README")
    wnids = sorted(d.name for d in _class_dirs(source))
    return ImageNetLayout(root, ClassIndex(wnids, class_names(root, wnids)))


def class_names(root: Path, wnids: list[str]) -> list[str]:
    """Names from LOC_synset_mapping.txt, else torchvision's bundled list for the 1,000 standard wnids."""
    mapping = _read_synset_mapping(root / SYNSET_MAPPING_FILE)
    if mapping:
        return [mapping.get(w, w) for w in wnids]
    if len(wnids) == IMAGENET_CLASSES and all(WNID_PATTERN.match(w) for w in wnids):
        from torchvision.models._meta import _IMAGENET_CATEGORIES  # ordered by sorted wnid

        return list(_IMAGENET_CATEGORIES)
    return list(wnids)


def _class_dirs(directory: Path) -> list[Path]:
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():  # e.g. a class with a train/ folder but none in val/
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def _read_synset_mapping(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    mapping = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, names = line.strip().partition(" ")
        if wnid:
            mapping[wnid] = names.strip() or wnid
    return mapping


def _find_val_solution(root: Path) -> Path | None:
    return next((p for p in (root / VAL_SOLUTION_FILE, root / "val" / VAL_SOLUTION_FILE) if p.is_file()),
                None)


def _read_val_solution(path: Path) -> dict[str, str]:
    """ImageId -> wnid of the first box in PredictionString ("n01751748 x1 y1 x2 y2 ...")."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise DataError(f"{path} lacks the ImageId/PredictionString columns",
                            "use the LOC_val_solution.csv that ships with ImageNet")
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader
                if row["PredictionString"]}
