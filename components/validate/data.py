"""The smoke subset: a seeded sample of raw images decoded once (unreadable ones named); the loaders.

The subset comes from a seeded sample of classes, and only their folders are listed: on ImageNet-1K in S3
(1.28 M objects) validate lists about 1 + subset/8 folders, never the whole tree, so its cost does not grow
with the dataset.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from visionnode.components.common.artifacts import SkippedFile
from visionnode.components.common.data.imagenet import (
    ImageRecord,
    class_folders,
    class_records,
    open_imagenet,
)
from visionnode.components.common.data.images import UnreadableImage, load_rgb
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.storage.dataset import fetch_files
from visionnode.components.common.storage.s3 import is_s3_uri
from visionnode.components.common.training.model import IMAGENET_MEAN, IMAGENET_STD


def smoke_transform(image_size: int) -> Callable:
    """Deterministic resize + centre crop: the smoke test must see the same pixels every epoch."""
    from torchvision.transforms import v2 as T

    return T.Compose(
        [
            T.ToImage(),
            T.Resize(image_size, antialias=True),
            T.CenterCrop(image_size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def train_transform(image_size: int) -> Callable:
    """The augmentation a training loader runs (random-resized crop + flip), for the profile."""
    from torchvision.transforms import v2 as T

    return T.Compose(
        [
            T.ToImage(),
            T.RandomResizedCrop(image_size, antialias=True),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class RawImageDataset(Dataset):
    """ImageRecords decoded with images.load_rgb; an unreadable file yields a SkippedFile, not a sample."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | SkippedFile:
        record = self.records[index]
        try:
            image = load_rgb(record.path)
        except UnreadableImage as exc:
            return SkippedFile(str(record.path), exc.reason)
        return self.transform(image), record.label


def collate_skipping(items: list) -> tuple[torch.Tensor, torch.Tensor, list[SkippedFile]]:
    """Batch the decodable samples; pass the skipped files through so the main process can count them."""
    samples = [item for item in items if not isinstance(item, SkippedFile)]
    skipped = [item for item in items if isinstance(item, SkippedFile)]
    if not samples:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return images, labels, skipped


def make_loader(
    records: Sequence[ImageRecord],
    transform: Callable,
    batch_size: int,
    workers: int,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    return DataLoader(
        RawImageDataset(records, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


IMAGES_PER_SAMPLED_CLASS = 8   # several per class, so the smoke loss can fall by learning classes


@dataclass
class SubsetSample:
    records: list[ImageRecord]   # the chosen subset, labelled 0..classes_sampled-1
    classes_in_split: int        # class folders in the split
    classes_sampled: int         # the model head's size (flat val: every class)
    images_listed: int           # files in the sampled classes' folders
    empty_classes: list[str]     # sampled class folders that hold no file
    list_requests: int           # S3 ListObjectsV2 pages (0 for a local directory)


def sample_subset(root: str | os.PathLike[str], split: str, size: int, seed: int) -> SubsetSample:
    """`size` images from a seeded sample of max(2, size / 8) classes of `split`, listing only their folders.
    A flat val split (no class folders, labels from LOC_val_solution.csv) is read from the whole listing."""
    wnids, requests = class_folders(root, split)
    if not wnids:  # flat val, or not ImageNet layout at all: open_imagenet reads it (or names what is wrong)
        layout = open_imagenet(root)
        scan = layout.scan(split)
        classes = layout.classes.num_classes
        return SubsetSample(choose_subset(scan.records, size, seed), classes, classes, len(scan.records),
                            scan.empty_classes, layout.listing.list_requests)
    count = min(len(wnids), max(2, size // IMAGES_PER_SAMPLED_CLASS))
    sampled = class_records(root, split, sorted(random.Random(seed).sample(wnids, count)))
    return SubsetSample(choose_subset(sampled.records, size, seed), len(wnids), count, len(sampled.records),
                        sampled.empty_classes, requests + sampled.list_requests)


def choose_subset(records: Sequence[ImageRecord], size: int, seed: int) -> list[ImageRecord]:
    """A seeded random sample, so every class can appear and the label prior is that of the dataset."""
    if size >= len(records):
        return list(records)
    return sorted(random.Random(seed).sample(list(records), size), key=lambda r: str(r.path))


def decode_subset(
    records: Sequence[ImageRecord], image_size: int, batch_size: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor, list[SkippedFile]]:
    """Decode every record once through the loader; returns images, labels and the files that failed."""
    images, labels, skipped = [], [], []
    with progress_bar(len(records), "decoding smoke-test subset") as advance:
        for batch_images, batch_labels, batch_skipped in make_loader(
            records, smoke_transform(image_size), batch_size, workers
        ):
            if len(batch_labels):
                images.append(batch_images)
                labels.append(batch_labels)
            skipped.extend(batch_skipped)
            advance(len(batch_labels) + len(batch_skipped))
    if not images:
        return torch.empty(0, 3, image_size, image_size), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(images), torch.cat(labels), skipped


def local_subset(records: Sequence[ImageRecord], scratch: Path) -> tuple[list[ImageRecord], dict[str, str]]:
    """The subset as local files: records of a dataset in S3 are downloaded into `scratch` (only these), local
    ones are used where they are. Also maps each local copy back to where it came from, for error messages."""
    remote = [os.fspath(r.path) for r in records if is_s3_uri(os.fspath(r.path))]
    copies = fetch_files(remote, scratch) if remote else {}
    local = [replace(r, path=copies.get(os.fspath(r.path), r.path)) for r in records]
    return local, {str(path): location for location, path in copies.items()}
