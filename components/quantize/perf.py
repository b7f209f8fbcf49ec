"""Speed and footprint, side by side in one run: PyTorch eager FP32, OpenVINO FP32, OpenVINO INT8.

- latency: batch 1, synchronous, OpenVINO compiled with PERFORMANCE_HINT=LATENCY; median of repeated calls;
- throughput: batch 8; OpenVINO compiled with PERFORMANCE_HINT=THROUGHPUT and driven through an
  AsyncInferQueue with the compiled model's optimal number of requests (as a serving process would);
  PyTorch eager runs one batch at a time; median over rounds;
- every engine is limited to the same number of threads (`threads`, default 2);
- size: model.xml + model.bin on disk; RSS: peak resident memory (VmHWM) of a fresh process that only
  imports openvino, loads the INT8 IR and runs batches (rss_probe.py), so nothing of this process counts.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from visionnode.components.common.errors import DataError

PYTORCH_FP32 = "pytorch_fp32"
OPENVINO_FP32 = "openvino_fp32"
OPENVINO_INT8 = "openvino_int8"
ENGINES = (PYTORCH_FP32, OPENVINO_FP32, OPENVINO_INT8)


@dataclass
class EngineTiming:
    latency_b1_ms: float          # median
    throughput_ips: float         # median images/s at `PerfReport.batch`
    latency_samples: int
    throughput_samples: int


@dataclass
class PerfReport:
    threads: int
    batch: int
    input_size: int
    engines: dict[str, EngineTiming]
    int8_size_bytes: int
    int8_peak_rss_bytes: int
    int8_load_s: float
    speedup_vs_pytorch: float = field(init=False)        # INT8 OpenVINO / PyTorch eager FP32 throughput
    speedup_vs_openvino_fp32: float = field(init=False)  # INT8 OpenVINO / FP32 OpenVINO throughput

    def __post_init__(self) -> None:
        int8 = self.engines[OPENVINO_INT8].throughput_ips
        self.speedup_vs_pytorch = int8 / self.engines[PYTORCH_FP32].throughput_ips
        self.speedup_vs_openvino_fp32 = int8 / self.engines[OPENVINO_FP32].throughput_ips

    def metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {"int8_size_mb": self.int8_size_bytes / 1e6,
                                     "int8_peak_rss_mb": self.int8_peak_rss_bytes / 1e6,
                                     "int8_speedup_vs_pytorch_fp32": self.speedup_vs_pytorch,
                                     "int8_speedup_vs_openvino_fp32": self.speedup_vs_openvino_fp32}
        for name, timing in self.engines.items():
            metrics[f"{name}_latency_b1_ms"] = timing.latency_b1_ms
            metrics[f"{name}_throughput_b{self.batch}_ips"] = timing.throughput_ips
        return metrics


def compile_openvino(model, hint: str = "LATENCY", threads: int = 2, fp32_exact: bool = False):
    """Compile for the CPU; `fp32_exact` pins float math to f32 (the CPU plugin may otherwise pick bf16)."""
    import openvino as ov

    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint}
    if fp32_exact:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return ov.Core().compile_model(model if not isinstance(model, Path) else str(model), "CPU", config)


def openvino_logits(compiled) -> Callable[[np.ndarray], np.ndarray]:
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(images)})
        return request.get_output_tensor(0).data.copy()

    return run


def model_size_bytes(xml_path: Path) -> int:
    return xml_path.stat().st_size + xml_path.with_suffix(".bin").stat().st_size


def measure_performance(torch_module: torch.nn.Module, fp32_ov_model, int8_xml: Path, input_size: int,
                        threads: int = 2, batch: int = 8, seconds: float = 3.0) -> PerfReport:
    """Time the three engines on the same random uint8 images, then probe the INT8 IR's RSS."""
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, input_size, input_size, 3), dtype=np.uint8)
    many = rng.integers(0, 256, (batch, input_size, input_size, 3), dtype=np.uint8)
    engines = {PYTORCH_FP32: _time_pytorch(torch_module, one, many, threads, seconds)}
    for name, model, exact in ((OPENVINO_FP32, fp32_ov_model, True), (OPENVINO_INT8, int8_xml, False)):
        engines[name] = _time_openvino(model, one, many, threads, seconds, exact)
    rss = probe_peak_rss(int8_xml, input_size, batch, threads)
    return PerfReport(threads=threads, batch=batch, input_size=input_size, engines=engines,
                      int8_size_bytes=model_size_bytes(int8_xml), int8_peak_rss_bytes=rss["peak_rss_bytes"],
                      int8_load_s=rss["load_s"])


