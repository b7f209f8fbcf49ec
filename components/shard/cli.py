"""`visionnode shard`: FFCV shards + manifest.json from an ImageNet-layout directory or S3 prefix."""

from __future__ import annotations

from typing import Annotated

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.shard.config import DEFAULTS, SPLIT_CHOICES, ShardConfig


@user_errors
def shard_command(
    data: Annotated[str, typer.Option("--data", help="ImageNet-layout directory or s3://bucket/prefix "
                                                      "(train/<wnid>/, val/), read where it lies.")],
    out: Annotated[str, typer.Option("--out", help="Output: .beton shards + manifest.json, in a directory or "
                                                    "straight into s3://bucket/prefix.")],
    split: Annotated[
        str, typer.Option(help=f"Split(s) to shard: {', '.join(SPLIT_CHOICES)}.")
    ] = DEFAULTS.split,
    images_per_shard: Annotated[
        int, typer.Option(help="Images per .beton file.")
    ] = DEFAULTS.images_per_shard,
    max_resolution: Annotated[
        int, typer.Option(help="Longer image side in pixels after resizing.")
    ] = DEFAULTS.max_resolution,
    jpeg_quality: Annotated[
        int, typer.Option(help="JPEG quality of the stored images (1-100).")
    ] = DEFAULTS.jpeg_quality,
    workers: Annotated[
        int, typer.Option(help="Decode/encode processes; read-back threads.")
    ] = DEFAULTS.workers,
    readback: Annotated[
        bool, typer.Option(help="Read the shards back once with the FFCV loader and report its images/s.")
    ] = DEFAULTS.readback,
    data_digest: Annotated[
        str, typer.Option(help="Refuse data whose fingerprint (`visionnode data fingerprint`) is not this.")
    ] = DEFAULTS.data_digest,
    json_path: JsonOption = None,
) -> None:
    """Write FFCV shards (JPEG RGB + label) with a checksummed manifest; re-runs reuse verified shards."""
    from visionnode.components.shard.shard import (
        shard_dataset,  # imports FFCV and numpy: only when the command runs
    )

    config = ShardConfig(data=data, out=out, split=split, images_per_shard=images_per_shard,
                         max_resolution=max_resolution, jpeg_quality=jpeg_quality, workers=workers,
                         readback=readback, data_digest=data_digest)
    emit_result(shard_dataset(config), json_path, "shard")


def register(app: typer.Typer) -> None:
    app.command("shard")(shard_command)
