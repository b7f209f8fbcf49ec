"""KFP v2 component: load-test the deployed endpoint and report the SLO verdict."""

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
):
    """Closed-loop concurrency sweep against the deployed model with real val images,
    plus in-process baselines.

    The verdict is reported (metrics slo_met 1/0 and the report), never raised:
    a missed SLO does not fail the run.

    Args:
        endpoint: Deploy output; its metadata names model_name, http_url and grpc_url.
        remote_shards: Remote shard manifest (transfer output); val images become the request pool.
        report: Output HTML report: verdict, per-level table, baselines, latency histogram and
            QPS/P99-vs-concurrency plots embedded.
        metrics: best_qps, best_p99_ms, max_qps, slo_met, openvino_int8_ips,
            served_vs_openvino, triton_rss_mb.
        protocol: grpc or http.
        concurrency: Closed-loop concurrency levels, comma separated.
        duration_s: Measured seconds per level (after a 2 s warm-up).
        target_qps: SLO throughput target.
        target_p99_ms: SLO P99 latency target in milliseconds.
    """
    from pathlib import Path

    from visionnode.components.benchmark.benchmark import benchmark
    from visionnode.components.benchmark.config import BenchmarkConfig, parse_levels

    meta = endpoint.metadata  # deploy's endpoint artifact always names the model and both URLs
    url = meta["grpc_url" if protocol == "grpc" else "http_url"]
    result = benchmark(BenchmarkConfig(model=meta["model_name"], protocol=protocol,
                                       triton_url=url, triton_http=meta["http_url"],
                                       concurrency=parse_levels(concurrency), duration_s=duration_s,
                                       target_qps=target_qps, target_p99_ms=target_p99_ms,
                                       shards=remote_shards.path, report_path=Path(report.path)))
    for key, value in result.metrics().items():
        metrics.log_metric(key, value)
