"""`visionnode benchmark`: thin Typer adapter onto benchmark.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from visionnode.components.benchmark.config import DEFAULTS, BenchmarkConfig, parse_levels
from visionnode.components.common.adapters.cli import (
    JsonOption,
    emit_result,
    err_console,
    json_to_stdout,
    out_console,
    user_errors,
)
from visionnode.components.common.jsonio import to_jsonable


@user_errors
def benchmark_command(
    model: Annotated[
        str, typer.Option(help="Triton model name (the uint8 tensor model).")
    ] = DEFAULTS.model,
    triton_url: Annotated[
        str, typer.Option("--triton-url", help="HOST:PORT for --protocol (default: settings).")
    ] = DEFAULTS.triton_url,
    triton_http: Annotated[str, typer.Option(
        "--triton-http", help="Triton's HTTP HOST:PORT for model metadata (default: settings; with a gRPC "
                              "--triton-url alone, the port below it).")] = DEFAULTS.triton_http,
    protocol: Annotated[str, typer.Option(help="grpc or http.")] = DEFAULTS.protocol,
    concurrency: Annotated[
        str, typer.Option(help="Closed-loop levels, comma separated.")
    ] = ",".join(map(str, DEFAULTS.concurrency)),
    rate: Annotated[
        Optional[float], typer.Option(help="Also run one open-loop level at this many requests/s.")
    ] = DEFAULTS.rate,
    duration: Annotated[float, typer.Option(help="Measured seconds per level.")] = DEFAULTS.duration_s,
    warmup: Annotated[float, typer.Option(help="Unmeasured warm-up seconds per level.")] = DEFAULTS.warmup_s,
    max_requests: Annotated[
        int, typer.Option(help="At most this many measured requests per level.")
    ] = DEFAULTS.max_requests,
    target_qps: Annotated[float, typer.Option(help="SLO: throughput target.")] = DEFAULTS.target_qps,
    target_p99_ms: Annotated[
        float, typer.Option(help="SLO: P99 latency target (ms).")
    ] = DEFAULTS.target_p99_ms,
    champion: Annotated[str, typer.Option(
        help="The production model the benchmarked candidate would replace: both answer the same labelled "
             "val images for the top-1 comparison of the promotion decision.")] = DEFAULTS.champion,
    max_top1_regression: Annotated[float, typer.Option(
        help="Promote only if the candidate's top-1 is at most this many points below the champion's.")
    ] = DEFAULTS.max_top1_regression,
    accuracy_images: Annotated[int, typer.Option(
        help="Labelled val images (from --shards) for the candidate/champion top-1 comparison.")
    ] = DEFAULTS.accuracy_images,
    shards: Annotated[
        Optional[str], typer.Option(help="Val shards (dir or s3://) for request images.")
    ] = DEFAULTS.shards,
    model_dir: Annotated[Optional[Path], typer.Option(
        help="Quantize output for the OpenVINO baseline (default: the IR Triton serves).")
    ] = DEFAULTS.model_dir,
    fp32_model: Annotated[Optional[Path], typer.Option(
        help="Train output for the PyTorch eager FP32 baseline (skipped when absent).")
    ] = DEFAULTS.fp32_model,
    baselines: Annotated[bool, typer.Option(help="Measure the in-process baselines.")] = DEFAULTS.baselines,
    metrics_url: Annotated[
        str, typer.Option(help="Triton metrics HOST:PORT (default: settings).")
    ] = DEFAULTS.metrics_url,
    json_path: JsonOption = None,
    report: Annotated[Optional[Path],
                      typer.Option(help="Write the HTML report (plots embedded) here.")] = None,
) -> None:
    """Load-test a Triton model (closed-loop sweep, optional open loop) with baselines and an SLO verdict."""
    from visionnode.components.benchmark.benchmark import (
        benchmark,  # imports numpy and tritonclient: only when the command runs
    )

    config = BenchmarkConfig(model=model, protocol=protocol, triton_url=triton_url, triton_http=triton_http,
                             metrics_url=metrics_url,
                             concurrency=parse_levels(concurrency), rate=rate, duration_s=duration,
                             warmup_s=warmup,
                             max_requests=max_requests, target_qps=target_qps, target_p99_ms=target_p99_ms,
                             champion=champion, max_top1_regression=max_top1_regression,
                             accuracy_images=accuracy_images, shards=shards, model_dir=model_dir,
                             fp32_model=fp32_model, baselines=baselines,
                             report_path=report)
    result = benchmark(config)
    summary = to_jsonable(result)
    for level in summary["levels"]:
        level.pop("latencies_ms", None)  # raw samples belong in the report's histogram, not the summary
    print_levels(result, err_console if json_to_stdout(json_path) else out_console)
    emit_result({k: v for k, v in summary.items() if k != "levels"}, json_path, "benchmark", summary=summary)


def print_levels(result, console: Console) -> None:
    from visionnode.components.benchmark.report import level_table

    table = Table(title=f"{result.model} over {result.protocol}", title_justify="left")
    head, rows = level_table(result)
    for name in head:
        table.add_column(name, justify="right")
    for i, cells in enumerate(rows):
        table.add_row(*cells, style="green" if i == result.best_level else None)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark_command)
