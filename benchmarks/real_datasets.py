"""Two real image datasets that ship inside packages installable here, written in ImageNet layout.

- **digits** (scikit-learn's `load_digits`, bundled in the sklearn wheel as `digits.csv.gz`): 1,797 real scans
  of handwritten digits (UCI "Optical Recognition of Handwritten Digits", 43 writers), 8x8 pixels, 17 grey
  levels, 10 classes. Upscaled to `size` px (bicubic) and saved as RGB JPEGs: the kind of data (scanned
  symbols) where the recipe's ImageNet augmentation is at its worst. Issue 19 and 31 measured on it.
- **textures** (scikit-image's bundled photographs under `skimage/data/`): a Brodatz-style texture
  classification set, as texture benchmarks are built: each class is one large photograph, and the images are
  64-px crops of it (grey, so colour gives nothing away). Train crops come from the top three quarters of each
  photograph, val crops from the bottom quarter: no pixel is shared between the splits. Eight classes:
  brick, grass, gravel (scikit-image's texture samples), the moon's surface, immunohistochemistry tissue
  (`ihc`, a microscopy slide), coffee beans and cup (`coffee`), cat fur (`chelsea`) and a portrait
  (`astronaut`): photographs, textures and a medical image, another kind of data than scans.

- **scenes** (added to test a probe rule fitted on the four datasets above; docs/training.md): ten
  other photographs, cut as textures are: scikit-image's camera man, coins, Hubble deep field, a scanned page,
  a text sign, a rocket, a retina, a cell micrograph and a clock, and scikit-learn's bundled photograph of a
  Chinese temple. A page and a text sign are both print: one pair of classes that only detail tells apart.
- **faces** (added with scenes): scikit-image's `lfw_subset`, 100 face crops from Labeled Faces in the Wild
  and 100 non-face patches, 25x25 grey (scikit-image's face-detection example trains on it), upscaled.
- **colour** (added to test the probe rule fitted on the six above): ten colour photographs cut as textures
  are, but kept in colour: matplotlib's Grace Hopper portrait, scikit-image's motorcycle, scikit-learn's
  flower, and seven photographs the grey sets also use (cat, coffee, astronaut, rocket, retina, tissue slide,
  Hubble deep field). Colour photographs are the kind most users bring.

All need only the packages (no download at run time): scikit-learn, scikit-image and matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from visionnode.components.common.jsonio import staged_dir
from visionnode.components.local.synth import synthetic_wnid

# class name -> skimage.data loader
TEXTURES = {"brick": "brick", "grass": "grass", "gravel": "gravel", "moon": "moon",
            "ihc": "immunohistochemistry", "coffee": "coffee", "chelsea": "chelsea", "astronaut": "astronaut"}
# class name -> skimage.data loader; scikit-learn's temple photograph is the tenth class
SCENES = {"camera": "camera", "coins": "coins", "hubble": "hubble_deep_field", "page": "page", "text": "text",
          "rocket": "rocket", "retina": "retina", "cell": "cell", "clock": "clock"}
# class name -> skimage.data loader, besides three photographs from elsewhere (write_colour)
COLOUR = {"chelsea": "chelsea", "coffee": "coffee", "astronaut": "astronaut", "rocket": "rocket",
          "retina": "retina", "ihc": "immunohistochemistry", "hubble": "hubble_deep_field"}
CROP = 64


def _save(root: Path, split: str, class_id: int, index: int, pixels: np.ndarray) -> None:
    folder = root / split / synthetic_wnid(class_id)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert("RGB").save(folder / f"{split}_{class_id:02d}_{index:05d}.JPEG", "JPEG",
                                                  quality=95)


def _write_mapping(root: Path, names: list[str]) -> None:
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{synthetic_wnid(c)} {name}\n" for c, name in enumerate(names)), encoding="utf-8")


def write_digits(out: Path, train_per_class: int, val_per_class: int, size: int = 64, seed: int = 0) -> Path:
    """sklearn's digits (17 grey levels), a seeded split per class, upscaled to `size` px."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = [f"digit {d}" for d in range(10)]
    return write_split_per_class(out, (digits.images * (255 / 16)).astype(np.uint8), digits.target, names,
                                 train_per_class, val_per_class, size, seed)


