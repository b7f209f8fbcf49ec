"""`visionnode benchmark`: thin Typer adapter onto benchmark.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rich.console import Console
from rich.table import Table

from ..common.cli import JsonOption, emit_result, err_console, json_to_stdout, out_console, user_errors
from ..common.jsonio import to_jsonable
from .benchmark import BenchmarkConfig, benchmark, parse_levels


@user_errors
def benchmark_command(
    model: Annotated[str, typer.Option(help="Triton model name (the uint8 tensor model).")] = "resnet152_int8",
    triton_url: Annotated[str, typer.Option("--triton-url", help="HOST:PORT for --protocol (default: settings).")] = "",
    triton_http: Annotated[str, typer.Option(
        "--triton-http", help="Triton's HTTP HOST:PORT for model metadata (default: settings; with a gRPC "
                              "--triton-url alone, the port below it).")] = "",
    protocol: Annotated[str, typer.Option(help="grpc or http.")] = "grpc",
    concurrency: Annotated[str, typer.Option(help="Closed-loop levels, comma separated.")] = "1,2,4,8,16",
    rate: Annotated[Optional[float], typer.Option(help="Also run one open-loop level at this many requests/s.")] = None,
    duration: Annotated[float, typer.Option(help="Measured seconds per level.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Unmeasured warm-up seconds per level.")] = 2.0,
    max_requests: Annotated[int, typer.Option(help="At most this many measured requests per level.")] = 20_000,
    target_qps: Annotated[float, typer.Option(help="SLO: throughput target.")] = 100.0,
    target_p99_ms: Annotated[float, typer.Option(help="SLO: P99 latency target (ms).")] = 150.0,
    shards: Annotated[Optional[str], typer.Option(help="Val shards (dir or s3://) for request images.")] = None,
    model_dir: Annotated[Optional[Path], typer.Option(
        help="Quantize output for the OpenVINO baseline (default: the IR Triton serves).")] = None,
    fp32_model: Annotated[Optional[Path], typer.Option(
        help="Train output for the PyTorch eager FP32 baseline (skipped when absent).")] = None,
    baselines: Annotated[bool, typer.Option(help="Measure the in-process baselines.")] = True,
    metrics_url: Annotated[str, typer.Option(help="Triton metrics HOST:PORT (default: settings).")] = "",
    json_path: JsonOption = None,
    report: Annotated[Optional[Path], typer.Option(help="Write the HTML report (plots embedded) here.")] = None,
) -> None:
    """Load-test a Triton model (closed-loop sweep, optional open loop) with baselines and an SLO verdict."""
    config = BenchmarkConfig(model=model, protocol=protocol, triton_url=triton_url, triton_http=triton_http,
                             metrics_url=metrics_url,
                             concurrency=parse_levels(concurrency), rate=rate, duration_s=duration, warmup_s=warmup,
                             max_requests=max_requests, target_qps=target_qps, target_p99_ms=target_p99_ms,
                             shards=shards, model_dir=model_dir, fp32_model=fp32_model, baselines=baselines,
                             report_path=report)
    result = benchmark(config)
    summary = to_jsonable(result)
    for level in summary["levels"]:
        level.pop("latencies_ms", None)  # raw samples belong in the report's histogram, not the summary
    print_levels(result, err_console if json_to_stdout(json_path) else out_console)
    emit_result({k: v for k, v in summary.items() if k != "levels"}, json_path, "benchmark", summary=summary)


def print_levels(result, console: Console) -> None:
    table = Table(title=f"{result.model} over {result.protocol}", title_justify="left")
    for head in ("mode", "conc.", "rate", "ok", "errors", "QPS", "p50 ms", "p95 ms", "p99 ms", "max ms", "batch",
                 "RSS MB"):
        table.add_column(head, justify="right")
    for i, s in enumerate(result.levels):
        cells = [s.mode, str(s.concurrency), _num(s.target_rate, 0), str(s.requests), str(s.errors), _num(s.qps),
                 _num(s.p50_ms), _num(s.p95_ms), _num(s.p99_ms), _num(s.max_ms), _num(s.mean_batch, 2),
                 _num(s.triton_rss_mb, 0)]
        table.add_row(*cells, style="green" if i == result.best_level else None)
    console.print(table)


def _num(value, digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark_command)
