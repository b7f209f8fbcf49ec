"""Generated ImageNet-layout datasets shared by every phase's tests."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from visionnode.components.local.synth import SynthConfig, synthesize_dataset

TINY = SynthConfig(classes=6, train_per_class=16, val_per_class=4, seed=7, min_side=64, max_side=160)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 classes x (16 train + 4 val) small JPEGs; read-only by convention (copy before changing it)."""
    return synthesize_dataset(tmp_path_factory.mktemp("data") / "tiny-imagenet", TINY).root


@dataclass
class MessyDataset:
    root: Path
    good_files: int          # decodable images, including the CMYK/grey/PNG-as-JPEG ones
    bad_files: dict[str, str]  # relative path -> kind of damage
    empty_class: str


@pytest.fixture(scope="session")
def messy_dataset(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> MessyDataset:
    """The tiny dataset plus each kind of file real ImageNet throws at a loader, and an empty class."""
    root = tmp_path_factory.mktemp("messy") / "imagenet"
    shutil.copytree(synth_dataset, root)
    train = root / "train"
    wnid = sorted(p.name for p in train.iterdir())[0]
    source = Image.open(next((train / wnid).iterdir())).convert("RGB")
    source.convert("CMYK").save(train / wnid / "cmyk.JPEG", "JPEG")
    source.convert("L").save(train / wnid / "grey.JPEG", "JPEG")
    source.save(train / wnid / "png_inside.JPEG", "PNG")
    jpeg = io.BytesIO()
    source.save(jpeg, "JPEG")
    bad = {
        f"train/{wnid}/truncated.JPEG": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        f"train/{wnid}/empty.JPEG": b"",
        f"train/{wnid}/notes.JPEG": b"this is not an image\n",
    }
    for rel, payload in bad.items():
        (root / rel).write_bytes(payload)
    empty_class = "n99999999"
    (train / empty_class).mkdir()
    good = sum(1 for p in train.rglob("*") if p.is_file()) - len(bad)
    kinds = dict(zip(bad, ("truncated", "empty", "not an image")))
    return MessyDataset(root, good, kinds, empty_class)
