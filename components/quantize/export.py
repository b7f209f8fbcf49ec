"""Trained weights -> a serving graph that takes uint8 NHWC RGB images: ONNX (portable) and OpenVINO IR.

The preprocessing is folded into the torch module before export (`common.trained_model.ServingModel`), so the
ONNX file, the IR
converted from that ONNX file and every server that loads either of them do exactly the same arithmetic:
uint8 -> float32, NHWC -> NCHW, (x/255 - mean)/std. Clients send uint8 pixels, 4x fewer bytes than float32.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from visionnode.components.common.jsonio import atomic_path
from visionnode.components.common.training.trained_model import (
    INPUT_NAME,
    OUTPUT_NAME,
    TrainedModel,
    load_trained_model,
)

ONNX_OPSET = 17

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "convert_to_openvino", "export_onnx", "load_trained_model", "save_ir"]


def export_onnx(model: TrainedModel, target: str | Path) -> Path:
    """Export the folded serving graph with a dynamic batch dimension (legacy TorchScript exporter:
    it keeps the graph one flat ONNX file that OpenVINO and ONNX Runtime both read)."""
    target = Path(target)
    example = torch.zeros(1, model.input_size, model.input_size, 3, dtype=torch.uint8)
    with atomic_path(target) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.serving_module(), (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return target


def convert_to_openvino(onnx_path: str | Path):
    """The OpenVINO model of the ONNX file: same graph, same folded preprocessing, batch dynamic."""
    import openvino as ov

    return ov.convert_model(str(onnx_path))


def save_ir(ov_model, xml_path: str | Path) -> Path:
    """Save model.xml/.bin; remaining float constants stored as FP16 (int8 weights stay int8)."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=True)
    return xml_path


def torch_logits(model: TrainedModel, images: np.ndarray) -> np.ndarray:
    """Reference logits of the folded graph in PyTorch eager (float32)."""
    with torch.no_grad():
        return model.serving_module()(torch.from_numpy(np.ascontiguousarray(images))).numpy()
