"""After the benchmark: make the staged candidate the champion, or withdraw it.

promote: publish the candidate's files as version N of the production model `<name>` (and `<name>_jpeg`, plus
the native `openvino` backend variant beside the repository), load them on every replica (Triton answers with
version N-1 until N is ready, then unloads N-1: no request fails), check every replica's answers, unload the
candidate, and move the MLflow alias `champion` onto the candidate's registered version.

reject: unload the candidate on every replica and delete its files; the champion never stopped serving. The
registered version is tagged `not promoted: <reason>`.

Both read what deploy staged from its summary (the KFP endpoint artifact's file, or `deploy --json`), and both
record the outcome on the pipeline's MLflow parent run, which the run's summary reports.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionnode.components.common.errors import DataError
from visionnode.components.common.jsonio import atomic_write_text, read_json
from visionnode.components.common.registry import (
    PROMOTION_TAG,
    RegisteredVersion,
    set_champion,
    tag_version,
)
from visionnode.components.common.run_summary import PROMOTION_RUN_TAG
from visionnode.components.common.serving.triton import JPEG_SUFFIX, parse_repository, ready_version
from visionnode.components.common.tracking import Tracker, tracked_run
from visionnode.components.deploy.answers import AnswerCheck
from visionnode.components.deploy.config import PromoteConfig, ServingConfig
from visionnode.components.deploy.deploy import check_model_dir, check_replicas
from visionnode.components.deploy.publish import publish, withdraw_version
from visionnode.components.deploy.replicas import connect_replicas, load_everywhere, unload_everywhere
from visionnode.components.deploy.repository import write_openvino_backend_model, write_served_models

OPENVINO_VARIANT_SUFFIX = "-openvino"


@dataclass
class StagedCandidate:
    """What promotion needs from deploy's summary."""

    model_name: str
    candidate_name: str
    model_version: int
    replica_spec: str
    triton_repository: str
    published: list[str]
    registered_version: str
    serving: ServingConfig
    check_source: str          # the images deploy checked answers on: val shards, or "synthetic"
    check_images: int

    @classmethod
    def load(cls, path: Path) -> StagedCandidate:
        try:
            data: dict[str, Any] = read_json(path)
            return cls(model_name=data["model_name"], candidate_name=data["candidate_name"],
                       model_version=int(data["model_version"]), replica_spec=data["replica_spec"],
                       triton_repository=data["triton_repository"], published=list(data["published"]),
                       registered_version=data.get("registered_version", ""),
                       serving=ServingConfig(**data["serving"]), check_source=data["checks"][0]["source"],
                       check_images=int(data["checks"][0]["images"]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{path} is not a deploy summary ({type(exc).__name__}: {exc})",
                            "pass the --json file of `visionnode deploy` (the pipeline's endpoint artifact)"
                            ) from None

    @property
    def names(self) -> list[str]:
        return [self.candidate_name + JPEG_SUFFIX, self.candidate_name]  # front end first: it calls the model


@dataclass
class PromotionResult:
    promoted: bool
    outcome: str                # "promoted: ..." or "not promoted: <reason>"
    model_name: str
    model_version: int
    previous_version: int | None  # what model_name served before (None: nothing)
    replicas: list[str]
    registered_version: str
    load_s: float = 0.0
    checks: list[AnswerCheck] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {"promoted": float(self.promoted), "model_version": float(self.model_version),
                "replicas": float(len(self.replicas)), "load_s": self.load_s}

    def markdown(self) -> str:
        serving = (f"`{self.model_name}` version {self.model_version}" if self.promoted else
                   f"`{self.model_name}` version {self.previous_version}" if self.previous_version else
                   f"nothing yet under `{self.model_name}`")
        return "\n".join([
            f"## {'Promoted' if self.promoted else 'Not promoted'}", "", self.outcome, "",
            "| | |", "|---|---|", f"| serving now | {serving} |",
            f"| replicas | {', '.join(self.replicas)} |",
            f"| MLflow registered version | {self.registered_version or '-'} |", ""])


def promote(config: PromoteConfig) -> PromotionResult:
    staged = StagedCandidate.load(config.endpoint)
    if config.model_dir is None:
        raise DataError("promotion needs the quantize output deploy staged", "pass --model DIR")
    with tracked_run("promote", tags={"phase": "promote", "model_name": staged.model_name}) as tracker:
        result = promote_candidate(staged, config)
        registered = RegisteredVersion.parse(staged.registered_version)
        set_champion(tracker, registered)
        tag_version(tracker, registered, {PROMOTION_TAG: result.outcome})
        _record(tracker, result)
    return result


def reject(config: PromoteConfig) -> PromotionResult:
    staged = StagedCandidate.load(config.endpoint)
    with tracked_run("reject", tags={"phase": "reject", "model_name": staged.model_name}) as tracker:
        result = withdraw_candidate(staged, config)
        tag_version(tracker, RegisteredVersion.parse(staged.registered_version),
                    {PROMOTION_TAG: result.outcome})
        _record(tracker, result)
    return result


def record_outputs(result: PromotionResult, report_path: str, metrics: Any) -> str:
    """The KFP step's outputs: its Markdown report and its Metrics (a kfp Metrics artifact); returns the
    outcome."""
    atomic_write_text(Path(report_path), result.markdown())
    for key, value in result.metrics().items():
        metrics.log_metric(key, value)
    return result.outcome


def _record(tracker: Tracker, result: PromotionResult) -> None:
    tracker.log_params({"model_name": result.model_name, "model_version": result.model_version,
                        "replicas": result.replicas, "registered_version": result.registered_version})
    tracker.log_metrics(result.metrics())
    tracker.set_tags({PROMOTION_TAG: result.outcome})
    tracker.tag_parent({PROMOTION_RUN_TAG: result.outcome})
    tracker.log_text(result.markdown(), "promotion.md")


def promote_candidate(staged: StagedCandidate, config: PromoteConfig) -> PromotionResult:
    assert config.model_dir is not None
    meta = check_model_dir(config.model_dir)
    replicas = connect_replicas(config.replicas or staged.replica_spec, config.load_timeout_s)
    name, version = staged.model_name, staged.model_version
    previous = ready_version(replicas[0].client, name)
    targets = [parse_repository(uri) for uri in staged.published]
    with tempfile.TemporaryDirectory(prefix="visionnode-promote-") as tmp:
        served, native = Path(tmp) / "python", Path(tmp) / "openvino"
        write_served_models(served, name, version, config.model_dir, meta, staged.serving)
        write_openvino_backend_model(native, name, version, config.model_dir, meta, staged.serving)
        for target in targets:
            publish(served, target, [name, name + JPEG_SUFFIX], version)
        publish(native, targets[-1].sibling(OPENVINO_VARIANT_SUFFIX), [name], version)
    load_s = load_everywhere(replicas, [name, name + JPEG_SUFFIX], version, config.load_timeout_s)
    shards = None if staged.check_source == "synthetic" else staged.check_source
    checks = check_replicas(replicas, name, version, config.model_dir, meta, shards, staged.check_images,
                            staged.serving)
    because = f" ({config.reason})" if config.reason else ""
    outcome = (f"promoted: {name} version {version} serves on {len(replicas)} "
               f"replica{'s' if len(replicas) > 1 else ''}{because}")
    _withdraw_files(staged, replicas, outcome)
    return PromotionResult(True, outcome, name, version, previous, [r.url for r in replicas],
                           staged.registered_version, round(load_s, 2), checks)


def withdraw_candidate(staged: StagedCandidate, config: PromoteConfig) -> PromotionResult:
    replicas = connect_replicas(config.replicas or staged.replica_spec, config.load_timeout_s)
    outcome = f"not promoted: {config.reason or 'rejected'}"
    _withdraw_files(staged, replicas, outcome)
    return PromotionResult(False, outcome, staged.model_name, staged.model_version,
                           ready_version(replicas[0].client, staged.model_name), [r.url for r in replicas],
                           staged.registered_version)


def _withdraw_files(staged: StagedCandidate, replicas, note: str) -> None:
    """Unload the candidate everywhere and delete its files from every repository it was published to."""
    unload_everywhere(replicas, staged.names)
    for uri in staged.published:
        for name in staged.names:
            withdraw_version(parse_repository(uri), name, staged.model_version, note)
