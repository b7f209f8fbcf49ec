"""`visionnode train`: a thin Typer adapter onto train.py (the same command runs under torchrun)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, err_console, user_errors
from visionnode.components.common.training.recipe import LR_BATCH_RULE
from visionnode.components.train.config import DEFAULTS, TrainConfig


@user_errors
def train_command(
    shards: Annotated[str, typer.Option(help="s3://bucket/prefix, a shard dir or a remote-manifest dir.")],
    out: Annotated[
        Path, typer.Option(help="Output dir: weights.pt + model.json (+ train_log.csv, loss_curve.png).")
    ],
    epochs: Annotated[int, typer.Option(help="Epochs to train.")] = DEFAULTS.epochs,
    batch_size: Annotated[
        int, typer.Option(help="Images per step per process (global = x world size).")
    ] = DEFAULTS.batch_size,
    lr: Annotated[
        str, typer.Option(help="Peak LR: batch-rule (0.1 x global batch / 256), a number > 0, or auto: an LR "
                           "probe (a short sweep judged on held-out loss) on the train shards first.")
    ] = LR_BATCH_RULE,
    arch: Annotated[str, typer.Option(help="resnet18|34|50|101|152.")] = DEFAULTS.arch,
    res_schedule: Annotated[
        str, typer.Option(help="Progressive resizing START:END px (linear over epochs, multiples of 32); "
                           "END is the eval/serving size.")
    ] = DEFAULTS.res_schedule,
    precision: Annotated[
        str, typer.Option(help="auto|fp32|bf16|fp16 (fp16 needs CUDA).")
    ] = DEFAULTS.precision,
    checkpoint_uri: Annotated[
        str, typer.Option(help="Checkpoint dir or s3://bucket/prefix (default: OUT/checkpoints).")
    ] = DEFAULTS.checkpoint_uri,
    checkpoint_every: Annotated[
        int, typer.Option(help="Also checkpoint every N steps (0: epoch ends only).")
    ] = DEFAULTS.checkpoint_every,
    resume: Annotated[
        str, typer.Option(help="auto (newest checkpoint, if any), never, or a checkpoint path/URI.")
    ] = DEFAULTS.resume,
    compile: Annotated[
        bool, typer.Option("--compile/--no-compile", help="torch.compile the model.")
    ] = DEFAULTS.compile,
    workers: Annotated[int, typer.Option(help="FFCV decoding threads.")] = DEFAULTS.workers,
    max_steps: Annotated[
        int, typer.Option(help="Stop after N optimizer steps in total (0: all epochs).")
    ] = DEFAULTS.max_steps,
    warmup_epochs: Annotated[
        str, typer.Option(help="Linear LR warm-up in epochs (at most a quarter of all steps); auto: one "
                          "epoch per decade the peak LR is above the batch rule's.")
    ] = "auto",
    schedule: Annotated[
        str, typer.Option(help="LR decay after warm-up: cosine|step.")
    ] = DEFAULTS.recipe.schedule,
    log_every: Annotated[int, typer.Option(help="Steps between MLflow step metrics.")] = DEFAULTS.log_every,
    lr_probe_steps: Annotated[
        int, typer.Option(help="--lr auto's LR probe: steps each candidate LR trains before the first "
                          "judgement on held-out loss.")
    ] = DEFAULTS.lr_probe_steps,
    crop_min_scale: Annotated[
        float, typer.Option(help="RandomResizedCrop's smallest kept share of the image area "
                           "(0.08 ImageNet; raise it for small objects).")
    ] = DEFAULTS.crop_min_scale,
    flip: Annotated[
        bool, typer.Option("--flip/--no-flip",
                           help="Random horizontal flips (off for text, symbols, anything handed).")
    ] = DEFAULTS.flip,
    init_weights: Annotated[
        str, typer.Option(help="Fine-tune from this state dict (path or s3://...), e.g. torchvision's "
                           "ImageNet weights; a head of another class count is replaced.")
    ] = DEFAULTS.init_weights,
    head_epochs: Annotated[
        int, typer.Option(help="With --init-weights: first epochs train only the classifier head.")
    ] = DEFAULTS.head_epochs,
    seed: Annotated[int, typer.Option(help="Seed for weights and data order.")] = DEFAULTS.seed,
    json_path: JsonOption = None,
) -> None:
    """Train ResNet-152 (or another depth) on FFCV shards: SGD+Nesterov, label smoothing, warm-up + cosine,
    mixed precision, checkpoints with resume; the same command runs as one process or under torchrun.

    Exit codes: 0 done, 2 user error, 143 pre-empted by SIGTERM after writing a checkpoint (re-run resumes).
    """
    from visionnode.components.common.artifacts import check_shard_source

    check_shard_source(shards)  # before the seconds of importing torch
    from visionnode.components.common.training.recipe import (
        LR_AUTO,
        Recipe,
        parse_lr,
        parse_res_schedule,
        parse_warmup,
    )
    from visionnode.components.train.train import (  # imports torch: only when the command runs
        PREEMPTED_EXIT_CODE,
        train,
    )

    res_start, res_end = parse_res_schedule(res_schedule)
    lr_choice = parse_lr(lr)
    config = TrainConfig(
        shards=shards, out_dir=out, epochs=epochs, batch_size=batch_size, arch=arch, res_start=res_start,
        res_end=res_end, precision=precision, checkpoint_uri=checkpoint_uri,
        checkpoint_every=checkpoint_every, resume=resume, compile=compile, workers=workers,
        max_steps=max_steps, seed=seed, log_every=log_every,
        recipe=Recipe(lr=lr_choice if isinstance(lr_choice, float) else None,
                      warmup_epochs=parse_warmup(warmup_epochs), schedule=schedule),
        auto_lr=lr_choice == LR_AUTO,
        lr_probe_steps=lr_probe_steps, crop_min_scale=crop_min_scale, flip=flip, init_weights=init_weights,
        head_epochs=head_epochs,
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
