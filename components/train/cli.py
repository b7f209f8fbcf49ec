"""`visionnode train`: a thin Typer adapter onto train.py (the same command runs under torchrun)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, err_console, user_errors
from visionnode.components.common.adapters.declared import build, with_setting_options
from visionnode.components.train.config import TrainConfig


@user_errors
@with_setting_options(TrainConfig)
def train_command(
    shards: Annotated[str, typer.Option(help="s3://bucket/prefix, a shard dir or a remote-manifest dir.")],
    out: Annotated[
        Path, typer.Option(help="Output dir: weights.pt + model.json (+ train_log.csv, loss_curve.png).")
    ],
    settings: dict[str, Any],
    json_path: JsonOption = None,
) -> None:
    """Train ResNet-152 (or another depth) on FFCV shards: SGD+Nesterov, label smoothing, warm-up + cosine,
    mixed precision, checkpoints with resume; the same command runs as one process or under torchrun.

    Exit codes: 0 done, 2 user error, 143 pre-empted by SIGTERM after writing a checkpoint (re-run resumes).
    """
    from visionnode.components.common.artifacts import check_shard_source

    check_shard_source(shards)  # before the seconds of importing torch
    config = build(TrainConfig, settings, shards=shards, out_dir=out).resolved()
    from visionnode.components.train.train import (  # imports torch: only when the command runs
        PREEMPTED_EXIT_CODE,
        train,
    )

    result = train(config)
    if result.world_size > 1 and result.status != "preempted" and not _is_rank_zero():
        return
    if result.status == "preempted":
        err_console.print(f"pre-empted: checkpoint {result.checkpoint} at step {result.steps}; "
                          "run again with --resume auto to continue")
        if json_path is not None and _is_rank_zero():
            emit_result(result, json_path, "train (pre-empted)")
        raise typer.Exit(PREEMPTED_EXIT_CODE)
    emit_result(result, json_path, "train")


def _is_rank_zero() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
