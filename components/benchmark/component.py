"""KFP v2 component: load-test the staged candidate, compare it with the champion, decide on promotion."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from visionnode.components.common.adapters.kfp import phase_component


@phase_component("benchmark")
def benchmark_op(
    endpoint: Input[Artifact],
    remote_shards: Input[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    protocol: str = "grpc",
    concurrency: str = "1,2,4,8,16",
    duration_s: float = 10.0,
    target_qps: float = 100.0,
    target_p99_ms: float = 150.0,
    max_top1_regression: float = 0.5,
    accuracy_images: int = 1000,
) -> NamedTuple("BenchmarkDecision", [("promote", bool), ("decision", str)]):
    """Closed-loop concurrency sweep against the staged candidate with real val images, in-process baselines,
    and the candidate's and the champion's top-1 on the same labelled val images, through Triton.

    Nothing is raised for a missed SLO or a less accurate candidate: the outputs `promote` and `decision`
    say whether the pipeline promotes the candidate (SLO met and top-1 at most `max_top1_regression` points
    below the champion's; with no champion the SLO alone decides) and why.

    Args:
        endpoint: Deploy output; its metadata names candidate_name, model_name (the champion's name),
            http_url and grpc_url.
        remote_shards: Remote shard manifest (transfer output); val images become the request pool.
        report: Output HTML report: verdict, per-level table, baselines, latency histogram and
            QPS/P99-vs-concurrency plots embedded.
        metrics: best_qps, best_p99_ms, max_qps, slo_met, openvino_int8_ips,
            served_vs_openvino, triton_rss_mb, candidate_top1, champion_top1, promote.
        protocol: grpc or http.
        concurrency: Closed-loop concurrency levels, comma separated.
        duration_s: Measured seconds per level (after a 2 s warm-up).
        target_qps: SLO throughput target.
        target_p99_ms: SLO P99 latency target in milliseconds.
        max_top1_regression: Promotion: the candidate's top-1 may be at most this many percentage points
            below the serving champion's (both measured here, on the same labelled val images).
        accuracy_images: Labelled val images both the candidate and the champion answer for that comparison.
    """
    from pathlib import Path

    from visionnode.components.benchmark.benchmark import benchmark
    from visionnode.components.benchmark.config import BenchmarkConfig, parse_levels
    from visionnode.components.common.adapters.kfp import record_metrics

    meta = endpoint.metadata  # deploy's endpoint artifact always names both models and both URLs
    url = meta["grpc_url" if protocol == "grpc" else "http_url"]
    result = benchmark(BenchmarkConfig(model=meta["candidate_name"], champion=meta["model_name"],
                                       protocol=protocol, triton_url=url, triton_http=meta["http_url"],
                                       concurrency=parse_levels(concurrency), duration_s=duration_s,
                                       target_qps=target_qps, target_p99_ms=target_p99_ms,
                                       max_top1_regression=max_top1_regression,
                                       accuracy_images=accuracy_images,
                                       shards=remote_shards.path, report_path=Path(report.path)))
    record_metrics(metrics, result.metrics())
    outputs = NamedTuple("BenchmarkDecision", [("promote", bool), ("decision", str)])
    return outputs(result.decision.promote, result.decision.reason)
