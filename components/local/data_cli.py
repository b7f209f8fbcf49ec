"""`visionnode data synth`: the generated ImageNet-layout dataset used by tests and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.local.synth import SynthConfig, synthesize_dataset
from visionnode.components.local.synth_imagenet import ImageNetSynthConfig, synthesize_imagenet

IMAGENET_DEFAULTS = ImageNetSynthConfig()

data_app = typer.Typer(help="Datasets: generate a synthetic ImageNet-layout dataset (learnable shapes or "
                       "ImageNet-shaped), fingerprint one.",
                       no_args_is_help=True)


@data_app.command("synth")
@user_errors
def synth_command(
    out: Annotated[Path, typer.Argument(help="Output directory (train/, val/, LOC_synset_mapping.txt).")],
    classes: Annotated[int, typer.Option(help="Number of classes.")] = 10,
    train_per_class: Annotated[int, typer.Option(help="Train images per class.")] = 60,
    val_per_class: Annotated[int, typer.Option(help="Val images per class.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    min_side: Annotated[int, typer.Option(help="Smallest image side in pixels.")] = 96,
    max_side: Annotated[int, typer.Option(help="Largest image side in pixels.")] = 256,
    flat_val: Annotated[bool, typer.Option(help="Write val/ flat with LOC_val_solution.csv.")] = False,
    json_path: JsonOption = None,
) -> None:
    """Write a deterministic ImageNet-layout dataset of JPEGs with a learnable class signal."""
    config = SynthConfig(classes, train_per_class, val_per_class, seed, min_side, max_side, flat_val)
    emit_result(synthesize_dataset(out, config), json_path, "synthetic dataset")


@data_app.command("synth-imagenet")
@user_errors
def synth_imagenet_command(
    out: Annotated[Path, typer.Argument(help="Output directory (train/, val/, LOC_synset_mapping.txt).")],
    classes: Annotated[int, typer.Option(help="Number of classes.")] = IMAGENET_DEFAULTS.classes,
    train_per_class: Annotated[int, typer.Option(help="Train images per class.")] =
        IMAGENET_DEFAULTS.train_per_class,
    val_per_class: Annotated[int, typer.Option(help="Val images per class.")] = \
        IMAGENET_DEFAULTS.val_per_class,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] =
        IMAGENET_DEFAULTS.seed,
    workers: Annotated[int, typer.Option(help="Processes rendering images; the files do not depend on it.")] =
        IMAGENET_DEFAULTS.workers,
    flat_val: Annotated[bool, typer.Option(help="Write val/ flat with LOC_val_solution.csv.")] =
        IMAGENET_DEFAULTS.flat_val,
    json_path: JsonOption = None,
) -> None:
    """Write a deterministic dataset shaped like ImageNet-1K: 1,000 classes, JPEGs of ImageNet's mean size
    (about 469 x 387 px) and file size (about 110 KB), for scale tests and benchmarks."""
    config = ImageNetSynthConfig(classes, train_per_class, val_per_class, seed, workers, flat_val)
    emit_result(synthesize_imagenet(out, config), json_path, "ImageNet-shaped dataset")


@data_app.command("fingerprint")
@user_errors
def fingerprint_command(
    data: Annotated[str, typer.Argument(help="Dataset root: a directory or s3://bucket/prefix.")],
    json_path: JsonOption = None,
) -> None:
    """The data's fingerprint, as the pipeline's first step computes it: a digest of the listing (key, size,
    mtime or ETag of every file), no byte of the data read. Steps and shards are keyed by it."""
    from visionnode.components.common.storage.dataset import fingerprint_dataset

    emit_result(fingerprint_dataset(data), json_path, "data fingerprint")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
