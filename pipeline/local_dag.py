"""A pipeline run with kfp.local, with KFP's own task cache and one line per step as it starts, ends or is
served from cache.

The cache is kfp.local's (kfp/local/cache.py, `kfp.local.init(enable_caching=True, cache_root=...)`). Its
key is what a KFP cluster's is made of (backend/src/v2/driver/cache.go): the component, its image and
command, and the task's inputs, where an upstream artifact counts by its identity (here its URI and
metadata; in a cluster its MLMD artifact), so a step whose inputs came from cache is itself a hit. Tasks
compiled with caching off (fingerprint, deploy, benchmark) always run. A cluster's image tag stands for the
code; here the code is the working tree, so every cache entry lives under a namespace named by a digest of
the installed package's source (and, for the Docker runner, the images' ids): any code change starts an
empty cache rather than reuse a step the old code made. A failed step writes no entry, so a re-run after a
failure reuses every step before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionnode.pipeline.cpu_use import CpuMark
from visionnode.pipeline.step_log import CACHE_HIT, StepEvent, StepLog

LOG_DIR_FILE = ".visionnode-logs"      # in a run dir: where that run's step logs are


@dataclass
class DagRun:
    run_dir: Path | None
    log_dir: Path
    cached: dict[str, Path] = field(default_factory=dict)   # step -> the task dir of the run that made it
    task_dirs: dict[str, Path] = field(default_factory=dict)  # step -> its outputs (this run's or cached)
    cpu_cores: dict[str, float] = field(default_factory=dict)  # step -> average cores busy while it ran


def source_digest(extra: Iterable[str] = ()) -> str:
    """12 hex digits of sha256 over the visionnode package's source files (and `extra`, e.g. image ids)."""
    import visionnode.components
    import visionnode.pipeline

    return tree_digest([Path(next(iter(p.__path__))) for p in (visionnode.components, visionnode.pipeline)],
                       extra)


def tree_digest(roots: Iterable[Path], extra: Iterable[str] = ()) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".tmpl") and p.is_file()):
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:12]


def run_dag(pipeline: Callable[..., Any], params: dict[str, Any], steps: Sequence[str], pipeline_root: Path,
            runner: Any, on_step: Callable[[str], None], cache_root: Path | None,
            key_figure: Callable[[str, dict[str, Any]], str] = lambda _step, _metrics: "") -> DagRun:
    """Run `pipeline(**params)` with kfp.local; its output goes to one log file per step, one line per step
    to `on_step`. `cache_root` None runs every step."""
    from kfp import local

    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    # Beside the pipeline root, not in it: a new directory in the root is how the run directory is found.
    log_dir = pipeline_root.parent / f"{pipeline_root.name}-logs" / time.strftime("%Y%m%d-%H%M%S")
    # Expected here, so not worth a warning per task: kfp.local ignores resources/accelerators/display names.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=False,
               enable_caching=cache_root is not None, cache_root=str(cache_root) if cache_root else None)
    run = DagRun(None, log_dir)

    def current_run_dir() -> Path | None:
        if run.run_dir is None:
            new_dirs = sorted(set(pipeline_root.iterdir()) - before)
            if new_dirs:
                run.run_dir = new_dirs[-1]
                (run.run_dir / LOG_DIR_FILE).write_text(str(log_dir))
        return run.run_dir

    # The subprocess runner's tasks are this process's children, whose CPU time /proc/self/stat counts
    reporter = StepReporter(current_run_dir, run, cache_root, on_step, key_figure,
                            measure_cpu=isinstance(runner, local.SubprocessRunner))
    with contextlib.closing(StepLog(log_dir, reporter)) as step_log, contextlib.redirect_stdout(step_log), \
            _cache_hits_to(step_log):
        pipeline(**params)
    current_run_dir()
    run.task_dirs = {step: path for step in steps if (path := run.cached.get(step) or
                                                      (run.run_dir and task_dir(run.run_dir, step)))}
    return run


