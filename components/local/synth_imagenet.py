"""ImageNet-shaped generated data: 1,000 classes, JPEG sizes, aspect ratios and file sizes like ImageNet-1K's.

For scale work (benchmarks/bench_scale.py, the 1,000-class rehearsal), not for learning: what matters is that
each image costs what a real one costs to list, read, decode, resize and move. The shapes dataset of
synth.py (96-256 px, ~5 KB) is far cheaper per image than ImageNet.

Targets, ILSVRC-2012 train (1,281,167 images), as widely quoted (not measurable here, ImageNet cannot be
downloaded):
  * mean image size about 469 x 387 px (width x height): the figure given for ILSVRC-2012 in the answers to
    Stack Overflow question 36109886 ("What is the resolution of an image in ImageNet dataset?"); the often
    repeated "about 400 x 350" (ILSVRC pages) is a rounder figure for the same data.
  * mean file size about 110 KB: ILSVRC2012_img_train.tar is 147,897,477,120 bytes (138 GiB), / 1,281,167
    = 115 KB (112.7 KiB) per JPEG, tar headers included; "~110 KB per image" is the usual rounding.
  * most images are Flickr's 500-px "medium" size: longer side exactly 500, mostly 4:3 or 3:2, landscape
    about three times in four; the rest spread from under 100 px to a few thousand.

What is generated (image_size): with probability 0.7 the longer side is 500, otherwise log-normal with median
450 px and sigma 0.45 (clipped to 64..MAX_SIDE; ImageNet's few multi-megapixel images are left out). Aspect
ratio (long / short) 4:3 (55 %), 3:2 (20 %), 1:1, 16:9 (5 % each) or uniform 1..2 (15 %); landscape with
probability 0.8. Those weights were tuned until 20,000 draws gave a mean of 469.3 x 388.7 px. Measured
output (mean size, KB, images/s): docs/capacity.md.

Content: a smooth colour field (a few random colours, cubic-upsampled, tinted with the class hue), a class
grating (angle and period from the class id) and multi-scale noise cropped at a random place from a bank
that every worker builds from the seed. The noise is what gives JPEG the detail of a photograph: without
it the same images average ~30 KB (measured on 200). JPEG quality is drawn from 80..95 per image (4:2:0
chroma, libjpeg's default, as in most camera JPEGs).

Deterministic: every image has its own random stream ([seed, split, class, index]), so the bytes do not
depend on the worker count or order; `workers` processes (fork) render and write in parallel.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionnode.components.common.cpus import usable_cpus
from visionnode.components.common.data.imagenet import SYNSET_MAPPING_FILE
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.jsonio import staged_dir
from visionnode.components.common.progress import progress_bar
from visionnode.components.local.synth import SPLIT_SEEDS, synthetic_wnid, write_metadata

IMAGENET_MEAN_SIZE = (469, 387)   # width, height: module doc
IMAGENET_MEAN_BYTES = 110_000     # module doc
MAX_SIDE = 1024                   # the noise bank's side; larger images would need tiling for little gain
BANK_SEED = 977
CHUNK = 64                        # images per task handed to a worker


@dataclass(frozen=True)
class ImageNetSynthConfig:
    classes: int = 1000
    train_per_class: int = 100
    val_per_class: int = 0
    seed: int = 0
    workers: int = field(default_factory=usable_cpus)
    flat_val: bool = False        # flat val/ + LOC_val_solution.csv, as Kaggle's ImageNet ships it

    def validate(self) -> None:
        if not 2 <= self.classes <= 1000:
            raise ConfigError(f"--classes {self.classes} is out of range", "use 2..1000")
        if self.train_per_class < 1 or self.val_per_class < 0:
            raise ConfigError("images per class must be positive",
                              "use --train-per-class >= 1 and --val-per-class >= 0")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers} must be at least 1", "use the number of CPU cores")


@dataclass
class ImageNetSynthResult:
    root: Path
    classes: int
    train_images: int
    val_images: int
    total_bytes: int
    mean_width: float
    mean_height: float
    mean_kb: float                # 1 KB = 1,000 bytes
    seconds: float
    images_per_s: float


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn from SIZE_MODEL (module doc)."""
    if rng.random() < 0.7:
        long_side = 500.0
    else:
        long_side = float(np.clip(rng.lognormal(math.log(450), 0.45), 64, MAX_SIDE))
    kind = rng.random()
    if kind < 0.55:
        ratio = 4 / 3
    elif kind < 0.75:
        ratio = 3 / 2
    elif kind < 0.80:
        ratio = 1.0
    elif kind < 0.85:
        ratio = 16 / 9
    else:
        ratio = rng.uniform(1.0, 2.0)
    long_px, short_px = int(round(long_side)), max(16, int(round(long_side / ratio)))
    return (long_px, short_px) if rng.random() < 0.8 else (short_px, long_px)


