"""KFP v2 component: train ResNet-152 on the remote shards and hand on the Model."""

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from visionnode.components.common.adapters.declared import with_setting_inputs
from visionnode.components.common.adapters.kfp import phase_component
from visionnode.components.train.config import TrainConfig


@phase_component("train")
@with_setting_inputs(TrainConfig)
def train_op(
    remote_shards: Input[Dataset],
    data_digest: str,
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    confusion_matrix: Output[ClassificationMetrics],
    confused_pairs: Output[Markdown],
    suggested_lr: float = 0.0,
):
    """Train a ResNet on FFCV shards fetched (and sha256-verified) from S3, in one process.

    Multi-node training runs the same entry point under torchrun in a Kubeflow PyTorchJob
    (manifests/); this component is the single-process step of the pipeline. A retried step resumes from
    the newest checkpoint in `checkpoint_uri` (only its own, or one of an identical configuration and data).

    Args:
        remote_shards: Remote shard dataset from the transfer step
            (manifest.json with base_uri + per-shard uri).
        data_digest: The fingerprint step's digest of the raw data; the shards must have been made from it.
        model: Output dir: weights.pt (state_dict) + model.json (arch, classes, input size, mean/std,
            metrics); metadata holds arch, input_size, top1, top5 and the MLflow registered model version.
        metrics: top1 with its 95 % Wilson interval (top1_ci_low/high over val_images), top5, val_loss,
            final train loss, images/s, CPU cores busy while training, steps, peak_lr.
        curves: Output HTML: training loss per step and val top-1/top-5 per epoch (plot and table).
        confusion_matrix: The confusion matrix on the val images after the last epoch (up to 50 classes;
            empty beyond).
        confused_pairs: The most-confused class pairs on the val images (Markdown table).
        suggested_lr: validate's LR probe suggestion (its `suggested_lr` output), taken when `lr` is auto;
            0.0 = the probe did not run.
    """
    settings = dict(locals())
    import shutil
    from pathlib import Path

    from visionnode.components.common.adapters.declared import build
    from visionnode.components.common.adapters.kfp import confusion_views, record_metrics
    from visionnode.components.common.artifacts import ShardManifest
    from visionnode.components.train.config import TrainConfig
    from visionnode.components.train.outputs import CURVES_PAGE
    from visionnode.components.train.resume import current_run_id, default_checkpoint_uri
    from visionnode.components.train.train import PREEMPTED_EXIT_CODE, train

    shards = Path(remote_shards.path)
    ShardManifest.load(shards).check_made_from(data_digest)
    checkpoint_uri = settings["checkpoint_uri"] or default_checkpoint_uri(shards, current_run_id())
    config = build(TrainConfig, settings, shards=str(shards), out_dir=Path(model.path),
                   checkpoint_uri=checkpoint_uri)
    result = train(config.resolved(suggested_lr))
    if result.status == "preempted":
        raise SystemExit(PREEMPTED_EXIT_CODE)
    model.metadata.update({"arch": result.arch, "input_size": config.res_end, "top1": result.top1 or 0.0,
                           "top5": result.top5 or 0.0, "registered_model": result.registered_model or "",
                           "mlflow_run_id": result.mlflow_run_id or "",
                           "lr_plan": result.lr_plan.describe()})
    record_metrics(metrics, result.metrics())
    shutil.copyfile(Path(model.path) / CURVES_PAGE, curves.path)
    confusion_views(model.path, confusion_matrix, confused_pairs)
