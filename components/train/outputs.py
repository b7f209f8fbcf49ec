"""What a train run leaves: weights.pt + model.json, the step log, the loss curve, the registered model."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

import torch

from visionnode.components.common.artifacts import (
    MODEL_METADATA_FILE,
    WEIGHTS_FILE,
    ModelMetadata,
    Preprocessing,
    ShardManifest,
)
from visionnode.components.common.jsonio import atomic_path, to_jsonable
from visionnode.components.common.tracking import save_figure
from visionnode.components.train.trainer import HISTORY_COLUMNS, Trainer

TRAIN_LOG_FILE = "train_log.csv"
LOSS_CURVE_FILE = "loss_curve.png"


def resize_size_for(input_size: int) -> int:
    """Resize-then-centre-crop ratio 224/256, as the ImageNet evaluation protocol (and FFCV's val loader)."""
    return int(round(input_size * 256 / 224))


def write_model(trainer: Trainer, manifest: ShardManifest, result_fields: dict[str, Any]) -> Path:
    out = Path(trainer.config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        torch.save(weights, tmp)
    ModelMetadata(
        arch=trainer.config.arch,
        num_classes=manifest.classes.num_classes,
        classes=manifest.classes,
        preprocessing=Preprocessing(input_size=trainer.config.res_end,
                                    resize_size=resize_size_for(trainer.config.res_end)),
        metrics={k: v for k, v in trainer.last_metrics.items()},
        training={"config": to_jsonable(trainer.config), **result_fields},
    ).save(out)
    return out


def write_train_log(trainer: Trainer) -> Path:
    path = Path(trainer.config.out_dir) / TRAIN_LOG_FILE
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HISTORY_COLUMNS)
        writer.writerows([[int(r[0]), int(r[1]), r[2], r[3], r[4]] for r in trainer.history])
    return path


def plot_loss_curve(trainer: Trainer) -> Path | None:
    if not trainer.history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r[0] for r in trainer.history]
    losses = [r[2] for r in trainer.history]
    window = max(1, len(losses) // 50)
    smooth = [statistics.fmean(losses[max(0, i - window + 1): i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.3, label="train loss")
    ax.plot(steps, smooth, label=f"moving mean ({window} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (label smoothing)")
    ax.set_title(f"{trainer.config.arch}: training loss")
    ax.legend()
    path = save_figure(fig, Path(trainer.config.out_dir) / LOSS_CURVE_FILE, trainer.tracker)
    plt.close(fig)
    return path


def register_model(trainer: Trainer) -> str | None:
    """Log weights.pt + model.json as an MLflow 3 logged model of this run
    and register it as a new version."""
    tracker = trainer.tracker
    if not tracker.enabled:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    out = Path(trainer.config.out_dir)
    name = trainer.config.model_name
    metrics = {k: v for k, v in trainer.last_metrics.items() if isinstance(v, (int, float))}
    logged = mlflow.initialize_logged_model(name=name, source_run_id=tracker.run_id,
                                            model_type="image-classifier",
                                            params={"arch": trainer.config.arch})
    client = mlflow.MlflowClient()
    for file_name in (WEIGHTS_FILE, MODEL_METADATA_FILE):
        client.log_model_artifact(logged.model_id, str(out / file_name))
    if metrics:
        mlflow.log_metrics(metrics, model_id=logged.model_id, run_id=tracker.run_id)
    mlflow.finalize_logged_model(logged.model_id, "READY")
    try:
        client.create_registered_model(name,
                                       description="VisionNode ResNet classifier (weights.pt + model.json)")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=tracker.run_id,
                                          model_id=logged.model_id,
                                          tags={"top1": str(trainer.last_metrics.get("top1", ""))})
    return f"{name}/{version.version}"
