"""Load generator on tritonclient's asyncio clients (gRPC and HTTP): closed-loop and open-loop.

- closed loop: `concurrency` workers, each sends its next request as soon as the previous one answered;
- open loop: requests start on a fixed schedule (`rate` per second) whether or not earlier ones answered;
  latency counts from the scheduled start, so a slow server cannot hide queueing (no coordinated
  omission); a bounded number may be in flight, the rest count as `client_backlog` errors.

Each level runs `warmup_s` first (not measured), then measures for `duration_s` or `max_requests`,
whichever comes first. Every request carries one real image (batch 1, as online clients send).
Triton's metrics endpoint gives the server-side view of the same window: mean batch size the dynamic
batcher formed (Δnv_inference_count / Δnv_inference_exec_count) and queue/compute time per request.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from visionnode.components.benchmark.config import PROTOCOLS
from visionnode.components.common.errors import ConfigError, ServiceError, one_line

_METRIC_LINE = re.compile(r'^(nv_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$')
_QUANTILE_LABEL = re.compile(r'quantile="([0-9.]+)"')


@dataclass
class Target:
    url: str                 # host:port for the chosen protocol
    model: str
    protocol: str
    input_name: str
    output_name: str
    request_timeout_s: float = 10.0


@dataclass
class LevelStats:
    mode: str                       # "closed" or "open"
    concurrency: int                # closed: workers; open: most requests in flight
    target_rate: float | None       # open loop only
    requests: int                   # answered without error in the measured window
    errors: int
    error_kinds: dict[str, int]
    duration_s: float
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    mean_batch: float | None = None            # server side, from Triton's metrics
    server_queue_ms: float | None = None       # mean time a request waited in Triton's queue
    server_compute_ms: float | None = None     # mean compute time per executed batch
    triton_rss_mb: float | None = None         # peak during the level (tritonserver + python stubs)
    latencies_ms: list[float] = field(default_factory=list, repr=False)


# ---------------------------------------------------------------- clients
class AsyncTritonClient:
    """One asyncio client and pre-built request inputs (one per pool image), for either protocol."""

    def __init__(self, target: Target, images: np.ndarray, max_connections: int = 64) -> None:
        if target.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol '{target.protocol}'", "use grpc or http")
        self.target = target
        if target.protocol == "grpc":
            import tritonclient.grpc.aio as client_module
            self.client = client_module.InferenceServerClient(target.url)
        else:
            import tritonclient.http.aio as client_module
            self.client = client_module.InferenceServerClient(target.url, conn_limit=max_connections,
                                                              conn_timeout=target.request_timeout_s)
        self.module = client_module
        self.inputs = [self._tensor(image[None]) for image in images]
        self.outputs = [client_module.InferRequestedOutput(target.output_name)]

    def _tensor(self, array: np.ndarray):
        tensor = self.module.InferInput(self.target.input_name, list(array.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        return tensor

    async def infer(self, index: int) -> None:
        request = self.client.infer(self.target.model, [self.inputs[index % len(self.inputs)]],
                                    outputs=self.outputs)
        await asyncio.wait_for(request, self.target.request_timeout_s)

    async def check_ready(self) -> None:
        wait_s = self.target.request_timeout_s
        try:
            ready = await asyncio.wait_for(self.client.is_model_ready(self.target.model), wait_s)
        except Exception as exc:  # connection refused / unavailable / timeout surface as different types
            raise ServiceError(f"Triton at {self.target.url} ({self.target.protocol}) is not reachable or "
                               "did not "
                               f"answer within {wait_s:g} s ({_error_kind(exc)})",
                               "start it with `visionnode "
                               "stack up` or pass --triton-url HOST:PORT") from None
        if not ready:
            raise ServiceError(f"model '{self.target.model}' is not ready on Triton at {self.target.url}",
                               "deploy it first with `visionnode deploy`")

    async def close(self) -> None:
        await self.client.close()


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "client_timeout"
    return one_line(exc, limit=120)


# ---------------------------------------------------------------- the two loops
@dataclass
class _Window:
    measure_from: float
    deadline: float
    max_requests: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    last_end: float = 0.0
    started: int = 0

    def open_for(self, now: float) -> bool:
        return now < self.deadline and self.started < self.max_requests

    def record(self, began: float, ended: float, error: BaseException | None) -> None:
        if began < self.measure_from:
            return  # warm-up
        self.last_end = max(self.last_end, ended)
        if error is None:
            self.latencies_ms.append((ended - began) * 1e3)
        else:
            self.errors[_error_kind(error)] += 1


async def _timed(call: Callable[[int], Awaitable[None]], index: int, began: float, window: _Window) -> None:
    error = None
    try:
        await call(index)
    except Exception as exc:  # every failure is counted by kind, never raised
        error = exc
    window.record(began, time.perf_counter(), error)


async def closed_loop(call: Callable[[int], Awaitable[None]], concurrency: int, duration_s: float,
                      warmup_s: float, max_requests: int) -> _Window:
    start = time.perf_counter()
    window = _Window(start + warmup_s, start + warmup_s + duration_s, max_requests)
    counter = iter(range(10**12))

    async def worker() -> None:
        while True:
            now = time.perf_counter()
            if not window.open_for(now):
                return
            if now >= window.measure_from:
                window.started += 1
            await _timed(call, next(counter), now, window)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return window


async def open_loop(call: Callable[[int], Awaitable[None]], rate: float, duration_s: float, warmup_s: float,
                    max_requests: int, max_in_flight: int) -> _Window:
    start = time.perf_counter()
    window = _Window(start + warmup_s, start + warmup_s + duration_s, max_requests)
    tasks: set[asyncio.Task] = set()
    index = 0
    while True:
        scheduled = start + index / rate
        if not window.open_for(scheduled):
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if scheduled >= window.measure_from:
            window.started += 1
        if len(tasks) >= max_in_flight:
            window.record(scheduled, time.perf_counter(), _Backlog())
        else:
            task = asyncio.create_task(_timed(call, index, scheduled, window))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        index += 1
    if tasks:
        await asyncio.gather(*tasks)
    return window


class _Backlog(Exception):
    """The open-loop schedule found `max_in_flight` requests still unanswered."""


def _stats(window: _Window, mode: str, concurrency: int, rate: float | None) -> LevelStats:
    latencies = np.array(window.latencies_ms) if window.latencies_ms else np.array([np.nan])
    errors = {("client_backlog" if k.startswith("_Backlog") else k): v for k, v in window.errors.items()}
    duration = max(window.last_end - window.measure_from, 1e-9)
    ok = len(window.latencies_ms)
    pct = np.nanpercentile(latencies, [50, 95, 99]) if ok else [float("nan")] * 3
    return LevelStats(mode=mode, concurrency=concurrency, target_rate=rate, requests=ok,
                      errors=sum(errors.values()), error_kinds=errors, duration_s=round(duration, 3),
                      qps=ok / duration, p50_ms=float(pct[0]), p95_ms=float(pct[1]), p99_ms=float(pct[2]),
                      max_ms=float(np.nanmax(latencies)), mean_ms=float(np.nanmean(latencies)),
                      latencies_ms=list(window.latencies_ms))


# ---------------------------------------------------------------- Triton's metrics and memory
def scrape_metrics(metrics_url: str | None, model: str) -> dict[str, float]:
    """Triton's counters for `model` (summed over versions); {} when there is no metrics endpoint.
    A summary's quantiles are keyed NAME@QUANTILE (e.g. nv_inference_request_summary_us@0.99)."""
    if not metrics_url:
        return {}
    url = metrics_url if metrics_url.startswith("http") else f"http://{metrics_url}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a Triton metrics URL)
            text = response.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line.strip())
        if match and f'model="{model}"' in match.group(2):
            quantile = _QUANTILE_LABEL.search(match.group(2))
            name = f"{match.group(1)}@{quantile.group(1)}" if quantile else match.group(1)
            totals[name] = totals.get(name, 0.0) + float(match.group(3))
    return totals


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    executions, inferences = delta("nv_inference_exec_count"), delta("nv_inference_count")
    success = delta("nv_inference_request_success")
    return {"mean_batch": inferences / executions if executions > 0 else None,
            "server_queue_ms": delta("nv_inference_queue_duration_us") / success / 1e3 if success > 0
            else None,
            "server_compute_ms": (delta("nv_inference_compute_infer_duration_us") / success / 1e3
                                  if success > 0 else None)}


