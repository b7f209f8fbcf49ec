"""KFP v2 component: FP32 model -> INT8 OpenVINO IR (+ ONNX) with accuracy, size and speed reported."""

from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from visionnode.components.common.adapters.declared import with_setting_inputs
from visionnode.components.common.adapters.kfp import phase_component
from visionnode.components.quantize.config import QuantizeConfig


@phase_component("quantize")
@with_setting_inputs(QuantizeConfig)
def quantize_op(
    model: Input[Model],
    remote_shards: Input[Dataset],
    int8_model: Output[Model],
    metrics: Output[Metrics],
    gate_report: Output[Markdown],
    confusion_matrix: Output[ClassificationMetrics],
    confused_pairs: Output[Markdown],
):
    """Quantize a trained ResNet to INT8 for CPU serving (OpenVINO + NNCF post-training quantization).

    The exported graph takes uint8 NHWC RGB images [N, S, S, 3] (input `images`) and returns float32
    logits [N, classes] (output `logits`); scaling, mean/std and NHWC->NCHW are folded into it.

    Args:
        model: Train output dir (model.json ModelMetadata + weights.pt state_dict).
        remote_shards: Shards (remote-manifest dir from transfer, or a local shard dir): train shards
            give the calibration images, val shards the accuracy report.
        int8_model: Output dir: model.xml/.bin (INT8 IR), model.onnx (FP32, portable), model.json
            (InferenceMetadata: input/output specs, classes, preprocessing, accuracy), quantize_report.json,
            throughput.png. Metadata: arch, precision, input/output names, shape, top-1 figures.
        metrics: FP32 and INT8 top-1/top-5, top-1 agreement, drop (points), INT8 size (MB), peak RSS (MB),
            latency (batch 1) and throughput (batch 8) of PyTorch FP32, OpenVINO FP32 and OpenVINO INT8.
        gate_report: The accuracy gate's decision (pass, pass with warning when the val images are too few
            to tell, or fail): the measured drop, the images compared, the paired test and its rule.
        confusion_matrix: The INT8 model's confusion matrix on the val images (up to 50 classes; empty
            beyond).
        confused_pairs: The INT8 model's most-confused class pairs on the val images (Markdown table).
    """
    settings = dict(locals())
    from pathlib import Path

    from visionnode.components.common.adapters.declared import build
    from visionnode.components.common.adapters.kfp import confusion_views, record_metrics
    from visionnode.components.quantize.export import INPUT_NAME, OUTPUT_NAME
    from visionnode.components.quantize.gate import gate_markdown
    from visionnode.components.quantize.quantize import AccuracyGateError, QuantizeConfig, quantize_model

    config = build(QuantizeConfig, settings, model_dir=Path(model.path), shards=remote_shards.path,
                   out_dir=Path(int8_model.path))
    failure = None
    try:
        result = quantize_model(config)
    except AccuracyGateError as exc:
        result, failure = exc.result, exc
    record_metrics(metrics, result.metrics())
    int8_model.metadata.update({
        "arch": result.arch, "precision": "int8", "framework": "openvino", "input_name": INPUT_NAME,
        "input_shape": [-1, result.input_size, result.input_size, 3], "input_dtype": "uint8",
        "output_name": OUTPUT_NAME, "num_classes": result.num_classes,
        "fp32_top1": result.accuracy.fp32_top1, "int8_top1": result.accuracy.int8_top1,
        "quality_gate_passed": result.quality_gate_passed, "quality_gate": result.gate.verdict,
        "quality_gate_message": result.gate.message,
    })
    with open(gate_report.path, "w", encoding="utf-8") as fh:
        fh.write(gate_markdown(result.gate))
    gate_report.metadata.update({"verdict": result.gate.verdict, "message": result.gate.message})
    confusion_views(int8_model.path, confusion_matrix, confused_pairs)
    if failure is not None:
        raise failure
