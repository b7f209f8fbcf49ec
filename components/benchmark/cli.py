"""`visionnode benchmark`: thin Typer adapter onto benchmark.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from visionnode.components.benchmark.config import BenchmarkConfig
from visionnode.components.common.adapters.cli import (
    JsonOption,
    emit_result,
    err_console,
    json_to_stdout,
    out_console,
    user_errors,
)
from visionnode.components.common.adapters.declared import build, with_setting_options
from visionnode.components.common.jsonio import to_jsonable


@user_errors
@with_setting_options(BenchmarkConfig)
def benchmark_command(
    settings: dict[str, Any],
    json_path: JsonOption = None,
    report: Annotated[Optional[Path],
                      typer.Option(help="Write the HTML report (plots embedded) here.")] = None,
) -> None:
    """Load-test a Triton model (closed-loop sweep, optional open loop) with baselines and an SLO verdict."""
    from visionnode.components.benchmark.benchmark import (
        benchmark,  # imports numpy and tritonclient: only when the command runs
    )

    result = benchmark(build(BenchmarkConfig, settings, report_path=report))
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
