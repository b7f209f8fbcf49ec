"""Which checkpoint a run may resume, and where a run keeps its checkpoints by default.

Every checkpoint is stamped with the run that wrote it, a digest of the configuration that determines the
result and a digest of the data (the shards' class index and bytes). A run resumes a checkpoint only when
it wrote it itself (a retried or pre-empted pod of the same pipeline run) or when configuration and data are
identical (said loudly: it continues another run's training). Any other checkpoint is refused with one line
naming the run that wrote it, so a second pipeline run never silently continues, or finishes with zero
epochs, the training of the first. By default a run's checkpoints go to a location of its own
(`<bucket of the shards>/checkpoints/<run id>`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visionnode.components.common.artifacts import ShardManifest
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.jsonio import to_jsonable
from visionnode.components.common.tracking import PIPELINE_RUN_ENV
from visionnode.components.train.checkpoint import CheckpointStore, load_checkpoint
from visionnode.components.train.config import TrainConfig

# The settings that determine the trained weights (not where things go, how often to log or save, threads).
RESULT_SETTINGS = ("arch", "epochs", "batch_size", "res_start", "res_end", "seed", "crop_min_scale", "flip",
                   "init_weights", "head_epochs", "overfit_batches", "auto_lr", "lr_probe_steps", "recipe")
_RUN_ID = f"cli-{uuid.uuid4().hex[:12]}"  # a run outside a pipeline: this process (all torchrun ranks share
                                          # TORCHELASTIC_RUN_ID instead)


@dataclass(frozen=True)
class RunStamp:
    run_id: str
    config_digest: str
    data_digest: str

    @classmethod
    def of(cls, state: dict[str, Any]) -> "RunStamp | None":
        stamp = state.get("run")
        return cls(**{k: str(stamp.get(k, "")) for k in ("run_id", "config_digest", "data_digest")}) \
            if isinstance(stamp, dict) else None

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def current_run_id() -> str:
    """The pipeline run (KFP puts it in the pod's environment, the local runner in the task's), else the
    torchrun job, else this process."""
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return os.environ.get(PIPELINE_RUN_ENV) or (elastic if elastic and elastic != "none" else _RUN_ID)


def result_settings(config: TrainConfig, world_size: int, precision: str) -> dict[str, Any]:
    """The settings that determine the weights, flat (`recipe.lr`, ...) so a refusal can name what differs."""
    values = {name: to_jsonable(getattr(config, name)) for name in RESULT_SETTINGS if name != "recipe"}
    values.update({f"recipe.{k}": v for k, v in to_jsonable(config.recipe).items()})
    return {**values, "world_size": world_size, "precision": precision}


def run_stamp(config: TrainConfig, manifest: ShardManifest, world_size: int, precision: str) -> RunStamp:
    settings = json.dumps(result_settings(config, world_size, precision), sort_keys=True)
    return RunStamp(current_run_id(), hashlib.sha256(settings.encode()).hexdigest()[:16],
                    manifest.content_digest())


def default_checkpoint_uri(shards: Path, run_id: str) -> str:
    """This run's own place: `s3://<bucket of the shards>/checkpoints/<run id>` (survives a retried pod),
    else `<state dir>/checkpoints/<run id>`."""
    from visionnode.components.common.settings import state_dir

    manifest_file = Path(shards) / "manifest.json"
    base_uri = ShardManifest.load(manifest_file).base_uri if manifest_file.is_file() else None
    if base_uri:
        from visionnode.components.common.storage.s3 import S3Location, parse_s3_uri

        return S3Location(parse_s3_uri(base_uri).bucket, f"checkpoints/{run_id}").uri
    return str(state_dir() / "checkpoints" / run_id)


@dataclass
class ResumePoint:
    source: str
    state: dict[str, Any]
    why: str               # "this run's own" or "identical configuration and data, written by run X"


def resume_point(config: TrainConfig, store: CheckpointStore, stamp: RunStamp,
                 current: dict[str, Any]) -> ResumePoint | None:
    """The checkpoint this run continues from (`--resume auto`: the newest at its location), or None; any
    checkpoint it may not continue is a ConfigError. `current` is result_settings() of this run."""
    if config.resume == "never":
        return None
    source = store.latest() if config.resume == "auto" else config.resume
    if source is None:
        return None
    state = load_checkpoint(source)
    return ResumePoint(source, state, resumable(source, RunStamp.of(state), stamp, state, current))


def resumable(source: str, found: RunStamp | None, stamp: RunStamp, state: dict[str, Any],
              current: dict[str, Any]) -> str:
    hint = ("leave checkpoint_uri empty (each run gets its own), point it at a new location, "
            "or pass --resume never to start over there")
    if found is None:
        raise ConfigError(f"checkpoint {source} carries no run stamp (written before checkpoints named their "
                          "run), so this run cannot tell whose training it would continue", hint)
    if found.run_id == stamp.run_id:
        return "this run's own"
    if found.data_digest != stamp.data_digest:
        raise ConfigError(f"checkpoint {source} was written by run {found.run_id} on other data (shards "
                          f"{found.data_digest}, this run's {stamp.data_digest})", hint)
    if found.config_digest != stamp.config_digest:
        raise ConfigError(f"checkpoint {source} was written by run {found.run_id} with another configuration "
                          f"({_differences(state, current)})", hint)
    return f"identical configuration and data, written by run {found.run_id}"


def _differences(state: dict[str, Any], current: dict[str, Any], shown: int = 3) -> str:
    before = state.get("result_settings", {})
    changed = [f"{name} {before.get(name)!r} -> {value!r}" for name, value in current.items()
               if before.get(name) != value]
    if not changed:
        return "its settings digest differs"
    more = f"; and {len(changed) - shown} more" if len(changed) > shown else ""
    return "; ".join(changed[:shown]) + more
