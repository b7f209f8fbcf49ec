"""The trained tiny model other phases build on: `tiny_model` (a train output dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionnode.components.common.training.recipe import Recipe
from visionnode.components.train.train import TrainConfig, TrainResult, train

TINY_MODEL_EPOCHS = 2
TINY_MODEL_RESOLUTION = 64


@pytest.fixture(scope="session")
def tiny_model_result(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """ResNet-18 trained 2 epochs on tiny_shards at 64 px (fp32, no MLflow run: fast and deterministic)."""
    out = tmp_path_factory.mktemp("train") / "tiny_model"
    return train(TrainConfig(
        shards=str(tiny_shards), out_dir=out, epochs=TINY_MODEL_EPOCHS, batch_size=8, arch="resnet18",
        res_schedule=f"{TINY_MODEL_RESOLUTION}:{TINY_MODEL_RESOLUTION}", precision="fp32", resume="never",
        # 1 FFCV thread: on 2 cores, 2 numba threads fight torch's 2 intra-op threads (measured 39 s vs 16 s
        # for one epoch); the fixture must build in well under a minute.
        workers=1, tracking=False, checkpoint_uri=str(out.parent / "checkpoints"),
        recipe=Recipe(lr=0.002, warmup_epochs=0.5),  # 0.05 diverged (loss > ln 6) at batch 8
    ))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_result: TrainResult) -> Path:
    """Train output dir: weights.pt (state_dict) + model.json (ModelMetadata); read-only by convention."""
    return Path(tiny_model_result.out_dir)
