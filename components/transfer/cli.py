"""`visionnode transfer upload|fetch`: thin Typer adapters onto transfer.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.common.storage.shard_cache import FetchConfig
from visionnode.components.transfer.config import DEFAULTS, UPLOAD_DEFAULTS, PlaceConfig, UploadConfig

transfer_app = typer.Typer(help="Move shards to, within and from S3: parallel, verified, resumable.",
                           no_args_is_help=True)

Concurrency = Annotated[int, typer.Option(help="Parallel requests (multipart parts and objects together).")]
PartSize = Annotated[int, typer.Option("--part-size", help="Multipart part size in MiB (at least 5).")]


@transfer_app.command("upload")
@user_errors
def upload_command(
    shards_dir: Annotated[Path, typer.Argument(help="Shard dir (manifest.json + .beton files).")],
    destination: Annotated[str, typer.Argument(help="s3://bucket/prefix")],
    concurrency: Concurrency = UPLOAD_DEFAULTS.concurrency,
    part_size: PartSize = UPLOAD_DEFAULTS.part_size_mb,
    create_bucket: Annotated[
        bool, typer.Option(help="Create the bucket when it does not exist.")
    ] = UPLOAD_DEFAULTS.create_bucket,
    out: Annotated[Optional[Path], typer.Option(help="Also write the remote manifest.json here.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Upload shards; re-running skips objects already present and verified."""
    from visionnode.components.transfer.transfer import (
        upload_shards,  # imports boto3: only when the command runs
    )

    config = UploadConfig(shards_dir, destination, concurrency, part_size, create_bucket, out)
    emit_result(upload_shards(config), json_path, "transfer upload")


@transfer_app.command("place")
@user_errors
def place_command(
    shards: Annotated[Path, typer.Argument(help="Dir holding the manifest.json of shards already in the "
                                                "store (what `visionnode shard --out s3://...` wrote).")],
    destination: Annotated[str, typer.Option(
        help="Empty: verify the shards where they are (no byte moves); s3://bucket/prefix on the same "
             "endpoint: copy them there server-side.")] = DEFAULTS.destination,
    data_digest: Annotated[str, typer.Option(
        help="The data fingerprint the shards must have been made from (`visionnode data fingerprint`); "
             "empty: not checked.")] = DEFAULTS.data_digest,
    concurrency: Concurrency = DEFAULTS.concurrency,
    part_size: PartSize = DEFAULTS.part_size_mb,
    out: Annotated[Optional[Path], typer.Option(help="Also write the remote manifest.json here.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Hand shards already in the store to training: a verified no-op, or a server-side copy."""
    from visionnode.components.transfer.transfer import place_shards  # imports boto3: only when it runs

    config = PlaceConfig(shards, destination, data_digest, concurrency, part_size, out)
    config.validate()
    emit_result(place_shards(config), json_path, "transfer place")


@transfer_app.command("fetch")
@user_errors
def fetch_command(
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix holding manifest.json")],
    cache_dir: Annotated[Path, typer.Argument(help="Local dir for the shards (FFCV needs local files).")],
    concurrency: Concurrency = DEFAULTS.concurrency,
    part_size: PartSize = DEFAULTS.part_size_mb,
    json_path: JsonOption = None,
) -> None:
    """Download shards with ranged parallel GETs, each sha256-checked; verified files are skipped."""
    from visionnode.components.common.storage.shard_cache import fetch_shards

    emit_result(fetch_shards(FetchConfig(source, cache_dir, concurrency, part_size)), json_path,
                "transfer fetch")


def register(app: typer.Typer) -> None:
    app.add_typer(transfer_app, name="transfer")
