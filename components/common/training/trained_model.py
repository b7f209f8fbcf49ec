"""A train output dir as an eval-mode torch module, and its serving form that takes uint8 NHWC images.

The normalisation is inside the serving graph;
quantize exports it, benchmark times it as the PyTorch baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from visionnode.components.common.artifacts import (
    MODEL_METADATA_FILE,
    WEIGHTS_FILE,
    ModelMetadata,
    Preprocessing,
    TensorSpec,
)
from visionnode.components.common.errors import DataError
from visionnode.components.common.training.archs import depth_from_arch
from visionnode.components.common.training.model import build_resnet

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
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
