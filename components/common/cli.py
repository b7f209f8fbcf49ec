"""Glue every CLI command shares: user errors as one line, JSON summaries, a result table."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .errors import VisionNodeError
from .jsonio import to_jsonable, write_json

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)
out_console = Console()


def user_errors(fn: F) -> F:
    """Turn a VisionNodeError into `error: ...` on stderr and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VisionNodeError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit_result(result: Any, json_path: Path | None, title: str) -> None:
    """Print a result object as a two-column table and, when asked, write it as JSON."""
    data = to_jsonable(result)
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in _flatten(data):
        table.add_row(key, _format(value))
    out_console.print(table)
    if json_path is not None:
        write_json(json_path, data)
        err_console.print(f"summary written to {json_path}")


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in data.items():
            rows.extend(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return rows
    return [(prefix.rstrip("."), data)]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} items]"
    return str(value)

