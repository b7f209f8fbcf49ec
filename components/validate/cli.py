"""`visionnode validate`: smoke-train, check ResNet-152's integrity and profile the input pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.common.adapters.declared import build, with_setting_options
from visionnode.components.validate.config import ValidateConfig


@with_setting_options(ValidateConfig)
def validate_command(
    data: Annotated[str, typer.Option("--data", help="ImageNet-layout directory or s3://bucket/prefix "
                                                      "(train/<wnid>/*.JPEG); only the subset is read.")],
    settings: dict[str, Any],
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

    result = run_checks(build(ValidateConfig, settings, data=data, report=report))
    emit_result(result, json_path, "validate")  # written before the gate so a failed run can be inspected
    raise_for_gates(result)


def register(app: typer.Typer) -> None:
    app.command("validate")(user_errors(validate_command))
