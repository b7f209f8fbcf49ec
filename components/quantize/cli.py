"""`visionnode quantize`: thin Typer adapter onto quantize.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.common.adapters.declared import build, with_setting_options
from visionnode.components.quantize.config import QuantizeConfig


@user_errors
@with_setting_options(QuantizeConfig)
def quantize_command(
    model: Annotated[Path, typer.Option("--model", help="Train output dir (model.json + weights.pt).")],
    shards: Annotated[str, typer.Option(
        "--shards", help="Shard dir, remote-manifest dir or s3://bucket/prefix.")],
    out: Annotated[Path, typer.Option("--out", help="Output dir: model.xml/.bin, model.onnx, model.json.")],
    settings: dict[str, Any],
    json_path: JsonOption = None,
) -> None:
    """Export to ONNX + OpenVINO IR (uint8 NHWC input, preprocessing folded in), quantize to INT8 with NNCF,
    report FP32 vs INT8 accuracy, size, memory and speed; fail when the top-1 drop exceeds the threshold."""
    from visionnode.components.quantize.quantize import (  # imports torch: only when run
        AccuracyGateError,
        quantize_model,
    )

    config = build(QuantizeConfig, settings, model_dir=model, shards=shards, out_dir=out)
    try:
        result = quantize_model(config)
    except AccuracyGateError as exc:
        emit_result(exc.result, json_path, "quantize (quality gate FAILED)")
        raise
    emit_result(result, json_path, "quantize")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
