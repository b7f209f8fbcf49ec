"""`visionnode validate`: smoke-train, check ResNet-152's integrity and profile the input pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.validate.config import DEFAULTS, ValidateConfig


def validate_command(
    data: Annotated[str, typer.Option("--data", help="ImageNet-layout directory or s3://bucket/prefix "
                                                      "(train/<wnid>/*.JPEG); only the subset is read.")],
    subset: Annotated[
        int, typer.Option(help="Images sampled (seeded) for smoke training.")
    ] = DEFAULTS.subset,
    image_size: Annotated[int, typer.Option(help="Square input side in pixels.")] = DEFAULTS.image_size,
    steps: Annotated[int, typer.Option(help="Smoke-training optimizer steps.")] = DEFAULTS.steps,
    batch_size: Annotated[
        int, typer.Option(help="Images per step (also for the profile).")
    ] = DEFAULTS.batch_size,
    arch: Annotated[
        str, typer.Option(help="Smoke-training ResNet (the integrity check always uses resnet152).")
    ] = DEFAULTS.arch,
    lr: Annotated[float, typer.Option(help="AdamW learning rate for smoke training.")] = DEFAULTS.lr,
    min_drop: Annotated[
        float, typer.Option(help="Required relative fall of the loss, 0..1.")
    ] = DEFAULTS.min_relative_drop,
    split: Annotated[str, typer.Option(help="Split to sample: train or val.")] = DEFAULTS.split,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = DEFAULTS.workers,
    profile_arch: Annotated[str | None, typer.Option(help="Model for the profile (default: --arch).")] = None,
    profile_batches: Annotated[
        int, typer.Option(help="Batches timed per profile stage.")
    ] = DEFAULTS.profile_batches,
    lr_probe_steps: Annotated[
        int, typer.Option(help="LR probe: steps each candidate LR trains before the first judgement "
                          "(train's SGD recipe, successive halving on held-out loss); 0 skips it.")
    ] = DEFAULTS.lr_probe_steps,
    seed: Annotated[
        int, typer.Option(help="Seed for the subset, the model and batch order.")
    ] = DEFAULTS.seed,
    report: Annotated[
        Path | None, typer.Option(help="Write the Markdown report here (PNG beside it).")
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Fail fast before sharding: does the loss fall, is ResNet-152 intact, is the loader the bottleneck?"""
    from visionnode.components.validate.validate import (  # imports torch: only when the command runs
        raise_for_gates,
        run_checks,
    )

    config = ValidateConfig(
        data=data,
        subset=subset,
        image_size=image_size,
        steps=steps,
        batch_size=batch_size,
        arch=arch,
        lr=lr,
        min_relative_drop=min_drop,
        split=split,
        workers=workers,
        profile_arch=profile_arch,
        profile_batches=profile_batches,
        lr_probe_steps=lr_probe_steps,
        seed=seed,
        report=report,
    )
    result = run_checks(config)
    emit_result(result, json_path, "validate")  # written before the gate so a failed run can be inspected
    raise_for_gates(result)


def register(app: typer.Typer) -> None:
    app.command("validate")(user_errors(validate_command))
