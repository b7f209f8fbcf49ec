"""Progress bars with rate and ETA (rich), one style for every long-running step.

Bars are shown on rank 0 only (torchrun sets RANK) and can be silenced with VISIONNODE_PROGRESS=0;
in a non-interactive log they degrade to rich's plain refreshes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

console = Console(stderr=True)
PROBE_TIMEOUT_S = 10.0  # health probes: an endpoint that accepts connections but never answers is given up on


@contextmanager
def waiting_for(service: str, url: str) -> Iterator[None]:
    """A spinner on a terminal naming what is awaited and for how long (nothing in a pipe or a log)."""
    with console.status(f"waiting for {service} at {url} (gives up after {PROBE_TIMEOUT_S:.0f} s)"):
        yield


class RateColumn(ProgressColumn):
    """Items per second, e.g. `812.4 img/s`."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"-- {self.unit}/s",
                    style="progress.data.speed")


def progress_enabled() -> bool:
    return os.environ.get("VISIONNODE_PROGRESS", "1") != "0" and os.environ.get("RANK", "0") == "0"


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "img",
                 bytes_mode: bool = False) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; shows count (or bytes), rate and ETA while the block runs."""
    if bytes_mode:
        columns: list[ProgressColumn] = [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns = [MofNCompleteColumn(), RateColumn(unit)]
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), *columns, TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not progress_enabled(),
                   transient=False)
    with bar:
        task_id = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task_id, n)
