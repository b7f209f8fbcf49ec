"""Trained weights -> a serving graph that takes uint8 NHWC RGB images: ONNX (portable) and OpenVINO IR.

The preprocessing is folded into the torch module before export (`ServingModel`), so the ONNX file, the IR
converted from that ONNX file and every server that loads either of them do exactly the same arithmetic:
uint8 -> float32, NHWC -> NCHW, (x/255 - mean)/std. Clients send uint8 pixels, 4x fewer bytes than float32.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from visionnode.components.common.artifacts import (MODEL_METADATA_FILE, WEIGHTS_FILE, ModelMetadata,
                                                    Preprocessing, TensorSpec)
from visionnode.components.common.errors import DataError
from visionnode.components.common.jsonio import atomic_path
from visionnode.components.common.model import build_resnet, depth_from_arch

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
ONNX_OPSET = 17
_STATE_DICT_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class ServingModel(nn.Module):
    """uint8 NHWC RGB [N, S, S, 3] -> float32 logits [N, classes], normalisation inside the graph."""

    def __init__(self, classifier: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.classifier = classifier
        # (x/255 - mean)/std == (x - 255*mean) / (255*std): one subtract and one divide per pixel.
        self.register_buffer("shift", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("scale", torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        return self.classifier((x - self.shift) / self.scale)


@dataclass
class TrainedModel:
    metadata: ModelMetadata
    classifier: nn.Module   # eval mode, float32, NCHW normalised input

    def serving_module(self) -> ServingModel:
        return ServingModel(self.classifier, self.metadata.preprocessing).eval()

    @property
    def input_size(self) -> int:
        return self.metadata.preprocessing.input_size

    def input_spec(self) -> TensorSpec:
        return TensorSpec(INPUT_NAME, [-1, self.input_size, self.input_size, 3], "uint8", "NHWC")

    def output_spec(self) -> TensorSpec:
        return TensorSpec(OUTPUT_NAME, [-1, self.metadata.num_classes], "float32")


def load_trained_model(model_dir: str | Path) -> TrainedModel:
    """Read a train output dir (model.json + weights.pt) into an eval-mode torch module."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"model directory {model_dir} does not exist",
                        "pass --model the output directory of `visionnode train`")
    if not (model_dir / MODEL_METADATA_FILE).is_file():
        raise DataError(f"{model_dir} has no {MODEL_METADATA_FILE}",
                        "pass --model the output directory of `visionnode train`")
    metadata = ModelMetadata.load(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise DataError(f"{weights} does not exist",
                        "the train output is incomplete; re-run `visionnode train`")
    classifier = build_resnet(depth_from_arch(metadata.arch), metadata.num_classes)
    state = _state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    try:
        classifier.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"{weights} does not fit {metadata.arch} with {metadata.num_classes} classes "
                        f"({first})",
                        "model.json and weights.pt must come from the same train run") from None
    return TrainedModel(metadata, classifier.eval())


def _state_dict(loaded: object) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):  # a full checkpoint dict
        loaded = loaded["model"]
    if not isinstance(loaded, dict):
        raise DataError("weights.pt does not hold a state_dict", "save `model.state_dict()` in train")
    state = {}
    for key, value in loaded.items():
        for prefix in _STATE_DICT_PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = value
    return state


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
