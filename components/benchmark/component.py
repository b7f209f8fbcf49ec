"""KFP v2 component: load-test the staged candidate, compare it with the champion, decide on promotion."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from visionnode.components.benchmark.config import BenchmarkConfig
from visionnode.components.common.adapters.declared import with_setting_inputs
from visionnode.components.common.adapters.kfp import phase_component


@phase_component("benchmark")
@with_setting_inputs(BenchmarkConfig)
def benchmark_op(
    endpoint: Input[Artifact],
    remote_shards: Input[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
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
    """
    settings = dict(locals())
    from pathlib import Path

    from visionnode.components.benchmark.benchmark import benchmark
    from visionnode.components.benchmark.config import BenchmarkConfig
    from visionnode.components.common.adapters.declared import build
    from visionnode.components.common.adapters.kfp import record_metrics

    meta = endpoint.metadata  # deploy's endpoint artifact always names both models and both URLs
    url = meta["grpc_url" if settings["protocol"] == "grpc" else "http_url"]
    result = benchmark(build(BenchmarkConfig, settings, model=meta["candidate_name"],
                             champion=meta["model_name"], triton_url=url, triton_http=meta["http_url"],
                             shards=remote_shards.path, report_path=Path(report.path)))
    record_metrics(metrics, result.metrics())
    outputs = NamedTuple("BenchmarkDecision", [("promote", bool), ("decision", str)])
    return outputs(result.decision.promote, result.decision.reason)
