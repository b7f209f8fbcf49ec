"""The quantized tiny model: `int8_model` (a quantize output dir) for quantize, deploy and benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionnode.components.quantize.quantize import QuantizeConfig, QuantizeResult, quantize_model

# tiny_shards has 24 val images: one image moves top-1 by 4.2 points, so the default 1-point gate would
# fail on a single flipped image. The fixture only needs a valid INT8 model; the gate has its own test.
FIXTURE_MAX_DROP = 100.0
FIXTURE_CALIBRATION_IMAGES = 64


@pytest.fixture(scope="session")
def quantized_tiny(tiny_model: Path, tiny_shards: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> QuantizeResult:
    """The full quantize run on train's tiny model: 64 calibration images, all val images, measurements."""
    out = tmp_path_factory.mktemp("quantize") / "int8_model"
    return quantize_model(QuantizeConfig(model_dir=tiny_model, shards=str(tiny_shards), out_dir=out,
                                         calibration_images=FIXTURE_CALIBRATION_IMAGES,
                                         max_accuracy_drop=FIXTURE_MAX_DROP, perf_seconds=0.5))


@pytest.fixture(scope="session")
def int8_model(quantized_tiny: QuantizeResult) -> Path:
    """Quantize output dir: model.xml/.bin (INT8 IR), model.onnx, model.json (InferenceMetadata).

    Read-only by convention (copy before changing it)."""
    return quantized_tiny.out_dir
