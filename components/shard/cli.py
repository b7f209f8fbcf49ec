"""`visionnode shard`: FFCV shards + manifest.json from an ImageNet-layout directory or S3 prefix."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, err_console, user_errors
from visionnode.components.common.adapters.declared import build, with_setting_options
from visionnode.components.shard.config import ShardConfig


@user_errors
@with_setting_options(ShardConfig)
def shard_command(
    data: Annotated[str, typer.Option("--data", help="ImageNet-layout directory or s3://bucket/prefix "
                                                      "(train/<wnid>/, val/), read where it lies.")],
    out: Annotated[str, typer.Option("--out", help="Output: .beton shards + manifest.json, in a directory or "
                                                    "straight into s3://bucket/prefix.")],
    settings: dict[str, Any],
    json_path: JsonOption = None,
) -> None:
    """Write FFCV shards (JPEG RGB + label) with a checksummed manifest; re-runs reuse verified shards."""
    from visionnode.components.common.artifacts import describe_skipped
    from visionnode.components.shard.shard import (
        shard_dataset,  # imports FFCV and numpy: only when the command runs
    )

    result = shard_dataset(build(ShardConfig, settings, data=data, out=out))
    emit_result(result, json_path, "shard")
    if result.skipped:  # named here: the table only counts them
        err_console.print(f"warning: {len(result.skipped)} unreadable files are not in the shards (all "
                          f"listed in {result.manifest}): {describe_skipped(result.skipped, data)}",
                          highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("shard")(shard_command)
