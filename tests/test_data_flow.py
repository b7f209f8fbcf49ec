"""No whole-dataset copies: the raw data is read where it lies and each shard byte crosses the network at most
twice between shard and train's first read. Counted with the S3 client's own request events (storage.s3
TRAFFIC), against the embedded S3."""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionnode.components.common.artifacts import ShardManifest
from visionnode.components.common.storage.dataset import fingerprint_dataset
from visionnode.components.common.storage.s3 import TRAFFIC, s3_client
from visionnode.components.common.storage.shard_cache import materialize_shards
from visionnode.components.shard.config import ShardConfig
from visionnode.components.shard.shard import shard_dataset
from visionnode.components.transfer.transfer import PlaceConfig, place_shards
from visionnode.components.validate.config import ValidateConfig
from visionnode.components.validate.data import IMAGES_PER_SAMPLED_CLASS
from visionnode.components.validate.validate import run_checks

CLASSES, PER_CLASS = 10, 1000            # 10,000 images: ten listing pages of 1,000 keys
SUBSET = 32
SHARD_BYTES = ("PutObject", "UploadPart")


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONNODE_PROGRESS", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("VISIONNODE_MLFLOW_URI", raising=False)


def _tiny_jpegs(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        pixels = (rng.random((24, 24, 3)) * 80 + (i % CLASSES) * 17).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
        out.append(buffer.getvalue())
    return out


@pytest.fixture()
def s3_dataset_10k(stack, bucket: str) -> str:
    """10,000 tiny JPEGs in ImageNet layout under s3://bucket/imagenet (train/<wnid>/...)."""
    images = _tiny_jpegs(CLASSES * 4)
    client = s3_client()
    keys = [(f"imagenet/train/n{c:08d}/n{c:08d}_{i:05d}.JPEG", images[c * 4 + i % 4])
            for c in range(CLASSES) for i in range(PER_CLASS)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), keys))
    return f"s3://{bucket}/imagenet"


@pytest.mark.slow
def test_validate_lists_and_reads_only_its_sampled_classes_of_a_10k_s3_dataset(s3_dataset_10k: str) -> None:
    fingerprint = fingerprint_dataset(s3_dataset_10k)
    assert fingerprint.files == CLASSES * PER_CLASS
    assert fingerprint.list_requests >= math.ceil(CLASSES * PER_CLASS / 1000)  # paginated, 1,000 keys a page

    before = TRAFFIC.snapshot()
    result = run_checks(ValidateConfig(data=s3_dataset_10k, subset=SUBSET, image_size=32, steps=4,
                                       batch_size=8, lr_probe_steps=0, workers=0, profile_batches=1))
    moved = TRAFFIC.since(before)
    sampled = SUBSET // IMAGES_PER_SAMPLED_CLASS
    assert (result.num_classes, result.classes_sampled) == (CLASSES, sampled)
    assert result.images_listed == sampled * PER_CLASS and result.images_used == SUBSET
    # one page for train/'s class folders, one for each sampled class's folder: not the 10 pages of the tree
    assert moved.requests["ListObjectsV2"] == result.list_requests == 1 + sampled, dict(moved.requests)
    assert moved.requests["GetObject"] == SUBSET, dict(moved.requests)  # the subset, and nothing else
    subset_bytes = moved.bytes_in["GetObject"]
    assert 0 < subset_bytes <= SUBSET * max(len(b) for b in _tiny_jpegs(CLASSES * 4))
    assert not moved.bytes_out["PutObject"] and not moved.requests["UploadPart"]


@pytest.mark.slow
def test_each_shard_byte_crosses_the_network_twice_from_shard_to_trains_first_read(
        stack, bucket: str, synth_dataset: Path, tmp_path: Path) -> None:
    """shard writes into the store (1), transfer verifies in place (0), train fetches (2)."""
    digest = fingerprint_dataset(synth_dataset).digest
    config = ShardConfig(data=synth_dataset, out="", images_per_shard=40, max_resolution=64, workers=2,
                         readback=False, data_digest=digest, manifest_copy=tmp_path / "shard-artifact")
    config.out = config.store_location(f"s3://{bucket}/shards")

    before = TRAFFIC.snapshot()
    result = shard_dataset(config)
    sharded = TRAFFIC.since(before)
    assert {p.name for p in (tmp_path / "shard-artifact").iterdir()} == {"manifest.json"}, "manifest only"

    before = TRAFFIC.snapshot()
    placed = place_shards(PlaceConfig(tmp_path / "shard-artifact", data_digest=digest,
                                      output_dir=tmp_path / "remote"))
    verified = TRAFFIC.since(before)

    before = TRAFFIC.snapshot()
    local = materialize_shards(tmp_path / "remote", tmp_path / "train-cache")
    fetched = TRAFFIC.since(before)

    total = result.total_bytes
    manifest = ShardManifest.load(local)
    assert manifest.total_bytes == total and len(manifest.shards) == result.shards >= 4
    up = sum(sharded.bytes_out[op] for op in SHARD_BYTES)
    down = fetched.bytes_in["GetObject"]
    small_files = 64 * 1024  # manifest.json and the shard journal, a few KB each
    assert total <= up <= total + small_files, (up, total)
    assert total <= down <= total + small_files, (down, total)
    assert sum(verified.bytes_out.values()) == 0 and verified.bytes_in["GetObject"] == 0, "transfer copied"
    assert placed.direction == "verify" and placed.bytes_transferred == 0
    assert (up + sum(verified.bytes_in.values()) + down) / total <= 2.05