def write_split_per_class(out: Path, grey: np.ndarray, labels: np.ndarray, names: list[str],
                          train_per_class: int, val_per_class: int, size: int, seed: int) -> Path:
    """Small grey images (uint8, N x h x w) split per class with a seeded shuffle (train first, then val),
    upscaled to `size` px (bicubic)."""
    rng = np.random.default_rng(seed)
    with staged_dir(out) as root:
        for class_id, name in enumerate(names):
            chosen = rng.permutation(np.flatnonzero(labels == class_id))
            if len(chosen) < train_per_class + val_per_class:
                raise ValueError(f"class {name!r} has only {len(chosen)} images")
            for split, picks in (("train", chosen[:train_per_class]),
                                 ("val", chosen[train_per_class:train_per_class + val_per_class])):
                for index, i in enumerate(picks):
                    _save(root, split, class_id, index, np.asarray(
                        Image.fromarray(grey[i]).resize((size, size), Image.Resampling.BICUBIC)))
        _write_mapping(root, names)
    return out


def write_textures(out: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """Random CROP x CROP crops of each photograph (`write_crops`)."""
    from skimage import data

    return write_crops(out, {name: getattr(data, loader)() for name, loader in TEXTURES.items()},
                       train_per_class, val_per_class, seed)


def write_scenes(out: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    from skimage import data
    from sklearn.datasets import load_sample_image

    photos = {name: getattr(data, loader)() for name, loader in SCENES.items()}
    return write_crops(out, {**photos, "temple": load_sample_image("china.jpg")}, train_per_class,
                       val_per_class, seed)


def write_colour(out: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    from matplotlib.cbook import get_sample_data
    from skimage import data
    from sklearn.datasets import load_sample_image

    photos = {"hopper": np.asarray(Image.open(get_sample_data("grace_hopper.jpg"))),
              "motorcycle": data.stereo_motorcycle()[0], "flower": load_sample_image("flower.jpg"),
              **{name: getattr(data, loader)() for name, loader in COLOUR.items()}}
    return write_crops(out, photos, train_per_class, val_per_class, seed, colour=True)


def write_crops(out: Path, photos: dict[str, np.ndarray], train_per_class: int, val_per_class: int,
                seed: int, colour: bool = False) -> Path:
    """Random CROP x CROP crops, grey unless `colour`: train from the top 3/4 of each photograph, val from the
    bottom 1/4 (the left and right parts of a photograph whose bottom quarter is lower than a crop)."""
    from skimage.color import rgb2gray

    rng = np.random.default_rng(seed)
    with staged_dir(out) as root:
        for class_id, photo in enumerate(photos.values()):
            if colour:
                pixels = photo[..., :3]
            else:
                pixels = ((rgb2gray(photo) if photo.ndim == 3 else photo / 255.0) * 255).astype(np.uint8)
            if pixels.shape[0] // 4 < CROP:
                pixels = pixels.swapaxes(0, 1)
            split_row = pixels.shape[0] * 3 // 4
            regions = {"train": pixels[:split_row], "val": pixels[split_row:]}
            for split, count in (("train", train_per_class), ("val", val_per_class)):
                region = regions[split]
                for index in range(count):
                    top = int(rng.integers(0, region.shape[0] - CROP + 1))
                    left = int(rng.integers(0, region.shape[1] - CROP + 1))
                    _save(root, split, class_id, index, region[top:top + CROP, left:left + CROP])
        _write_mapping(root, list(photos))
    return out


def write_faces(out: Path, train_per_class: int, val_per_class: int, size: int = 64, seed: int = 0) -> Path:
    """scikit-image's lfw_subset (the first 100 are faces, the rest not), a seeded split per class."""
    from skimage import data

    faces = data.lfw_subset()
    return write_split_per_class(out, (faces * 255).astype(np.uint8), np.repeat([0, 1], len(faces) // 2),
                                 ["face", "not a face"], train_per_class, val_per_class, size, seed)
