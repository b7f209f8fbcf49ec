"""Benchmark a served model: a load sweep against Triton plus in-process baselines on the same images.

1. the request pool: real images from the val shards (`--shards`, fetched and verified by transfer), else
   seeded random images (said in the result);
2. baselines, measured first while Triton idles: raw OpenVINO INT8 throughput in this process on the very
   IR Triton serves (the ceiling: no network, no serialisation, no queue), and PyTorch eager FP32 when a
   train output is given;
3. closed-loop concurrency sweep (and an open-loop level at `--rate`), each level warmed up, then
   bounded in time and requests; server-side batch size from Triton's metrics; Triton's RSS;
4. verdict: the best level is the one with the highest QPS whose P99 meets the target without errors;
   the SLO is met when that level also reaches the target QPS. The verdict is reported, never raised;
5. champion/challenger: the top-1 of the benchmarked model and of the champion it would replace, on the same
   labelled val images through Triton, and the promotion decision (decision.py) the pipeline acts on.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionnode.components.benchmark.accuracy import compare_top1
from visionnode.components.benchmark.config import BenchmarkConfig, Slo
from visionnode.components.benchmark.decision import decide
from visionnode.components.benchmark.loadgen import LevelPlan, LevelStats, Target, run_level
from visionnode.components.benchmark.result import Baselines, BenchmarkResult
from visionnode.components.common.artifacts import InferenceMetadata
from visionnode.components.common.data.samples import SampleImages
from visionnode.components.common.errors import ConfigError, ServiceError, one_line
from visionnode.components.common.progress import console
from visionnode.components.common.settings import resolve_endpoints


# ---------------------------------------------------------------- where things are
def triton_pid(http_or_grpc_url: str) -> int | None:
    """The PID of the embedded Triton serving at that address (None for a remote/external server)."""
    endpoints = resolve_endpoints()
    serves_there = http_or_grpc_url in (endpoints.triton_http, endpoints.triton_grpc)
    return endpoints.triton_pid if serves_there else None


def served_model_dir(model: str, http_url: str, dest: Path) -> Path:
    """The IR Triton serves for `model` (its ready version), copied from Triton's model repository."""
    from visionnode.components.common.serving.triton import (
        parse_repository,
        ready_version,
        triton_http_client,
    )
    from visionnode.components.common.storage.s3 import s3_client

    repository = resolve_endpoints().triton_repository
    if not repository:
        raise ConfigError("Triton's model repository is not known, so the OpenVINO baseline has no IR",
                          "pass --model-dir (the quantize output) or --no-baselines")
    version = ready_version(triton_http_client(http_url), model)
    if version is None:
        raise ServiceError(f"model '{model}' is not loaded on Triton at {http_url}", "deploy it first")
    target = parse_repository(repository)
    if target.local_dir is not None:
        return target.local_dir / model / str(version)
    assert target.location is not None
    client = s3_client(target.s3)
    base = target.location.child(model).child(str(version))
    for name in ("model.xml", "model.bin", "model.json"):
        client.download_file(base.bucket, base.child(name).key, str(dest / name))
    return dest


