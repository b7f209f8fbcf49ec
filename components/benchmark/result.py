"""What a benchmark run found: per-level figures, the best level, the baselines and the SLO verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from visionnode.components.benchmark.config import Slo
from visionnode.components.benchmark.decision import Decision
from visionnode.components.benchmark.loadgen import LevelStats


@dataclass
class Baselines:
    images: int
    batch: int
    openvino_int8_ips: float | None = None
    pytorch_fp32_ips: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchmarkResult:
    model: str
    protocol: str
    url: str
    images_source: str
    input_shape: list[int]
    levels: list[LevelStats]
    best_level: int | None            # index into levels
    best_qps: float
    best_p99_ms: float
    max_qps: float
    slo_met: bool
    verdict: str
    slo: Slo
    baselines: Baselines
    served_vs_openvino: float | None  # best served QPS / raw OpenVINO INT8 img/s
    served_vs_pytorch: float | None
    triton_rss_mb: float | None
    champion: str = ""                # the production model the candidate was compared with
    accuracy_images: int = 0          # labelled images both answered for the top-1 comparison
    candidate_top1: float | None = None
    champion_top1: float | None = None
    decision: Decision = Decision(False, "not decided")
    report: str | None = None

    def metrics(self) -> dict[str, float]:
        metrics = {"best_qps": self.best_qps, "best_p99_ms": self.best_p99_ms, "max_qps": self.max_qps,
                   "slo_met": float(self.slo_met),
                   "target_qps": self.slo.qps, "target_p99_ms": self.slo.p99_ms}
        metrics["promote"] = float(self.decision.promote)
        for key in ("served_vs_openvino", "served_vs_pytorch", "triton_rss_mb", "candidate_top1",
                    "champion_top1"):
            if getattr(self, key) is not None:
                metrics[key] = float(getattr(self, key))
        if self.baselines.openvino_int8_ips:
            metrics["openvino_int8_ips"] = self.baselines.openvino_int8_ips
        if self.baselines.pytorch_fp32_ips:
            metrics["pytorch_fp32_ips"] = self.baselines.pytorch_fp32_ips
        return {k: v for k, v in metrics.items() if not math.isnan(v)}
