"""What a train run leaves: weights.pt + model.json, the step log, the loss and accuracy curves (PNG + a
self-contained HTML page), the confusion matrix, and the registered model (MLflow pytorch flavour)."""

from __future__ import annotations

import base64
import csv
import html
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
from visionnode.components.common.confusion import Confusion, write_confusion
from visionnode.components.common.jsonio import atomic_path, atomic_write_text, to_jsonable
from visionnode.components.common.tracking import save_figure
from visionnode.components.train.trainer import HISTORY_COLUMNS, VAL_COLUMNS, Trainer

TRAIN_LOG_FILE = "train_log.csv"
CURVES_PLOT = "training_curves.png"
CURVES_PAGE = "training_curves.html"


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


def plot_training_curves(trainer: Trainer) -> Path | None:
    """Loss per optimizer step and val top-1/top-5 per epoch: a PNG (logged to MLflow) and an HTML page with
    it embedded and the per-epoch figures (the train step's KFP HTML artifact)."""
    if not trainer.history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r[0] for r in trainer.history]
    losses = [r[2] for r in trainer.history]
    window = max(1, len(losses) // 50)
    smooth = [statistics.fmean(losses[max(0, i - window + 1): i + 1]) for i in range(len(losses))]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4))
    loss_ax.plot(steps, losses, alpha=0.3, label="train loss")
    loss_ax.plot(steps, smooth, label=f"moving mean ({window} steps)")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("cross-entropy (label smoothing)")
    loss_ax.set_title(f"{trainer.config.arch}: training loss")
    loss_ax.legend()
    epochs = [r[0] for r in trainer.val_history]
    for column, style in (("top1", "o-"), ("top5", "s--")):
        acc_ax.plot(epochs, [r[VAL_COLUMNS.index(column)] for r in trainer.val_history], style,
                    label=f"val {column}")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("validation accuracy")
    acc_ax.legend()
    out = Path(trainer.config.out_dir)
    path = save_figure(fig, out / CURVES_PLOT, trainer.tracker)
    plt.close(fig)
    atomic_write_text(out / CURVES_PAGE, curves_page(trainer, path))
    return out / CURVES_PAGE


def curves_page(trainer: Trainer, plot: Path) -> str:
    rows = "".join("<tr>" + "".join(f"<td>{value:.4g}</td>" for value in row) + "</tr>"
                   for row in trainer.val_history)
    picture = base64.b64encode(plot.read_bytes()).decode()
    title = html.escape(f"{trainer.config.arch}: training curves")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>{title}</h1>
<img alt="loss per step and validation accuracy per epoch" src="data:image/png;base64,{picture}">
<h2>Validation after each epoch</h2>
<table><tr>{"".join(f"<th>{c}</th>" for c in VAL_COLUMNS)}</tr>{rows}</table>
</body></html>
"""


def write_confusion_views(trainer: Trainer) -> None:
    if trainer.last_confusion is not None:
        confusion = Confusion(trainer.class_index["names"], trainer.last_confusion.numpy())
        write_confusion(confusion, Path(trainer.config.out_dir), f"{trainer.config.arch} FP32",
                        trainer.tracker)


def register_model(trainer: Trainer) -> str | None:
    """Log the model with MLflow's pytorch flavour (its serving form: uint8 NHWC images in, logits out, the
    normalisation inside; saved with torch.export, no pickle) with its input/output signature and model.json,
    and register it as a new version; model.json then records that version ('name/version')."""
    tracker = trainer.tracker
    if not tracker.enabled:
        return None
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from visionnode.components.common.training.trained_model import load_trained_model

    out = Path(trainer.config.out_dir)
    serving = load_trained_model(out).serving_module()   # the weights just written, on the CPU, in float32
    size = trainer.config.res_end
    example = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    with torch.inference_mode():
        logits = serving(torch.from_numpy(example)).numpy()
    metrics = {k: v for k, v in trainer.last_metrics.items() if isinstance(v, (int, float))}
    info = mlflow.pytorch.log_model(
        serving, name=trainer.config.model_name, signature=infer_signature(example, logits),
        input_example=example, registered_model_name=trainer.config.model_name,
        extra_files=[str(out / MODEL_METADATA_FILE)],
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # no local tag such as +cu130
        params={"arch": trainer.config.arch}, model_type="image-classifier", await_registration_for=60)
    if metrics:
        mlflow.log_metrics(metrics, model_id=info.model_id, run_id=tracker.run_id)
    registered = f"{trainer.config.model_name}/{info.registered_model_version}"
    metadata = ModelMetadata.load(out)
    metadata.registered_model = registered
    metadata.save(out)
    return registered
