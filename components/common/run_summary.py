"""What a whole pipeline run did, in one place: the headline figures, the promotion outcome, the final status.

`summarize` picks the headline figures from each phase's metrics (a local run reads them from kfp.local's
outputs, the pipeline's final step from the phases' MLflow runs). `finish_pipeline_run` is that final step's
logic: it runs after every other step, whether they succeeded or not (a KFP exit handler), writes the summary
onto the pipeline's MLflow parent run and ends that run with the pipeline's real status, which a cluster run
otherwise leaves RUNNING forever.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROMOTION_RUN_TAG = "visionnode.promotion"   # on the parent run: "promoted: ..." or "not promoted: ..."
SUMMARY_FILE = "summary.json"
NOTE_TAG = "mlflow.note.content"              # the run's Description in MLflow's UI (Markdown)
# KFP's final-status states -> MLflow's run statuses.
RUN_STATUS = {"SUCCEEDED": "FINISHED", "CANCELLED": "KILLED"}

# summary key -> (phase, metric name in that phase's metrics)
HEADLINE: dict[str, tuple[str, str]] = {
    "validate_loss_first": ("validate", "loss_first"), "validate_loss_last": ("validate", "loss_last"),
    "suggested_lr": ("validate", "suggested_lr"), "train_peak_lr": ("train", "peak_lr"),
    "shard_images": ("shard", "images_written"), "transfer_MBps": ("transfer", "mb_per_s"),
    "train_loss": ("train", "final_loss"), "train_top1": ("train", "top1"),
    "train_top5": ("train", "top5"),
    "fp32_top1": ("quantize", "fp32_top1"), "int8_top1": ("quantize", "int8_top1"),
    "int8_agreement": ("quantize", "top1_agreement"), "int8_size_mb": ("quantize", "int8_size_mb"),
    "qps": ("benchmark", "best_qps"), "p99_ms": ("benchmark", "best_p99_ms"),
    "slo_met": ("benchmark", "slo_met"), "candidate_top1": ("benchmark", "candidate_top1"),
    "champion_top1": ("benchmark", "champion_top1"),
}


def summarize(metrics_by_phase: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The headline figures of a run, picked from each phase's metrics by name (absent ones left out)."""
    summary = {key: metrics_by_phase.get(phase, {}).get(name) for key, (phase, name) in HEADLINE.items()}
    summary = {k: v for k, v in summary.items()
               if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if "slo_met" in summary:
        summary["slo_verdict"] = "met" if summary["slo_met"] else "missed"
    return summary


def summary_markdown(summary: Mapping[str, Any], status: str) -> str:
    lines = [f"## Pipeline run: {status}", "", f"**{summary.get('promotion', 'not promoted')}**", "",
             "| figure | value |", "|---|---|"]
    lines += [f"| {key} | {_shown(value)} |" for key, value in summary.items() if key != "promotion"]
    return "\n".join(lines) + "\n"


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass
class FinishedRun:
    run_id: str
    status: str                  # FINISHED | FAILED | KILLED
    summary: dict[str, Any]
    markdown: str


def finish_pipeline_run(state: str, error: str = "") -> FinishedRun | None:
    """End the pipeline's MLflow parent run with the run's real status and its summary (None: tracking off).

    `state` is KFP's final status of the pipeline body (SUCCEEDED, FAILED, CANCELLED); `error` its message."""
    from visionnode.components.common.settings import resolve_endpoints
    from visionnode.components.common.tracking import DEFAULT_EXPERIMENT, _set_experiment, pipeline_parent_run

    uri = resolve_endpoints().mlflow_uri
    if not uri:
        return None
    import mlflow

    mlflow.set_tracking_uri(uri)
    _set_experiment(mlflow, DEFAULT_EXPERIMENT, uri)
    parent = pipeline_parent_run(mlflow)
    if parent is None:
        return None
    client = mlflow.MlflowClient()
    run = client.get_run(parent)
    summary = summarize(phase_metrics(client, run.info.experiment_id, parent))
    status = RUN_STATUS.get(state, "FAILED")
    summary["promotion"] = run.data.tags.get(PROMOTION_RUN_TAG) or (
        "not promoted: the pipeline did not finish" + (f" ({error})" if error else "")
        if status != "FINISHED" else "not promoted: no promotion step ran")
    markdown = summary_markdown(summary, status)
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            client.log_metric(parent, key, float(value))
    client.log_text(parent, _json(summary), SUMMARY_FILE)
    client.set_tag(parent, PROMOTION_RUN_TAG, summary["promotion"])
    client.set_tag(parent, NOTE_TAG, markdown)
    client.set_terminated(parent, status)
    return FinishedRun(parent, status, summary, markdown)


def phase_metrics(client: Any, experiment_id: str, parent: str) -> dict[str, dict[str, float]]:
    """Each phase's metrics from its MLflow run under `parent`, found by the run's `phase` tag (not its name:
    a phase fetching shards opens a run named transfer too); the newest run of a retried phase."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    return {run.data.tags["phase"]: dict(run.data.metrics) for run in runs
            if run.info.status == "FINISHED" and "phase" in run.data.tags}


def _json(summary: Mapping[str, Any]) -> str:
    import json

    return json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
