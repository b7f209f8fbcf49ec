"""quantize: a trained FP32 ResNet -> INT8 OpenVINO IR (+ portable ONNX) for CPU serving.

    train output dir + shards
      -> ONNX with uint8 NHWC input and the preprocessing folded in (export.py)
      -> OpenVINO FP32 model of that ONNX file
      -> NNCF post-training INT8 quantization, calibrated on train images with the val preprocessing
      -> accuracy FP32 vs INT8 on the val shards (accuracy.py), gate on the top-1 drop
      -> size, peak RSS, latency and throughput of PyTorch FP32 / OpenVINO FP32 / OpenVINO INT8 (perf.py)
      -> out dir: model.xml/.bin, model.onnx, model.json (InferenceMetadata), quantize_report.json, plot

Quality gate (gate.py): a paired test of FP32 against INT8 on the same val images; it fails when the top-1
drop is significantly larger than `max_accuracy_drop` and passes with a warning when the drop is larger but
the images are too few to tell. On failure every output is still written (so the model and the report can be
inspected) but model.json records `accuracy.quality_gate_passed = 0`, and QualityGateError is raised
afterwards: the CLI exits 2 and the KFP step fails, so deploy never runs on it. `gate.md` holds the decision.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionnode.components.common.artifacts import InferenceMetadata, ShardManifest
from visionnode.components.common.confusion import Confusion, write_confusion
from visionnode.components.common.errors import DataError, IntegrityError, QualityGateError
from visionnode.components.common.jsonio import write_json
from visionnode.components.common.progress import progress_bar
from visionnode.components.common.tracking import Tracker, save_figure, tracked_run
from visionnode.components.quantize.accuracy import AccuracyReport, compare_accuracy
from visionnode.components.quantize.config import QuantizeConfig
from visionnode.components.quantize.export import (
    TrainedModel,
    convert_to_openvino,
    export_onnx,
    load_trained_model,
    save_ir,
    torch_logits,
)
from visionnode.components.quantize.gate import GateDecision, gate_markdown, judge_accuracy
from visionnode.components.quantize.perf import (
    PerfReport,
    compile_openvino,
    measure_performance,
    openvino_logits,
    throughput_figure,
)

IR_FILE = "model.xml"
ONNX_FILE = "model.onnx"
REPORT_FILE = "quantize_report.json"
PLOT_FILE = "throughput.png"
GATE_FILE = "gate.md"
EXPORT_RTOL = 1e-3   # folded-graph logits of OpenVINO FP32 vs PyTorch, relative to the logit range


class AccuracyGateError(QualityGateError):
    """The INT8 top-1 drop exceeds the threshold; `result` holds the full report (outputs are written)."""

    def __init__(self, result: "QuantizeResult", problem: str, hint: str | None = None) -> None:
        super().__init__(problem, hint)
        self.result = result


@dataclass
class QuantizeResult:
    out_dir: Path
    arch: str
    num_classes: int
    input_size: int
    calibration_images: int
    accuracy: AccuracyReport
    gate: GateDecision
    max_accuracy_drop: float
    export_max_abs_diff: float        # OpenVINO FP32 vs PyTorch logits on the same uint8 images
    perf: PerfReport | None = None
    files: list[str] = field(default_factory=list)
    mlflow_run_url: str | None = None

    @property
    def quality_gate_passed(self) -> bool:
        return self.gate.passed

    def metrics(self) -> dict[str, float]:
        metrics = {**self.accuracy.metrics(), **self.gate.metrics(),
                   "calibration_images": float(self.calibration_images),
                   "export_max_abs_diff": self.export_max_abs_diff}
        if self.perf is not None:
            metrics.update(self.perf.metrics())
        return metrics


def quantize_model(config: QuantizeConfig) -> QuantizeResult:
    """Export, quantize, evaluate, measure; raises AccuracyGateError (after writing) on a too-big drop."""
    config.validate()
    model = load_trained_model(config.model_dir)
    train_paths, val_paths = _shard_paths(config, model)
    with tracked_run("quantize", tags={"phase": "quantize", "arch": model.metadata.arch}) as tracker:
        tracker.log_params({"calibration_images": config.calibration_images, "preset": config.preset,
                            "fast_bias_correction": config.fast_bias_correction,
                            "full_int8": config.full_int8, "threads": config.threads,
                            "max_accuracy_drop": config.max_accuracy_drop, "shards": config.shards,
                            "model_dir": str(config.model_dir)})
        result = _quantize(config, model, train_paths, val_paths, tracker)
        tracker.log_metrics(result.metrics())
        for name in (IR_FILE, "model.bin", "model.json", REPORT_FILE):  # the IR, not the larger FP32 ONNX
            tracker.log_artifact(config.out_dir / name, artifact_path="int8_model")
        tracker.log_artifact(config.out_dir / GATE_FILE, artifact_path="int8_model")
        tracker.set_tags({"quality_gate": result.gate.verdict})
        result.mlflow_run_url = tracker.run_url
    if not result.quality_gate_passed:
        raise AccuracyGateError(
            result, result.gate.message,
            f"outputs kept for inspection in {config.out_dir} (marked quality_gate_passed=0); "
            "try more --calibration-images, or accept it with a larger --max-accuracy-drop")
    return result


def _quantize(config: QuantizeConfig, model: TrainedModel, train_paths: list[Path], val_paths: list[Path],
              tracker: Tracker) -> QuantizeResult:
    staging = config.out_dir.parent / f".{config.out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        return _quantize_into(staging, config, model, train_paths, val_paths, tracker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _quantize_into(staging: Path, config: QuantizeConfig, model: TrainedModel, train_paths: list[Path],
                   val_paths: list[Path], tracker: Tracker) -> QuantizeResult:
    size = model.input_size
    onnx_path = export_onnx(model, staging / ONNX_FILE)
    fp32_model = convert_to_openvino(onnx_path)
    fp32_compiled = compile_openvino(fp32_model, "LATENCY", config.threads, fp32_exact=True)
    limit = config.eval_images
    val_batches = _uint8_batches(val_paths, config.batch_size, size, limit)
    first = next(val_batches, None)  # checked now, before the long calibration; evaluated below with the rest
    if first is None:
        raise DataError("the val shards yielded no images",
                        "quantize needs val images for the accuracy report")
    export_diff = check_export(model, fp32_compiled, first[0][:8])

    calibration = load_calibration_images(train_paths, config.calibration_images, size)
    int8_model = quantize_openvino(fp32_model, calibration, config.preset, config.fast_bias_correction,
                                   config.full_int8)
    calibrated_on = len(calibration)
    del calibration
    int8_xml = save_ir(int8_model, staging / IR_FILE)
    del int8_model

    int8_compiled = compile_openvino(int8_xml, "LATENCY", config.threads)  # the files we ship
    confusion = Confusion.empty(model.metadata.classes.names)
    accuracy = compare_accuracy(openvino_logits(fp32_compiled), openvino_logits(int8_compiled),
                                itertools.chain([first], val_batches), model.metadata.num_classes,
                                total=_count(val_paths, limit), int8_confusion=confusion)
    del fp32_compiled, int8_compiled
    write_confusion(confusion, staging, f"{model.metadata.arch} INT8", tracker)
    gate = judge_accuracy(accuracy, max_drop=config.max_accuracy_drop)

    perf = None
    if config.measure:
        perf = measure_performance(model.serving_module(), fp32_model, int8_xml, size, config.threads,
                                   config.perf_batch, config.perf_seconds)
        figure = throughput_figure(perf)
        save_figure(figure, staging / PLOT_FILE, tracker)
        import matplotlib.pyplot as plt

        plt.close(figure)

    result = QuantizeResult(out_dir=config.out_dir, arch=model.metadata.arch,
                            num_classes=model.metadata.num_classes, input_size=size,
                            calibration_images=calibrated_on, accuracy=accuracy,
                            gate=gate, max_accuracy_drop=config.max_accuracy_drop,
                            export_max_abs_diff=export_diff, perf=perf)
    inference_metadata(model, result).save(staging)
    write_json(staging / REPORT_FILE, result)
    (staging / GATE_FILE).write_text(gate_markdown(gate), encoding="utf-8")
    result.files = _publish(staging, config.out_dir)
    return result


def inference_metadata(model: TrainedModel, result: QuantizeResult) -> InferenceMetadata:
    accuracy = {**result.accuracy.metrics(), **result.gate.metrics(),
                "max_accuracy_drop": result.max_accuracy_drop}
    return InferenceMetadata(arch=model.metadata.arch, precision="int8", input=model.input_spec(),
                             output=model.output_spec(), classes=model.metadata.classes,
                             preprocessing=model.metadata.preprocessing, ir_xml=IR_FILE, onnx=ONNX_FILE,
                             accuracy=accuracy, source_model=model.metadata.registered_model)


def quantize_openvino(fp32_model, calibration: list[np.ndarray], preset: str = "mixed",
                      fast_bias_correction: bool = True, full_int8: bool = False):
    """NNCF post-training quantization (min-max statistics + bias correction), settings chosen for accuracy:

    - unless `full_int8`, three kinds of operation compute in floating point: the residual
      Adds, the shortcut projections (the 1x1 `downsample` convolutions) and the stem convolution.
      NNCF's CPU scheme would put INT8 quantizers on both inputs of each Add, rounding every bottleneck's
      output on the scale of the residual stream it joins (ResNet-152 has 50 in a row); with the Adds in
      FP32, the stream is still rounded where a projection takes it as input (once per stage), and the
      stem's per-tensor grid does not line up with the three channels' normalised pixel grids. Measured on
      a train-phase ResNet-152 (bench_int8_agreement.py, 24 epochs, 600 val images; median relative logit
      error, then top-1 agreement with FP32): everything INT8 6.4 %, 94.67 %; Adds FP32 1.70 %, 98.67 %;
      + projections 1.35 %, 98.50 %; + stem 0.88 %, 99.33 %; the same with the stem's and projections'
      weights stored INT8 (_int8_weights_only) about 1.2 %, 99.33 %. All other convolutions (150 of 155
      in ResNet-152) and the classifier take INT8 inputs. The price is speed (bench_quantize.py, README):
      the residual stream is carried in floating point; full_int8=True buys it back.
    - preset MIXED: symmetric INT8 weights, *asymmetric* activations (the first convolution sees the
      normalised, signed image). With the Adds in FP32, PERFORMANCE (all symmetric) measured 98.50 %
      agreement against MIXED's 99.33 % on an 8-epoch model.
    - model_type left unset: ModelType.TRANSFORMER is for attention models; a CNN uses the default scheme.
    - fast_bias_correction=True: NNCF's full BiasCorrection (False) re-computes each layer's output mean
      with the already-quantized layers upstream, compiling a sub-model per layer: on the demo's
      ResNet-152 (64 px, 100 calibration images, 2 cores) quantize took 199 s with it and 47 s without,
      for no gain (600 images: median relative logit error 0.98 % vs 0.91 %, top-1 agreement 99.50 % vs
      99.67 %). The full one stays one flag away for a model where it measures better.
    - subset_size = all calibration images; each dataset item is one image (batch 1), so statistics are
      per image as NNCF expects.
    """
    import nncf

    fp32_convolutions = [] if full_int8 else fidelity_convolutions(fp32_model)
    ignored = nncf.IgnoredScope(names=fp32_convolutions, types=["Add"],
                                validate=False) if fp32_convolutions else None
    with _nncf_log_level(logging.WARNING):  # NNCF logs one INFO line per ignored operation: 55 for ResNet-152
        quantized = nncf.quantize(
            fp32_model, nncf.Dataset(calibration),
            preset=nncf.QuantizationPreset.MIXED if preset == "mixed"
            else nncf.QuantizationPreset.PERFORMANCE,
            target_device=nncf.TargetDevice.CPU, subset_size=len(calibration),
            fast_bias_correction=fast_bias_correction, ignored_scope=ignored,
        )
        return _int8_weights_only(quantized, fp32_convolutions) if fp32_convolutions else quantized


def _int8_weights_only(model, convolutions: list[str]):
    """Store these FP32-computing convolutions' weights as INT8 too (NNCF weight compression: per output
    channel, decompressed when the model is compiled): ResNet-152's projections hold 2.8 M weights, 8 MB
    more on disk in FP32, which would break the 65 MB size budget."""
    import nncf

    others = [name for name in _op_names(model, "Convolution", "MatMul") if name not in convolutions]
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM,
                                 ignored_scope=nncf.IgnoredScope(names=others, validate=False))


def fidelity_convolutions(fp32_model) -> list[str]:
    """The stem (the graph's first Convolution) and torchvision's shortcut projections (`downsample`)."""
    convolutions = _op_names(fp32_model, "Convolution")
    return convolutions[:1] + [name for name in convolutions if "/downsample/" in name]


def _op_names(model, *op_types: str) -> list[str]:
    """Friendly names of the model's `op_types` operations, in topological order."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in op_types]


@contextmanager
def _nncf_log_level(level: int) -> Iterator[None]:
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def load_calibration_images(train_paths: list[Path], count: int, size: int) -> list[np.ndarray]:
    """`count` train images, centre crop (val preprocessing), one [1, S, S, 3] uint8 array each.

    Drawn from every train shard in turn (an equal quota per shard), so a shard written in class order
    does not fill the whole calibration set with its first classes.
    """
    quota = -(-count // len(train_paths))
    images: list[np.ndarray] = []
    with progress_bar(count, "loading calibration images") as advance:
        for path in train_paths:
            for batch, _ in _uint8_batches([path], 32, size, min(quota, count - len(images))):
                for image in batch[: count - len(images)]:
                    images.append(np.ascontiguousarray(image[None]))
                    advance(1)
            if len(images) >= count:
                break
    if not images:
        raise DataError("the train shards yielded no calibration images",
                        "check the train split of the manifest")
    return images


def check_export(model: TrainedModel, fp32_compiled, images: np.ndarray) -> float:
    """The folded ONNX/IR graph must give PyTorch's logits on the same uint8 pixels."""
    reference = torch_logits(model, images)
    diff = float(np.abs(openvino_logits(fp32_compiled)(images) - reference).max())
    tolerance = EXPORT_RTOL * max(1.0, float(np.abs(reference).max()))
    if diff > tolerance:
        raise IntegrityError(f"the exported graph disagrees with PyTorch (max |diff| {diff:.3g} > "
                             f"{tolerance:.3g})",
                             "report this with the model.json; the export is not trustworthy")
    return diff


def _shard_paths(config: QuantizeConfig, model: TrainedModel) -> tuple[list[Path], list[Path]]:
    from visionnode.components.common.storage.shard_cache import materialize_shards

    local = Path(materialize_shards(config.shards, config.cache_dir))
    manifest = ShardManifest.load(local)
    if manifest.classes.wnids != model.metadata.classes.wnids:
        raise DataError(f"the shards at {config.shards} have {manifest.classes.num_classes} classes that "
                        "differ "
                        f"from the model's {model.metadata.num_classes}",
                        "quantize with the shards the model was trained on")
    train = [local / s.file for s in manifest.shards_for("train")]
    val = [local / s.file for s in manifest.shards_for("val")]
    if not train or not val:
        raise DataError(f"the shards at {config.shards} lack a {'train' if not train else 'val'} split",
                        "quantize needs train shards (calibration) and val shards (accuracy)")
    return train, val


def _uint8_batches(paths: list[Path], batch_size: int, size: int, limit: int | None):
    from visionnode.components.common.data.ffcv_io import uint8_batches

    seen = 0
    for images, labels in uint8_batches([str(p) for p in paths], batch_size, size, limit=limit):
        if limit is not None and seen >= limit:
            return
        keep = len(labels) if limit is None else min(len(labels), limit - seen)
        seen += keep
        yield images[:keep], labels[:keep]


def _count(paths: list[Path], limit: int | None) -> int | None:
    try:
        manifest = ShardManifest.load(paths[0].parent)
        total = manifest.images_in("val")
    except DataError:
        return limit
    return min(total, limit) if limit else total


def _publish(staging: Path, out_dir: Path) -> list[str]:
    """Move the staged files into out_dir one by one (os.replace), model.json last: a reader that sees
    model.json sees a complete model (KFP hands us an existing, empty output dir, so no dir rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in staging.iterdir() if p.name != "model.json") + ["model.json"]
    for name in names:
        os.replace(staging / name, out_dir / name)
    return names
