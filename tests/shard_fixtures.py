"""Shards other phases' tests build on: the tiny synthetic dataset written as FFCV shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionnode.components.shard.shard import ShardConfig, ShardResult, shard_dataset

TINY_MAX_RESOLUTION = 64
TINY_IMAGES_PER_SHARD = 40   # 96 train images -> 3 train shards (40, 40, 16); 24 val images -> 1 shard


@pytest.fixture(scope="session")
def tiny_shard_result(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> ShardResult:
    """The ShardResult of sharding `synth_dataset` (6 classes) at max side 64 (no read-back: that JIT-compiles
    FFCV's pipeline, which the tests that read shards pay for themselves)."""
    config = ShardConfig(data=synth_dataset, out=tmp_path_factory.mktemp("shards") / "tiny",
                         images_per_shard=TINY_IMAGES_PER_SHARD, max_resolution=TINY_MAX_RESOLUTION,
                         workers=2, readback=False)
    return shard_dataset(config)


@pytest.fixture(scope="session")
def tiny_shards(tiny_shard_result: ShardResult) -> Path:
    """Shard dir (manifest.json + train-0000N.beton x3 + val-00000.beton); read-only by convention."""
    return tiny_shard_result.out
