"""A local run's per-step CPU figure counts the CPU time of the processes a step ran, and nothing else.

CPU seconds, not wall time, are asserted: they do not depend on how busy the machine is."""

from __future__ import annotations

import subprocess
import sys

from visionnode.pipeline.cpu_use import CLOCK_TICKS, CpuMark, waited_children_cpu_seconds

# Burns `seconds` of its own CPU time, in the process and in a grandchild it waits for.
BURN = """
import os, sys, time
seconds = float(sys.argv[1])
if os.fork() == 0:
    while time.process_time() < seconds: pass
    os._exit(0)
while time.process_time() < seconds: pass
os.wait()
"""


def test_a_waited_for_child_and_its_own_children_are_counted() -> None:
    before = waited_children_cpu_seconds()
    subprocess.run([sys.executable, "-c", BURN, "0.6"], check=True)
    counted = waited_children_cpu_seconds() - before
    # two processes x 0.6 s, plus the interpreters' start; /proc truncates each process's user and system
    # time to whole clock ticks, so the sum may fall short of 1.2 s by up to 4 ticks
    truncation = 4 / CLOCK_TICKS
    assert 1.2 - truncation <= counted < 1.2 + 0.8, counted


def test_a_process_still_running_is_not_counted() -> None:
    """The embedded services are children that run on through every step: their work is not a step's."""
    service = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        mark = CpuMark.now()
        subprocess.run([sys.executable, "-c", "import time; time.sleep(1.0)"], check=True)
        assert mark.cores_since() < 0.2     # the busy service ran all along, the step only slept
    finally:
        service.kill()
        service.wait()