# ---------------------------------------------------------------- baselines
def openvino_throughput(xml: Path, images: np.ndarray, batch: int, seconds: float) -> float:
    """Images/s of the IR in this process: THROUGHPUT hint, AsyncInferQueue with the optimal number of
    requests, every core; the median of several rounds."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    parallel = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    queue = ov.AsyncInferQueue(compiled, parallel)
    batches = [np.ascontiguousarray(images[i:i + batch]) for i in range(0, len(images) - batch + 1, batch)]
    batches = batches or [np.ascontiguousarray(images[:batch])]

    def one_round() -> int:
        for b in batches:
            queue.start_async({0: b})
        queue.wait_all()
        return sum(len(b) for b in batches)

    one_round()  # warm-up
    return _median_rate(one_round, seconds)


def pytorch_throughput(fp32_model: Path, images: np.ndarray, batch: int, seconds: float) -> float:
    """Images/s of the trained FP32 model in PyTorch eager (the serving graph with folded preprocessing)."""
    import torch

    from visionnode.components.common.training.trained_model import load_trained_model

    module = load_trained_model(fp32_model).serving_module()
    x = torch.from_numpy(np.ascontiguousarray(images[:batch]))
    with torch.inference_mode():
        module(x)  # warm-up

        def one_round() -> int:
            module(x)
            return len(x)

        return _median_rate(one_round, seconds)


def _median_rate(one_round, seconds: float, min_rounds: int = 3) -> float:
    rates: list[float] = []
    began = time.perf_counter()
    while len(rates) < min_rounds or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        count = one_round()
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def measure_baselines(config: BenchmarkConfig, images: np.ndarray, http_url: str) -> Baselines:
    result = Baselines(images=len(images), batch=config.baseline_batch)
    with tempfile.TemporaryDirectory(prefix="visionnode-bench-") as tmp:
        model_dir = config.model_dir or served_model_dir(config.model, http_url, Path(tmp))
        meta = InferenceMetadata.load(model_dir)
        result.openvino_int8_ips = openvino_throughput(Path(model_dir) / meta.ir_xml, images,
                                                       config.baseline_batch, config.baseline_seconds)
    if config.fp32_model:
        result.pytorch_fp32_ips = pytorch_throughput(config.fp32_model, images, config.baseline_batch,
                                                     config.baseline_seconds)
    else:
        result.notes.append("PyTorch eager FP32 baseline skipped: no --fp32-model given")
    return result


# ---------------------------------------------------------------- the sweep and the verdict
def best_level(levels: list[LevelStats], slo: Slo) -> int | None:
    meeting = [i for i, s in enumerate(levels)
               if s.mode == "closed" and s.requests > 0 and s.errors == 0 and s.p99_ms <= slo.p99_ms]
    return max(meeting, key=lambda i: levels[i].qps) if meeting else None


def verdict(levels: list[LevelStats], best: int | None, slo: Slo) -> tuple[bool, str]:
    if best is None:
        return False, f"SLO missed: no level kept P99 ≤ {slo.p99_ms:g} ms without errors"
    level = levels[best]
    met = level.qps >= slo.qps
    word = "met" if met else "missed"
    return met, (f"SLO {word}: {level.qps:.1f} QPS at P99 {level.p99_ms:.1f} ms (concurrency "
                 f"{level.concurrency}); "
                 f"target ≥ {slo.qps:g} QPS at P99 ≤ {slo.p99_ms:g} ms")


def input_spec(http_url: str, model: str) -> tuple[str, str, int]:
    """(input name, output name, image size) from Triton's model metadata."""
    from visionnode.components.common.serving.triton import triton_http_client

    try:
        metadata = triton_http_client(http_url).get_model_metadata(model)
    except ServiceError:
        raise
    except Exception as exc:  # tritonclient's InferenceServerException for an unknown model
        raise ServiceError(f"Triton at {http_url} does not serve model '{model}' ({one_line(exc)})",
                           "deploy it first with `visionnode deploy`, or pass --model") from None
    tensor = metadata["inputs"][0]
    shape = [int(d) for d in tensor["shape"]]
    if tensor["datatype"] != "UINT8" or len(shape) != 4 or shape[3] != 3:
        raise ConfigError(
            f"model '{model}' takes {tensor['datatype']} {shape}, not uint8 images [N, S, S, 3]",
            "benchmark the tensor model, not the _jpeg front end")
    return tensor["name"], metadata["outputs"][0]["name"], shape[1]


def run_sweep(config: BenchmarkConfig, target: Target, images: np.ndarray, metrics_url: str | None,
              pid: int | None) -> list[LevelStats]:
    from visionnode.components.common.progress import progress_bar

    plans = [LevelPlan("closed", c, None, config.duration_s, config.warmup_s, config.max_requests)
             for c in config.concurrency]
    if config.rate:
        plans.append(LevelPlan("open", max(64, max(config.concurrency) * 4), config.rate, config.duration_s,
                               config.warmup_s, config.max_requests))
    levels = []
    with progress_bar(len(plans), f"load levels ({target.protocol})", unit="level") as advance:
        for plan in plans:
            levels.append(run_level(target, images, plan, metrics_url, pid))
            advance(1)
    return levels


def benchmark(config: BenchmarkConfig, pool: SampleImages | None = None,
              baselines: Baselines | None = None) -> BenchmarkResult:
    """The benchmark phase, tracked in MLflow (a no-op without a tracking URI). `pool` (request images) and
    `baselines` (already measured on that pool) let a caller share them between protocols."""
    from visionnode.components.benchmark.report import write_report
    from visionnode.components.common.tracking import tracked_run

    config.validate()
    served = resolve_served(config)  # a user mistake fails here, before an MLflow run is opened
    with tracked_run("benchmark", tags={"phase": "benchmark", "model": config.model}) as tracker:
        result = run_benchmark(config, pool, baselines, served)
        tracker.log_params({"protocol": config.protocol, "concurrency": config.concurrency,
                            "rate": config.rate, "champion": config.champion,
                            "max_top1_regression": config.max_top1_regression,
                            "duration_s": config.duration_s, "images_source": result.images_source})
        tracker.set_tags({"decision": ("promote: " if result.decision.promote else "refuse: ")
                          + result.decision.reason})
        for level in result.levels:
            tracker.log_metrics({f"{level.mode}_qps": level.qps, f"{level.mode}_p99_ms": level.p99_ms,
                                 f"{level.mode}_errors": level.errors}, step=level.concurrency)
        tracker.log_metrics(result.metrics())
        if config.report_path:
            result.report = str(write_report(result, config.report_path, tracker))
    return result


