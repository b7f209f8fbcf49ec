"""How many threads torch computes with: the CPUs this process may use, shared by the processes of its node.

FFCV sets torch's thread count as a side effect: importing `ffcv.loader` sets it to 1 and every `Loader`
iteration to the loader's decoder count (ffcv/pipeline/compiler.py `Compiler.set_num_threads` also calls
`torch.set_num_threads`). Left alone, CPU training computes on as many threads as there are decoders, one on
the demo: half of a 2-core machine idles. The project sets it instead, after FFCV has.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")   # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (a pod's limit)."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(CGROUP_CPU_MAX)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(cpu_max: Path) -> float | None:
    """The quota in CPUs from a cgroup v2 `cpu.max` file; None when there is none (no file, or `max`)."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def compute_threads() -> int:
    """Threads for torch's intra-op work in this process: the usable CPUs divided among the processes torchrun
    started on this node (`LOCAL_WORLD_SIZE`)."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, usable_cpus() // local_processes)


def keep_torch_threads() -> int:
    """Set torch's thread count to `compute_threads()` (after FFCV changed it); returns the count."""
    import torch

    threads = compute_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
