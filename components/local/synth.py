"""A generated dataset in ImageNet layout for tests and the demo (ImageNet itself cannot be downloaded here).

Each class has a signal a small CNN can learn but not trivially: a shape kind, a hue and a stripe texture
drawn at a random place, size and angle over a noisy random background with distractor shapes of random
colours. Images vary in size and aspect ratio and are saved as JPEGs of varying quality. Output is
deterministic for a seed.

`clutter=False` gives a strong class signal instead: the class shape larger (35-75 % of the short side
instead of 18-60 %, so a random-resized crop misses it less often), on a plain grey background, without
distractors or pixel noise.
"""

from __future__ import annotations

import colorsys
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from visionnode.components.common.data.imagenet import SYNSET_MAPPING_FILE, VAL_SOLUTION_FILE
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.jsonio import staged_dir
from visionnode.components.common.progress import progress_bar

SHAPES = ("disc", "square", "triangle", "ring")
TEXTURES = ("plain", "fine stripes", "coarse stripes")
SPLIT_SEEDS = {"train": 1, "val": 2}


@dataclass(frozen=True)
class SynthConfig:
    classes: int = 10
    train_per_class: int = 60
    val_per_class: int = 10
    seed: int = 0
    min_side: int = 96
    max_side: int = 256
    flat_val: bool = False  # flat val/ + LOC_val_solution.csv, as Kaggle's ImageNet ships it
    # distractors, noise, coloured backgrounds; False: a strong class signal (module doc)
    clutter: bool = True

    def validate(self) -> None:
        if not 2 <= self.classes <= 1000:
            raise ConfigError(f"--classes {self.classes} is out of range", "use 2..1000")
        if self.train_per_class < 1 or self.val_per_class < 0:
            raise ConfigError("images per class must be positive", "use --train-per-class >= 1")
        if not 32 <= self.min_side <= self.max_side:
            raise ConfigError(f"image sides {self.min_side}..{self.max_side} are invalid",
                              "use 32 <= min side <= max side")


@dataclass
class SynthResult:
    root: Path
    classes: int
    train_images: int
    val_images: int


def synthetic_wnid(class_id: int) -> str:
    return f"n{(1_440_764 + 104_729 * class_id) % 10**8:08d}"


def class_description(class_id: int) -> str:
    hue_deg = round(_hue(class_id) * 360)
    shape, texture = SHAPES[class_id % len(SHAPES)], TEXTURES[(class_id // len(SHAPES)) % len(TEXTURES)]
    return f"synthetic {shape}, hue {hue_deg}, {texture}"


def synthesize_dataset(out: str | Path, config: SynthConfig) -> SynthResult:
    """Write train/ and val/ (and the synset mapping) under `out`; replaces an earlier synth output."""
    config.validate()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / SYNSET_MAPPING_FILE).is_file():
        raise ConfigError(f"{out} exists and is not a generated dataset", "choose an empty or new directory")
    wnids = [synthetic_wnid(c) for c in range(config.classes)]
    total = config.classes * (config.train_per_class + config.val_per_class)
    solution_rows: list[tuple[str, str]] = []
    with staged_dir(out) as staging, progress_bar(total, "synthesising images") as advance:
        for split, per_class in (("train", config.train_per_class), ("val", config.val_per_class)):
            for class_id, wnid in enumerate(wnids):
                for index in range(per_class):
                    rng = np.random.default_rng([config.seed, SPLIT_SEEDS[split], class_id, index])
                    name = f"{wnid}_{index:05d}" if split == "train" else f"VN_val_{class_id:04d}{index:05d}"
                    folder = staging / split if split == "val" and config.flat_val else staging / split / wnid
                    folder.mkdir(parents=True, exist_ok=True)
                    image = render_image(class_id, rng, config.min_side, config.max_side, config.clutter)
                    image.save(folder / f"{name}.JPEG", "JPEG", quality=int(rng.integers(75, 96)))
                    if split == "val":
                        solution_rows.append((name, wnid))
                    advance(1)
        write_metadata(staging, wnids, [class_description(c) for c in range(len(wnids))],
                       solution_rows if config.flat_val else [])
    return SynthResult(out, config.classes, config.classes * config.train_per_class,
                       config.classes * config.val_per_class)


def render_image(class_id: int, rng: np.random.Generator, min_side: int, max_side: int,
                 clutter: bool = True) -> Image.Image:
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    if not clutter:
        return _render_strong_signal(class_id, rng, width, height)
    image = Image.fromarray(_background(rng, width, height))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):  # distractors: random shape kinds and colours
        _draw_shape(draw, rng, SHAPES[int(rng.integers(len(SHAPES)))], _random_colour(rng), width, height,
                    0.25)
    mask = Image.new("L", image.size, 0)
    _draw_shape(ImageDraw.Draw(mask), rng, SHAPES[class_id % len(SHAPES)], 255, width, height, 0.6)
    image.paste(Image.fromarray(_class_fill(class_id, rng, width, height)), mask=mask)
    noise = rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def _render_strong_signal(class_id: int, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    grey = int(rng.integers(96, 160))
    image = Image.new("RGB", (width, height), (grey, grey, grey))
    mask = Image.new("L", image.size, 0)
    _draw_shape(ImageDraw.Draw(mask), rng, SHAPES[class_id % len(SHAPES)], 255, width, height, 0.75,
                min_scale=0.35)
    image.paste(Image.fromarray(_class_fill(class_id, rng, width, height)), mask=mask)
    return image


def _hue(class_id: int) -> float:
    return (class_id * 0.618033988749895) % 1.0


def _class_fill(class_id: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The class colour (hue jittered), optionally modulated by stripes at a class frequency and angle."""
    hue = (_hue(class_id) + rng.normal(0, 0.03)) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0))) * 255
    texture = (class_id // len(SHAPES)) % len(TEXTURES)
    fill = np.broadcast_to(rgb, (height, width, 3)).astype(np.float32)
    if texture:
        period = 6.0 if texture == 1 else 16.0
        angle = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:height, 0:width]
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        fill = fill * (0.45 + 0.55 * wave[..., None])
    return fill.astype(np.uint8)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    top, bottom = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    gradient = top * (1 - ramp) + bottom * ramp
    return np.broadcast_to(gradient, (height, width, 3)).astype(np.uint8)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, shape: str, fill, width: int,
                height: int, max_scale: float, min_scale: float = 0.18) -> None:
    side = min(width, height)
    radius = rng.uniform(min_scale, max_scale) * side / 2 + 4
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    if shape == "disc":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=fill,
                     width=max(2, int(radius * 0.35)))
    else:
        corners = 4 if shape == "square" else 3
        start = rng.uniform(0, 2 * math.pi)
        points = [(cx + radius * math.cos(start + 2 * math.pi * k / corners),
                   cy + radius * math.sin(start + 2 * math.pi * k / corners)) for k in range(corners)]
        draw.polygon(points, fill=fill)


def write_metadata(root: Path, wnids: list[str], descriptions: list[str],
                   val_solution: list[tuple[str, str]]) -> None:
    """LOC_synset_mapping.txt (wnid and description per class) and, for a flat val/, its solution CSV."""
    mapping = "".join(f"{wnid} {description}\n" for wnid, description in zip(wnids, descriptions))
    (root / SYNSET_MAPPING_FILE).write_text(mapping, encoding="utf-8")
    if val_solution:
        with open(root / VAL_SOLUTION_FILE, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["ImageId", "PredictionString"])
            for image_id, wnid in val_solution:
                writer.writerow([image_id, f"{wnid} 0 0 1 1"])
