"""What a local run shows while kfp.local works: one line per step as it starts and ends, the rest in files.

kfp.local prints everything (each task's executor input, the component's own output, its outputs) with
`print` and the root logger on standard output. While the DAG runs, `StepLog` stands in for `sys.stdout`:
it writes each step's lines to `<log_dir>/<step>.log` (kfp.local's own framing to `pipeline.log`) and
reports a step's start, end, retries and cache hits, recognised by kfp.local's messages, to a callback.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([\w-]+)'")
FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
RETRYING = re.compile(r"Task '?([\w-]+)'? failed \(attempt (\d+)/(\d+)\)")
# kfp/local/orchestrator/task_executor.py logs a served-from-cache task this way
CACHE_HIT = re.compile(r"Task '?([\w-]+)'? cache hit \(key=([0-9a-f]+)\)")
PIPELINE_LOG = "pipeline"
# The last line of a task's traceback when it stopped on a user-facing error (VisionNodeError and its kin):
# `<module>.<Name>Error: <problem> (<hint>)`, the one line a CLI command prints.
USER_ERROR = re.compile(r"^\s*visionnode\.[\w.]+Error: (.+)$")
TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class StepEvent:
    step: str            # the phase name (kfp.local's task name without `-op`)
    kind: str            # "started", "finished", "retrying" or "cached"
    status: str = ""     # SUCCESS/FAILURE ("finished"); "attempt N/M" ("retrying"); the key ("cached")
    log: Path | None = None


def step_name(task: str) -> str:
    return task.removesuffix("-op")


def user_error(log: Path) -> str | None:
    """The user-facing error a failed step's log ends with (its problem and what to do), if it has one."""
    if not log.is_file():
        return None
    with log.open("rb") as stream:
        stream.seek(max(0, log.stat().st_size - TAIL_BYTES))
        tail = stream.read().decode(errors="replace")
    found = [match.group(1) for line in tail.splitlines() if (match := USER_ERROR.match(line))]
    return found[-1] if found else None


class StepLog(io.TextIOBase):
    """A text stream that files kfp.local's output per step and reports step events to `on_event`."""

    def __init__(self, log_dir: Path, on_event: Callable[[StepEvent], None]) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.on_event = on_event
        self._pending = ""
        self._files: dict[str, TextIO] = {}
        self._current = PIPELINE_LOG
        log_dir.mkdir(parents=True, exist_ok=True)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._line(ANSI_ESCAPE.sub("", line))
        return len(text)

    def flush(self) -> None:
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        if self._pending:
            self._line(ANSI_ESCAPE.sub("", self._pending))
            self._pending = ""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        super().close()

    def log_path(self, step: str) -> Path:
        return self.log_dir / f"{step}.log"

    def _line(self, line: str) -> None:
        if started := STARTED.search(line):
            self._current = step_name(started[1])
            self.on_event(StepEvent(self._current, "started", log=self.log_path(self._current)))
        self._file(self._current).write(line + "\n")
        if finished := FINISHED.search(line):
            step = step_name(finished[1])
            self._file(step).flush()
            self.on_event(StepEvent(step, "finished", finished[2], self.log_path(step)))
            self._current = PIPELINE_LOG
        elif cached := CACHE_HIT.search(line):
            step = step_name(cached[1])
            self._file(PIPELINE_LOG).flush()
            self.on_event(StepEvent(step, "cached", cached[2], self.log_path(PIPELINE_LOG)))
        elif retrying := RETRYING.search(line):
            step = step_name(retrying[1])
            self.on_event(StepEvent(step, "retrying", f"attempt {retrying[2]}/{retrying[3]}",
                                    self.log_path(step)))

    def _file(self, step: str) -> TextIO:
        if step not in self._files:
            self._files[step] = self.log_path(step).open("a", encoding="utf-8")
        return self._files[step]