class RssSampler:
    """Peak resident memory of a process and its children (Triton + python-backend stubs), sampled."""

    def __init__(self, pid: int | None, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        import psutil

        try:
            main = psutil.Process(self.pid)
            family = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in family:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssSampler":
        if self.pid:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    @property
    def peak_mb(self) -> float | None:
        return self.peak_bytes / 1e6 if self.pid and self.peak_bytes else None


# ---------------------------------------------------------------- one level, end to end
@dataclass
class LevelPlan:
    mode: str                 # "closed" or "open"
    concurrency: int          # closed: workers; open: most in flight
    rate: float | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    max_requests: int = 100_000


async def _run_level_async(target: Target, images: np.ndarray, plan: LevelPlan, metrics_url: str | None,
                           triton_pid: int | None) -> LevelStats:
    client = AsyncTritonClient(target, images, max_connections=max(plan.concurrency, 8))
    try:
        await client.check_ready()
        loop = asyncio.get_running_loop()
        with RssSampler(triton_pid) as rss:
            before: dict[str, float] = {}
            if plan.mode == "closed":
                warm = asyncio.ensure_future(closed_loop(client.infer, plan.concurrency, plan.duration_s,
                                                         plan.warmup_s, plan.max_requests))
            else:
                if not plan.rate or plan.rate <= 0:
                    raise ConfigError(f"open-loop rate {plan.rate} must be positive")
                warm = asyncio.ensure_future(open_loop(client.infer, plan.rate, plan.duration_s,
                                                       plan.warmup_s,
                                                       plan.max_requests, plan.concurrency))
            await asyncio.sleep(plan.warmup_s)
            before = await loop.run_in_executor(None, scrape_metrics, metrics_url, target.model)
            window = await warm
            after = await loop.run_in_executor(None, scrape_metrics, metrics_url, target.model)
    finally:
        await client.close()
    stats = _stats(window, plan.mode, plan.concurrency, plan.rate)
    server = server_side(before, after) if before and after else {}
    stats.mean_batch = server.get("mean_batch")
    stats.server_queue_ms = server.get("server_queue_ms")
    stats.server_compute_ms = server.get("server_compute_ms")
    stats.triton_rss_mb = rss.peak_mb
    return stats


def run_level(target: Target, images: np.ndarray, plan: LevelPlan, metrics_url: str | None = None,
              triton_pid: int | None = None) -> LevelStats:
    """Run one load level in a fresh event loop and summarise it."""
    return asyncio.run(_run_level_async(target, images, plan, metrics_url, triton_pid))