def probe_peak_rss(xml_path: Path, input_size: int, batch: int, threads: int) -> dict:
    command = [sys.executable, "-m", "visionnode.components.quantize.rss_probe", str(xml_path),
               "--size", str(input_size), "--batch", str(batch), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"the INT8 model {xml_path} failed to load in a fresh process ({tail})",
                        "re-run quantize; the IR files may be damaged")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_pytorch(module: torch.nn.Module, one: np.ndarray, many: np.ndarray, threads: int,
                  seconds: float) -> EngineTiming:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = module.eval()
        x1, xb = torch.from_numpy(one), torch.from_numpy(many)
        with torch.inference_mode():
            latency = _repeat(lambda: module(x1), seconds)
            per_batch = _repeat(lambda: module(xb), seconds)
    finally:
        torch.set_num_threads(previous)
    return EngineTiming(statistics.median(latency) * 1e3, len(many) / statistics.median(per_batch),
                        len(latency), len(per_batch))


def _latency_openvino(compiled, one: np.ndarray, seconds: float) -> list[float]:
    """Single-image latencies; the latency-mode model and its request are freed on return, before the
    throughput-mode model is compiled."""
    request = compiled.create_infer_request()
    return _repeat(lambda: request.infer({0: one}), seconds)


def _time_openvino(model, one: np.ndarray, many: np.ndarray, threads: int, seconds: float,
                   fp32_exact: bool) -> EngineTiming:
    import openvino as ov

    latency = _latency_openvino(compile_openvino(model, "LATENCY", threads, fp32_exact), one, seconds)

    throughput_model = compile_openvino(model, "THROUGHPUT", threads, fp32_exact)
    requests = max(1, int(throughput_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    queue = ov.AsyncInferQueue(throughput_model, requests)
    batches_per_round = 2 * requests

    def one_round() -> None:
        for _ in range(batches_per_round):
            queue.start_async({0: many})
        queue.wait_all()

    per_round = _repeat(one_round, seconds)
    images_per_round = batches_per_round * len(many)
    return EngineTiming(statistics.median(latency) * 1e3, images_per_round / statistics.median(per_round),
                        len(latency), len(per_round))


def _repeat(call: Callable[[], object], seconds: float, warmup: int = 2, min_runs: int = 3,
            max_runs: int = 500) -> list[float]:
    """Durations of repeated calls after warm-up: at least `min_runs`, then until `seconds` have passed."""
    for _ in range(warmup):
        call()
    durations: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(durations) < min_runs or (time.perf_counter() < deadline and len(durations) < max_runs):
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return durations


def throughput_figure(report: PerfReport):
    """A bar chart of throughput per engine, annotated with img/s and the ratio to PyTorch eager."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.engines)
    values = [report.engines[n].throughput_ips for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(names, values, color=["#888888", "#4477aa", "#ee6677"][: len(names)])
    base = report.engines[PYTORCH_FP32].throughput_ips
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:,.1f} img/s\n{value / base:.1f}x", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"images/s (batch {report.batch})")
    ax.set_title(f"Throughput, {report.input_size}px, {report.threads} threads")
    ax.set_ylim(0, max(values) * 1.3)
    fig.tight_layout()
    return fig