def noise_bank(seed: int) -> np.ndarray:
    """MAX_SIDE^2 x 3 int16 detail, fine plus coarser octaves, the same in every process for a seed."""
    import cv2

    rng = np.random.default_rng([seed, BANK_SEED])
    bank = rng.normal(0, 1.0, size=(MAX_SIDE, MAX_SIDE, 3)).astype(np.float32)
    for factor, weight in ((4, 1.2), (16, 1.5)):
        small = rng.normal(0, 1.0, size=(MAX_SIDE // factor, MAX_SIDE // factor, 3)).astype(np.float32)
        bank += weight * cv2.resize(small, (MAX_SIDE, MAX_SIDE), interpolation=cv2.INTER_LINEAR)
    return (bank * (1 / bank.std())).astype(np.float32)


def render(class_id: int, rng: np.random.Generator, bank: np.ndarray, classes: int) -> tuple[bytes, int, int]:
    """One JPEG: (bytes, width, height)."""
    import cv2
    from PIL import Image

    width, height = image_size(rng)
    # smooth colour field tinted with the class hue
    grid = rng.uniform(0, 255, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.float32)
    hue = np.array(_hue_rgb(class_id / classes), dtype=np.float32)
    grid = 0.55 * grid + 0.45 * hue
    image = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    # class grating
    angle = math.pi * ((class_id * 0.618033988749895) % 1.0)
    period = 6.0 + (class_id % 7) * 3.0
    phase = (np.arange(width, dtype=np.float32) * math.cos(angle))[None, :] + \
        (np.arange(height, dtype=np.float32) * math.sin(angle))[:, None]
    image += (18.0 * np.sin(phase * (2 * math.pi / period)))[..., None]
    # detail from the bank, at a random place, per-image strength
    oy, ox = int(rng.integers(0, MAX_SIDE - height + 1)), int(rng.integers(0, MAX_SIDE - width + 1))
    image += float(rng.uniform(24.0, 48.0)) * bank[oy:oy + height, ox:ox + width]
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=int(rng.integers(80, 96)))
    return buffer.getvalue(), width, height


def _hue_rgb(hue: float) -> tuple[float, float, float]:
    import colorsys

    return tuple(v * 255 for v in colorsys.hsv_to_rgb(hue % 1.0, 0.6, 0.85))  # type: ignore[return-value]


@dataclass(frozen=True)
class _Task:
    split: str
    class_id: int
    wnid: str
    index: int
    path: Path


_BANK: dict[int, np.ndarray] = {}


def _write_chunk(args: tuple[int, int, list[_Task]]) -> list[tuple[int, int, int]]:
    seed, classes, tasks = args
    bank = _BANK.get(seed)
    if bank is None:
        bank = _BANK[seed] = noise_bank(seed)
    out = []
    for task in tasks:
        rng = np.random.default_rng([seed, SPLIT_SEEDS[task.split], task.class_id, task.index])
        data, width, height = render(task.class_id, rng, bank, classes)
        task.path.write_bytes(data)
        out.append((len(data), width, height))
    return out


def _tasks(staging: Path, config: ImageNetSynthConfig, wnids: list[str]) -> Iterator[_Task]:
    for split, per_class in (("train", config.train_per_class), ("val", config.val_per_class)):
        for class_id, wnid in enumerate(wnids):
            folder = staging / split if split == "val" and config.flat_val else staging / split / wnid
            for index in range(per_class):
                name = f"{wnid}_{index:05d}" if split == "train" else val_image_id(class_id, index)
                yield _Task(split, class_id, wnid, index, folder / f"{name}.JPEG")


def val_image_id(class_id: int, index: int) -> str:
    return f"VN_val_{class_id:04d}{index:05d}"


def synthesize_imagenet(out: str | os.PathLike[str], config: ImageNetSynthConfig) -> ImageNetSynthResult:
    """Write train/ and val/ (and the synset mapping) under `out`; replaces an earlier generated dataset."""
    import time

    config.validate()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / SYNSET_MAPPING_FILE).is_file():
        raise ConfigError(f"{out} exists and is not a generated dataset", "choose an empty or new directory")
    wnids = [synthetic_wnid(c) for c in range(config.classes)]
    total = config.classes * (config.train_per_class + config.val_per_class)
    started = time.perf_counter()
    count = total_bytes = sum_w = sum_h = 0
    with staged_dir(out) as staging, progress_bar(total, "synthesising ImageNet-shaped images") as advance:
        tasks = list(_tasks(staging, config, wnids))
        for folder in sorted({t.path.parent for t in tasks}):
            folder.mkdir(parents=True, exist_ok=True)
        chunks = [(config.seed, config.classes, tasks[i:i + CHUNK]) for i in range(0, len(tasks), CHUNK)]
        if config.workers == 1:
            results: Iterator[list[tuple[int, int, int]]] = map(_write_chunk, chunks)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(config.workers)
            results = pool.imap_unordered(_write_chunk, chunks)
        try:
            for figures in results:
                for size, width, height in figures:
                    count, total_bytes = count + 1, total_bytes + size
                    sum_w, sum_h = sum_w + width, sum_h + height
                advance(len(figures))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        write_metadata(staging, wnids, [f"generated class {c} (ImageNet-shaped)" for c in range(len(wnids))],
                       [(val_image_id(t.class_id, t.index), t.wnid) for t in tasks
                        if t.split == "val"] if config.flat_val else [])
    seconds = time.perf_counter() - started
    return ImageNetSynthResult(out, config.classes, config.classes * config.train_per_class,
                               config.classes * config.val_per_class, total_bytes, sum_w / count,
                               sum_h / count, total_bytes / count / 1000, seconds, count / seconds)
