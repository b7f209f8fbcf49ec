"""KFP v2 component: train ResNet-152 on the remote shards and hand on the Model."""

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from visionnode.components.common.adapters.kfp import phase_component


@phase_component("train")
def train_op(
    remote_shards: Input[Dataset],
    data_digest: str,
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    confusion_matrix: Output[ClassificationMetrics],
    confused_pairs: Output[Markdown],
    epochs: int = 16,
    batch_size: int = 64,
    lr: str = "auto",
    suggested_lr: float = 0.0,
    arch: str = "resnet152",
    res_schedule: str = "160:192",
    precision: str = "auto",
    checkpoint_uri: str = "",
    workers: int = 2,
    crop_min_scale: float = 0.08,
    flip: bool = True,
    init_weights: str = "",
    head_epochs: int = 0,
    max_steps: int = 0,
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
        epochs: Epochs to train.
        batch_size: Images per optimizer step.
        lr: Peak learning rate: auto (validate's LR probe suggestion; the batch rule when the probe did not
            run), batch-rule (0.1 x batch / 256) or a number > 0.
        suggested_lr: validate's LR probe suggestion (its `suggested_lr` output); 0.0 = none.
        arch: resnet18|34|50|101|152.
        res_schedule: Progressive resizing START:END in pixels; END is the evaluation and serving size.
        precision: auto|fp32|bf16|fp16 (auto: bf16 where the CPU/GPU runs it natively, else fp32/fp16).
        checkpoint_uri: Checkpoint location (s3://bucket/prefix or dir); empty means this run's own,
            `s3://<bucket of the shards>/checkpoints/<pipeline run id>`. A checkpoint found there is resumed
            only if this run wrote it or its configuration and data are identical; any other is refused.
        workers: FFCV decoding threads.
        crop_min_scale: RandomResizedCrop's smallest kept share of the image area (ImageNet: 0.08).
        flip: Random horizontal flips.
        init_weights: State dict (path or s3://...) to fine-tune from;
            a head of another class count is replaced.
        head_epochs: With init_weights: the first epochs train only the classifier head.
        max_steps: Stop after this many optimizer steps in total, then evaluate (0: all epochs); for a
            rehearsal of a large run.
    """
    import shutil
    from pathlib import Path

    from visionnode.components.common.adapters.kfp import confusion_views, record_metrics
    from visionnode.components.common.artifacts import ShardManifest
    from visionnode.components.common.training.recipe import Recipe, parse_res_schedule, resolve_lr
    from visionnode.components.train.config import TrainConfig
    from visionnode.components.train.outputs import CURVES_PAGE
    from visionnode.components.train.resume import current_run_id, default_checkpoint_uri
    from visionnode.components.train.train import PREEMPTED_EXIT_CODE, train

    res_start, res_end = parse_res_schedule(res_schedule)
    peak_lr, lr_source = resolve_lr(lr, suggested_lr)
    shards = Path(remote_shards.path)
    ShardManifest.load(shards).check_made_from(data_digest)
    config = TrainConfig(
        shards=str(shards), out_dir=Path(model.path), epochs=epochs, batch_size=batch_size, arch=arch,
        res_start=res_start, res_end=res_end, precision=precision,
        checkpoint_uri=checkpoint_uri or default_checkpoint_uri(shards, current_run_id()),
        workers=workers, recipe=Recipe(lr=peak_lr), lr_source=lr_source, crop_min_scale=crop_min_scale,
        flip=flip, init_weights=init_weights, head_epochs=head_epochs, max_steps=max_steps,
    )
    result = train(config)
    if result.status == "preempted":
        raise SystemExit(PREEMPTED_EXIT_CODE)
    model.metadata.update({"arch": result.arch, "input_size": res_end, "top1": result.top1 or 0.0,
                           "top5": result.top5 or 0.0, "registered_model": result.registered_model or "",
                           "mlflow_run_id": result.mlflow_run_id or "",
                           "lr_plan": result.lr_plan.describe()})
    record_metrics(metrics, result.metrics())
    shutil.copyfile(Path(model.path) / CURVES_PAGE, curves.path)
    confusion_views(model.path, confusion_matrix, confused_pairs)
