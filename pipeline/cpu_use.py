"""How many CPU cores a local run's step kept busy: the CPU time of the processes it ran over its wall time.

kfp.local's SubprocessRunner runs each task as a child process of this one and waits for it before it logs
the task's end, so a step's CPU time is the growth of this process's waited-for-children time (`cutime` and
`cstime` in /proc/self/stat; they take in every descendant the task itself waited for). The embedded
services are children too, but they keep running and are never waited for during a step, so their work is
not counted. Tasks in containers (the docker runner) are the engine's children, not ours: nothing is
measured there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UTIME, STIME, CUTIME, CSTIME = 14, 15, 16, 17     # proc(5): fields of /proc/<pid>/stat, counted from 1


def stat_cpu_seconds(fields: tuple[int, int], stat: Path = Path("/proc/self/stat")) -> float:
    """The sum of two clock-tick fields of a /proc/<pid>/stat file, in seconds."""
    # The command name (field 2) is in parentheses and may hold spaces: count the fields after its ")".
    after_name = stat.read_text().rsplit(")", 1)[1].split()
    return sum(int(after_name[index - 3]) for index in fields) / CLOCK_TICKS


def waited_children_cpu_seconds() -> float:
    """User + system CPU seconds of the children this process has waited for (and of their waited-for
    descendants)."""
    return stat_cpu_seconds((CUTIME, CSTIME))


@dataclass(frozen=True)
class CpuMark:
    wall: float
    cpu: float

    @classmethod
    def now(cls) -> CpuMark:
        return cls(time.perf_counter(), waited_children_cpu_seconds())

    def cores_since(self) -> float:
        """Average cores busy between this mark and now (0.0 over no time)."""
        later = CpuMark.now()
        wall = later.wall - self.wall
        return (later.cpu - self.cpu) / wall if wall > 0 else 0.0
