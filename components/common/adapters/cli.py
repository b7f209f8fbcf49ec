"""Glue every CLI command shares: user errors as one line, JSON summaries, a result table."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer
import typer.rich_utils
from rich.console import Console
from rich.table import Table

from visionnode.components.common.errors import VisionNodeError
from visionnode.components.common.jsonio import to_jsonable, write_json

F = TypeVar("F", bound=Callable[..., Any])
# Rich draws 80 columns when not writing to a terminal, which cuts option names in `--help | less` and
# paths in tables; a pipe gets a page this wide unless COLUMNS (or typer's TERMINAL_WIDTH) says otherwise.
PIPE_WIDTH = 120
LIST_SHOWN = 8                         # list items a table cell shows before "... (N in all)"
LINK_SCHEMES = ("http://", "https://")  # values printed whole below a table, never wrapped


def pipe_width(stream: Any) -> int | None:
    """PIPE_WIDTH for a stream that is not a terminal and no width set by the user; None lets Rich decide."""
    if os.environ.get("COLUMNS") or os.environ.get("TERMINAL_WIDTH") or stream.isatty():
        return None
    return PIPE_WIDTH


typer.rich_utils.MAX_WIDTH = typer.rich_utils.MAX_WIDTH or pipe_width(sys.stdout)
err_console = Console(stderr=True, width=pipe_width(sys.stderr))
out_console = Console(width=pipe_width(sys.stdout))


def _writable_json_path(value: Optional[Path]) -> Optional[Path]:
    """Checked before the command does any work:
    a summary that cannot be written must not fail it at the end."""
    if value is None or str(value) == "-":
        return value
    try:
        if value.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(value))
        with tempfile.NamedTemporaryFile(dir=value.parent, prefix=f".{value.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] --json {value}: {exc.strerror} (pass a file in a writable, "
                          "existing "
                          "folder, or - for standard output)", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    return value


JsonOption = Annotated[Optional[Path], typer.Option(
    "--json", callback=_writable_json_path,
    help="Write the summary as JSON to this file (- for standard output, tables then go to stderr).")]


def user_errors(fn: F) -> F:
    """Turn a VisionNodeError into `error: ...` on stderr and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VisionNodeError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.filename is None:
                raise
            # A path the user gave that cannot be used: missing parent, wrong kind, no permission, disk full.
            path = _user_path(exc.filename)
            err_console.print(f"[bold red]error:[/] cannot use {path}: {exc.strerror} (check that the path "
                              "and "
                              "its parent exist, are what the option asks for, and are writable)",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _user_path(filename: str | bytes | int) -> str:
    """The path as the user wrote it, not our temporary name beside it (`.out.json.1a2b.partial`)."""
    path = Path(str(filename))
    name = path.name
    if name.endswith(".partial"):
        name = name[: -len(".partial")]
        if name.startswith("."):  # atomic_path's `.{name}.{random}.partial`
            name = name[1:].rsplit(".", 1)[0]
    return str(path.with_name(name))


def emit_result(result: Any, json_path: Path | None, title: str, summary: Any = None) -> None:
    """Print a result object as a two-column table and, when asked, write it as JSON."""
    data = to_jsonable(result)
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # long paths wrap instead of being cut with "…"
    rows = _flatten(data)
    links = [(key, value) for key, value in rows if isinstance(value, str) and value.startswith(LINK_SCHEMES)]
    for key, value in rows:
        if (key, value) not in links:
            table.add_row(key, human_value(value))
    console = err_console if json_to_stdout(json_path) else out_console
    console.print(table)
    for key, value in links:  # whole, on a line of their own, so they can be copied or clicked
        console.print(f"{key}: {value}", highlight=False, soft_wrap=True)
    write_summary(json_path, data if summary is None else summary)


def json_to_stdout(json_path: Path | None) -> bool:
    """`--json -`: the JSON summary is standard output (and the tables go to standard error)."""
    return json_path is not None and str(json_path) == "-"


def write_summary(json_path: Path | None, data: Any) -> None:
    """The `--json` summary: to the file (written atomically) or, for `-`, to standard output."""
    if json_path is None:
        return
    if json_to_stdout(json_path):
        sys.stdout.write(json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
        return
    write_json(json_path, data)
    err_console.print(f"summary written to {json_path}", highlight=False, soft_wrap=True)


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in data.items():
            rows.extend(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return rows
    return [(prefix.rstrip("."), data)]


def human_value(value: Any) -> str:
    """A table cell as people write it: no Python reprs (None, True, [...], {...})."""
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, list):
        if any(isinstance(item, (dict, list)) for item in value):
            return f"{len(value)} in the --json summary"
        shown = ", ".join(human_value(item) for item in value[:LIST_SHOWN])
        return shown if len(value) <= LIST_SHOWN else f"{shown}, ... ({len(value)} in all)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={human_value(v)}" for k, v in value.items())
    return str(value)