@contextlib.contextmanager
def _cache_hits_to(step_log: StepLog):
    """kfp.local announces a cache hit on the root logger at INFO, outside its own logging context (where the
    root logger's level is WARNING): let exactly those lines through to the step log."""
    handler = logging.StreamHandler(step_log)
    handler.addFilter(lambda record: bool(CACHE_HIT.search(record.getMessage())))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def task_dir(run_dir: Path, step: str) -> Path | None:
    """kfp.local names task dirs after the component (`validate-op`) or the display name."""
    for candidate in (f"{step}-op", step):
        if (run_dir / candidate).is_dir():
            return run_dir / candidate
    return None


def cached_from(cache_root: Path, key_prefix: str) -> Path | None:
    """The task dir whose outputs a cache entry holds (its artifacts' URIs point into it)."""
    entries = sorted(cache_root.glob(f"{key_prefix}*.json"))
    if len(entries) != 1:
        return None
    outputs = json.loads(entries[0].read_text())
    uris = [v["uri"] for v in outputs.values() if isinstance(v, dict) and v.get("uri")]
    return Path(uris[0]).parent if uris else None


# Besides `metrics`, the output artifacts whose metadata a step's summary reads.
EXTRA_METADATA = ("model", "gate_report", "endpoint")


def step_metrics(task_dir: Path) -> dict[str, Any]:
    """The metadata of the `metrics` output artifact and of EXTRA_METADATA's, from executor_output.json."""
    output = task_dir / "executor_output.json"
    if not output.is_file():
        return {}
    artifacts = json.loads(output.read_text()).get("artifacts", {})
    metrics = dict(artifacts.get("metrics", {}).get("artifacts", [{}])[0].get("metadata", {}))
    for name in EXTRA_METADATA:
        if name in artifacts:
            metrics.update(artifacts[name]["artifacts"][0].get("metadata", {}))
    return metrics


class StepReporter:
    """Turns step events into one line each: `train  done   212 s  top-1 % 27.1  cores 1.93  log: ...`, or
    `shard  cached  from visionnode-152-2026-...  images 600  log: <that run's log>`."""

    def __init__(self, run_dir: Callable[[], Path | None], run: DagRun, cache_root: Path | None,
                 on_step: Callable[[str], None], key_figure: Callable[[str, dict[str, Any]], str],
                 measure_cpu: bool = False) -> None:
        self.run_dir = run_dir
        self.run = run
        self.cache_root = cache_root
        self.on_step = on_step
        self.key_figure = key_figure
        self.measure_cpu = measure_cpu
        self.started: dict[str, CpuMark] = {}

    def __call__(self, event: StepEvent) -> None:
        if event.kind == "cached":
            self._cached(event)
            return
        if event.kind == "started":
            self.started[event.step] = CpuMark.now()
            self.on_step(f"{event.step:<11} started")
            return
        mark = self.started.get(event.step, CpuMark.now())
        seconds = time.perf_counter() - mark.wall
        if event.kind == "retrying":
            self.on_step(f"{event.step:<11} failed  {seconds:5.0f} s  retrying ({event.status})  log: "
                         f"{event.log}")
            return
        word = "done" if event.status == "SUCCESS" else "FAILED"
        run_dir = self.run_dir()
        made = task_dir(run_dir, event.step) if run_dir else None
        figure = self.key_figure(event.step, step_metrics(made)) if made else ""
        if self.measure_cpu:
            self.run.cpu_cores[event.step] = round(mark.cores_since(), 2)
            figure = f"{figure}  cores {self.run.cpu_cores[event.step]:.2f}".lstrip()
        self.on_step(f"{event.step:<11} {word:<6} {seconds:5.0f} s  {figure}  log: {event.log}")

    def _cached(self, event: StepEvent) -> None:
        self.run_dir()
        source = cached_from(self.cache_root, event.status) if self.cache_root else None
        if source is None:
            self.on_step(f"{event.step:<11} cached  (cache entry {event.status})")
            return
        self.run.cached[event.step] = source
        log_file = source.parent / LOG_DIR_FILE
        log = Path(log_file.read_text()) / f"{event.step}.log" if log_file.is_file() else "not recorded"
        figure = self.key_figure(event.step, step_metrics(source))
        self.on_step(f"{event.step:<11} cached  from {source.parent.name}  {figure}  log: {log}")
