"""`visionnode transfer upload|place|fetch`: thin Typer adapters onto transfer.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.common.adapters.declared import build, with_setting_options
from visionnode.components.common.storage.shard_cache import FetchConfig
from visionnode.components.transfer.config import PlaceConfig, UploadConfig

transfer_app = typer.Typer(help="Move shards to, within and from S3: parallel, verified, resumable.",
                           no_args_is_help=True)

OutOption = Annotated[Optional[Path], typer.Option(help="Also write the remote manifest.json here.")]


@transfer_app.command("upload")
@user_errors
@with_setting_options(UploadConfig)
def upload_command(
    shards_dir: Annotated[Path, typer.Argument(help="Shard dir (manifest.json + .beton files).")],
    destination: Annotated[str, typer.Argument(help="s3://bucket/prefix")],
    settings: dict[str, Any],
    out: OutOption = None,
    json_path: JsonOption = None,
) -> None:
    """Upload shards; re-running skips objects already present and verified."""
    from visionnode.components.transfer.transfer import (
        upload_shards,  # imports boto3: only when the command runs
    )

    config = build(UploadConfig, settings, shards_dir=shards_dir, destination=destination, output_dir=out)
    emit_result(upload_shards(config), json_path, "transfer upload")


@transfer_app.command("place")
@user_errors
@with_setting_options(PlaceConfig)
def place_command(
    shards: Annotated[Path, typer.Argument(help="Dir holding the manifest.json of shards already in the "
                                                "store (what `visionnode shard --out s3://...` wrote).")],
    settings: dict[str, Any],
    out: OutOption = None,
    json_path: JsonOption = None,
) -> None:
    """Hand shards already in the store to training: a verified no-op, or a server-side copy."""
    from visionnode.components.transfer.transfer import place_shards  # imports boto3: only when it runs

    config = build(PlaceConfig, settings, shards=shards, output_dir=out)
    config.validate()
    emit_result(place_shards(config), json_path, "transfer place")


@transfer_app.command("fetch")
@user_errors
@with_setting_options(FetchConfig)
def fetch_command(
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix holding manifest.json")],
    cache_dir: Annotated[Path, typer.Argument(help="Local dir for the shards (FFCV needs local files).")],
    settings: dict[str, Any],
    json_path: JsonOption = None,
) -> None:
    """Download shards with ranged parallel GETs, each sha256-checked; verified files are skipped."""
    from visionnode.components.common.storage.shard_cache import fetch_shards

    emit_result(fetch_shards(build(FetchConfig, settings, source=source, cache_dir=cache_dir)), json_path,
                "transfer fetch")


def register(app: typer.Typer) -> None:
    app.add_typer(transfer_app, name="transfer")