@dataclass
class Served:
    url: str            # for the benchmarked protocol
    http_url: str       # for metadata and the repository API
    input_name: str
    output_name: str
    size: int


def resolve_served(config: BenchmarkConfig) -> Served:
    endpoints = resolve_endpoints()
    http_url = config.triton_http or endpoints.triton_http or ""
    url = config.triton_url or (endpoints.triton_grpc if config.protocol == "grpc"
                                else endpoints.triton_http) or ""
    if not url:
        raise ConfigError(f"no Triton {config.protocol} address is known",
                          "pass --triton-url HOST:PORT or start the stack (`visionnode stack up`)")
    if config.protocol == "http":
        http_url = url
    elif config.triton_url and not config.triton_http:
        http_url = http_beside_grpc(url)
        console.print(f"Triton HTTP address not given: using {http_url}, the port below gRPC's as in "
                      "Triton's "
                      "default layout (pass --triton-http HOST:PORT to set it)", highlight=False,
                      soft_wrap=True)
    if not http_url:
        raise ConfigError("Triton's HTTP address is needed for model metadata",
                          "pass --triton-http HOST:PORT (or set VISIONNODE_TRITON_HTTP)")
    input_name, output_name, size = input_spec(http_url, config.model)
    return Served(url, http_url, input_name, output_name, size)


def http_beside_grpc(grpc_url: str) -> str:
    """Triton's default ports are HTTP 8000, gRPC 8001: the HTTP address one port below a gRPC address."""
    host, sep, port = grpc_url.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--triton-url {grpc_url!r} is not HOST:PORT", "e.g. --triton-url 127.0.0.1:8001")
    return f"{host}:{int(port) - 1}"


def run_benchmark(config: BenchmarkConfig, pool: SampleImages | None = None,
                  baselines: Baselines | None = None, served: Served | None = None) -> BenchmarkResult:
    from visionnode.components.common.data.samples import sample_images

    served = served or resolve_served(config)
    url, http_url, size = served.url, served.http_url, served.size
    endpoints = resolve_endpoints()
    if pool is None:
        pool = sample_images(config.shards, config.pool_images, size)
    if pool.images.shape[1:] != (size, size, 3):
        raise ConfigError(f"request images are {list(pool.images.shape[1:])}, the model takes [{size}, "
                          f"{size}, 3]")
    if baselines is None:
        baselines = (measure_baselines(config, pool.images, http_url) if config.baselines
                     else Baselines(len(pool.images), config.baseline_batch, notes=["baselines skipped"]))
    target = Target(url, config.model, config.protocol, served.input_name, served.output_name,
                    config.request_timeout_s)
    metrics_url = config.metrics_url or endpoints.triton_metrics
    levels = run_sweep(config, target, pool.images, metrics_url, triton_pid(url) or triton_pid(http_url))
    best = best_level(levels, config.slo)
    met, text = verdict(levels, best, config.slo)
    best_qps = levels[best].qps if best is not None else 0.0
    rss = [s.triton_rss_mb for s in levels if s.triton_rss_mb]
    top1 = compare_top1(http_url, config.model, config.champion, config.shards, config.accuracy_images, pool)
    return BenchmarkResult(
        model=config.model, protocol=config.protocol, url=url, images_source=pool.source,
        input_shape=[-1, size, size, 3], levels=levels, best_level=best, best_qps=best_qps,
        best_p99_ms=levels[best].p99_ms if best is not None else float("nan"),
        max_qps=max(s.qps for s in levels), slo_met=met, verdict=text, slo=config.slo,
        baselines=baselines,
        served_vs_openvino=best_qps / baselines.openvino_int8_ips if baselines.openvino_int8_ips else None,
        served_vs_pytorch=best_qps / baselines.pytorch_fp32_ips if baselines.pytorch_fp32_ips else None,
        triton_rss_mb=max(rss) if rss else None, champion=config.champion, accuracy_images=top1.images,
        candidate_top1=top1.candidate_top1, champion_top1=top1.champion_top1,
        decision=decide(met, text, top1.candidate_top1, top1.champion_top1, config.max_top1_regression,
                        top1.note))


