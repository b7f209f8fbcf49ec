"""`visionnode quantize`: thin Typer adapter onto quantize.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.quantize.config import DEFAULTS, QuantizeConfig


@user_errors
def quantize_command(
    model: Annotated[Path, typer.Option("--model", help="Train output dir (model.json + weights.pt).")],
    shards: Annotated[str, typer.Option(
        "--shards", help="Shard dir, remote-manifest dir or s3://bucket/prefix.")],
    out: Annotated[Path, typer.Option("--out", help="Output dir: model.xml/.bin, model.onnx, model.json.")],
    calibration_images: Annotated[
        int, typer.Option(help="Train images for INT8 calibration.")
    ] = DEFAULTS.calibration_images,
    max_accuracy_drop: Annotated[float, typer.Option(
        help="Largest allowed FP32 -> INT8 top-1 drop in points; beyond it: exit 2 (outputs kept).")
    ] = DEFAULTS.max_accuracy_drop,
    eval_images: Annotated[
        int, typer.Option(help="Val images for the accuracy report (0 = all).")
    ] = DEFAULTS.eval_images,
    preset: Annotated[
        str, typer.Option(help="NNCF preset: mixed (accuracy) or performance.")
    ] = DEFAULTS.preset,
    fast_bias_correction: Annotated[bool, typer.Option(
        help="NNCF's fast bias correction; the full one costs ~2.5 min more on ResNet-152.")
    ] = DEFAULTS.fast_bias_correction,
    full_int8: Annotated[bool, typer.Option(
        help="Quantize the residual Adds, the stem and the shortcut projections too (by default they stay "
             "FP32): faster, but INT8 answers drift further from FP32.")
    ] = DEFAULTS.full_int8,
    measure: Annotated[
        bool, typer.Option(help="Measure size, RSS, latency and throughput.")
    ] = DEFAULTS.measure,
    threads: Annotated[
        int, typer.Option(help="CPU threads for every engine in the measurements.")
    ] = DEFAULTS.threads,
    perf_seconds: Annotated[
        float, typer.Option(help="Seconds per timing measurement.")
    ] = DEFAULTS.perf_seconds,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where remote shards are fetched to.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Export to ONNX + OpenVINO IR (uint8 NHWC input, preprocessing folded in), quantize to INT8 with NNCF,
    report FP32 vs INT8 accuracy, size, memory and speed; fail when the top-1 drop exceeds the threshold."""
    from visionnode.components.quantize.quantize import (  # imports torch: only when run
        AccuracyGateError,
        quantize_model,
    )

    config = QuantizeConfig(model_dir=model, shards=shards, out_dir=out,
                            calibration_images=calibration_images,
                            max_accuracy_drop=max_accuracy_drop, eval_images=eval_images, preset=preset,
                            fast_bias_correction=fast_bias_correction,
                            full_int8=full_int8, measure=measure, threads=threads,
                            perf_seconds=perf_seconds, cache_dir=cache_dir)
    try:
        result = quantize_model(config)
    except AccuracyGateError as exc:
        emit_result(exc.result, json_path, "quantize (quality gate FAILED)")
        raise
    emit_result(result, json_path, "quantize")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
