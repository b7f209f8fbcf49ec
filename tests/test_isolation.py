"""Many runs on one cluster (one embedded S3): no run resumes another's checkpoint or overwrites its shards,
and no run's clean-up aborts another's upload in flight."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Markdown, Metrics, Model

from visionnode.components.common.artifacts import ShardManifest
from visionnode.components.common.confusion import CONFUSION_FILE
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.storage.s3 import parse_s3_uri, s3_client
from visionnode.components.common.storage.session import S3Session
from visionnode.components.common.storage.upload import abort_stale_uploads
from visionnode.components.common.tracking import PIPELINE_RUN_ENV
from visionnode.components.common.training.recipe import Recipe
from visionnode.components.local.synth import SynthConfig, synthesize_dataset
from visionnode.components.shard.config import ShardConfig
from visionnode.components.train.checkpoint import CheckpointStore, load_checkpoint
from visionnode.components.train.component import train_op
from visionnode.components.train.train import TrainConfig, train
from visionnode.components.transfer.transfer import UploadConfig, upload_shards
from visionnode.pipeline.compile import compiled_spec, dag_tasks, fed_parameter

# Small enough for seconds per run on 2 cores; everything else is the compiled pipeline's own default.
TINY_TRAIN = {"epochs": 1, "batch_size": 8, "arch": "resnet18", "res_schedule": "32:32", "precision": "fp32",
              "workers": 1, "lr": "0.01", "suggested_lr": 0.0}


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONNODE_PROGRESS", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")     # no tracking: these tests are about S3 only
    monkeypatch.delenv("VISIONNODE_MLFLOW_URI", raising=False)


@pytest.fixture()
def remote_shards(stack, bucket: str, tiny_shards: Path, tmp_path: Path) -> Path:
    """tiny_shards in the store, and the remote manifest the transfer step hands train."""
    upload_shards(UploadConfig(tiny_shards, f"s3://{bucket}/shards/tiny", output_dir=tmp_path / "remote"))
    return tmp_path / "remote"


def pipeline_train_inputs() -> dict[str, Any]:
    """What the compiled pipeline feeds train's parameters by default, typed as the component takes them."""
    spec = compiled_spec()
    root = spec["root"]["inputDefinitions"]["parameters"]
    task = dag_tasks(spec)["train-op"]["inputs"]["parameters"]  # inside the exit handler's DAG
    types = {n: p.annotation for n, p in inspect.signature(train_op.python_func).parameters.items()}
    return {name: types[name](root[parameter]["defaultValue"]) for name, source in task.items()
            if (parameter := fed_parameter(source)) in root and "defaultValue" in root[parameter]}


def run_train_task(remote: Path, out: Path, run_id: str, monkeypatch: pytest.MonkeyPatch,
                   **params: Any) -> dict[str, float]:
    """train's KFP component as a pod runs it: the run id in the environment, the pipeline's defaults."""
    monkeypatch.setenv(PIPELINE_RUN_ENV, run_id)
    values = pipeline_train_inputs() | TINY_TRAIN | params
    train_op.python_func(remote_shards=Dataset(uri=str(remote)), data_digest="",
                         model=Model(uri=str(out / "m")), metrics=Metrics(uri=str(out / "metrics")),
                         curves=HTML(uri=str(out / "curves")),
                         confusion_matrix=ClassificationMetrics(uri=str(out / "confusion")),
                         confused_pairs=Markdown(uri=str(out / "pairs")), **values)
    return json.loads((out / "metrics").read_text())


def test_two_runs_with_the_pipelines_defaults_each_train_their_full_epochs(
        remote_shards: Path, bucket: str, tmp_path: Path, monkeypatch) -> None:
    """The bug: a fixed default checkpoint prefix made run 2 restore run 1's finished checkpoint, train zero
    epochs and register run 1's weights again."""
    assert pipeline_train_inputs()["checkpoint_uri"] == ""  # the compiled default: each run its own place
    first = run_train_task(remote_shards, tmp_path / "run-1", "run-1", monkeypatch)
    second = run_train_task(remote_shards, tmp_path / "run-2", "run-2", monkeypatch)
    full = first["steps"]
    assert full > 0 and first["steps_this_run"] == second["steps_this_run"] == second["steps"] == full
    for run in ("run-1", "run-2"):
        newest = CheckpointStore(f"s3://{bucket}/checkpoints/{run}").latest()
        assert newest is not None and load_checkpoint(newest)["run"]["run_id"] == run


def small(shards: Path, out: Path, **overrides: Any) -> TrainConfig:
    values = dict(shards=str(shards), out_dir=out, epochs=1, batch_size=8, arch="resnet18",
                  res_schedule="32:32", precision="fp32", workers=1, tracking=False, recipe=Recipe(lr=0.01))
    return TrainConfig(**(values | overrides))


def test_a_shared_location_resumes_only_the_same_run_or_identical_configuration_and_data(
        remote_shards: Path, bucket: str, tmp_path: Path, monkeypatch, capsys) -> None:
    shared = f"s3://{bucket}/checkpoints/shared"
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-a")
    partial = train(small(remote_shards, tmp_path / "a", checkpoint_uri=shared, max_steps=3))
    assert partial.status == "max_steps" and partial.steps == 3

    # a retried pod of the same run: continues where it stopped
    retried = train(small(remote_shards, tmp_path / "a", checkpoint_uri=shared))
    assert retried.resumed_step == 3 and retried.steps_this_run == retried.steps - 3 > 0

    # another run with another configuration: refused, naming the run that wrote it and what differs
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-b")
    refused = r"written by run run-a with another configuration \(epochs 1 -> 2\)"
    with pytest.raises(ConfigError, match=refused):
        train(small(remote_shards, tmp_path / "b", checkpoint_uri=shared, epochs=2))
    with pytest.raises(ConfigError, match="written by run run-a with another configuration"):
        train(small(remote_shards, tmp_path / "b", checkpoint_uri=shared, recipe=Recipe(lr=0.02)))

    # another run, identical configuration and data: it continues run-a's training, and says so loudly
    capsys.readouterr()
    same = train(small(remote_shards, tmp_path / "c", checkpoint_uri=shared))
    assert same.resumed_from is not None and same.steps_this_run == 0
    assert same.top1 is not None and (tmp_path / "c" / CONFUSION_FILE).is_file()  # its outputs are complete
    assert "RESUMING ANOTHER RUN'S TRAINING" in capsys.readouterr().err


def test_a_checkpoint_of_other_data_is_refused(remote_shards: Path, messy_shards: Path, bucket: str,
                                                tmp_path: Path, monkeypatch) -> None:
    shared = f"s3://{bucket}/checkpoints/shared"
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-a")
    train(small(remote_shards, tmp_path / "a", checkpoint_uri=shared, max_steps=2))
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-b")
    with pytest.raises(ConfigError, match="written by run run-a on other data"):
        train(small(messy_shards, tmp_path / "b", checkpoint_uri=shared))


@pytest.fixture(scope="module")
def messy_shards(messy_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of the same classes as tiny_shards plus a few odd files: other data, same class index."""
    from visionnode.components.shard.shard import shard_dataset

    out = tmp_path_factory.mktemp("messy-shards")
    config = ShardConfig(data=messy_dataset.root, out=out, images_per_shard=40, max_resolution=64, workers=2,
                         readback=False)
    return Path(shard_dataset(config).out)


# -- shards: a place per data and settings; concurrent runs and their uploads ---------------------------

def test_shards_are_placed_by_data_and_settings() -> None:
    base = "s3://visionnode/shards"
    run = ShardConfig(data="s3://d/imagenet", out="", data_digest="a" * 16)
    again = ShardConfig(data="s3://elsewhere/copy", out="", data_digest="a" * 16, workers=8)
    other_data = ShardConfig(data="s3://d/imagenet", out="", data_digest="b" * 16)
    other_settings = ShardConfig(data="s3://d/imagenet", out="", data_digest="a" * 16, jpeg_quality=80)
    assert run.store_location(base) == again.store_location(base)  # same bytes: shared (workers don't count)
    assert run.store_location(base).startswith(f"{base}/{'a' * 16}/")
    places = {c.store_location(base) for c in (run, other_data, other_settings)}
    assert len(places) == 3
    with pytest.raises(ConfigError, match="data fingerprint"):
        ShardConfig(data="x", out="").store_location(base)


SHARD_TASK = """
import sys
from pathlib import Path
from kfp.dsl import Dataset, Metrics
from visionnode.components.common.storage.dataset import fingerprint_dataset
from visionnode.components.shard.component import shard_op

data, base, out = sys.argv[1:4]
shard_op.python_func(
    data_uri=data, data_digest=fingerprint_dataset(data).digest,
    shards=Dataset(uri=str(Path(out) / "shards")), metrics=Metrics(uri=str(Path(out) / "metrics")),
    shards_uri=base, images_per_shard=16, max_resolution=48, workers=1)
"""


def _shard_task(data: Path, base: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SHARD_TASK, str(data), base, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stored(manifest: ShardManifest) -> dict[str, str]:
    """key -> sha256 metadata of every shard object under the manifest's base_uri."""
    loc = parse_s3_uri(manifest.base_uri)
    client = s3_client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", []) or [] if o["Key"].endswith(".beton")]
    return {k.rsplit("/", 1)[1]: client.head_object(Bucket=loc.bucket, Key=k)["Metadata"]["sha256"]
            for k in keys}


@pytest.mark.slow
def test_concurrent_runs_keep_their_shards_apart_and_identical_ones_share_them(stack, bucket: str,
                                                                            tmp_path: Path) -> None:
    """Three shard steps at once against one store: two on different data, one on the same data as the first.
    Every prefix ends holding exactly its manifest's shards, byte for byte."""
    config = SynthConfig(classes=3, train_per_class=12, val_per_class=4, min_side=48, max_side=64)
    one = synthesize_dataset(tmp_path / "one", config).root
    two = synthesize_dataset(tmp_path / "two", SynthConfig(**{**config.__dict__, "seed": 5})).root
    base = f"s3://{bucket}/shards"
    tasks = [_shard_task(data, base, tmp_path / f"task{i}") for i, data in enumerate((one, two, one))]
    outputs = [task.communicate(timeout=600)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
    manifests = [ShardManifest.load(tmp_path / f"task{i}" / "shards") for i in range(3)]
    assert manifests[0].base_uri == manifests[2].base_uri != manifests[1].base_uri
    for manifest in manifests:
        assert _stored(manifest) == {s.file: s.sha256 for s in manifest.shards}
    assert s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads") in (None, [])


def _start_upload(bucket: str, key: str) -> str:
    """Another run's upload in flight: created, one part sent, not completed."""
    client = s3_client()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * (5 * 2**20))
    return upload


def _open_uploads(bucket: str) -> set[str]:
    return {u["UploadId"] for u in s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) or []}


def test_a_runs_clean_up_never_aborts_another_runs_upload_in_flight(stack, bucket: str, tiny_shards: Path,
                                                                    tmp_path: Path) -> None:
    """Shard prefixes are shared by runs with the same data and settings, so another run may be uploading the
    very key this run cleans up: only uploads older than the bound (left by a killed process) are aborted."""
    dest = f"s3://{bucket}/shards/tiny"
    manifest = ShardManifest.load(tiny_shards)
    in_flight = _start_upload(bucket, f"shards/tiny/{manifest.shards[0].file}")
    result = upload_shards(UploadConfig(tiny_shards, dest))
    assert result.stale_uploads_aborted == 0 and in_flight in _open_uploads(bucket)
    client = s3_client()  # and the other run can still finish it
    part = client.list_parts(Bucket=bucket, Key=f"shards/tiny/{manifest.shards[0].file}", UploadId=in_flight)
    assert [p["PartNumber"] for p in part["Parts"]] == [1]

    abandoned = _start_upload(bucket, f"shards/tiny/{manifest.shards[1].file}")
    other_key = _start_upload(bucket, "shards/other/train-00000.beton")
    session = S3Session(4, 16)
    try:
        keys = {f"shards/tiny/{s.file}" for s in manifest.shards}
        assert abort_stale_uploads(session, bucket, keys, "shards/tiny") == 0  # all younger than the bound
        assert abort_stale_uploads(session, bucket, keys, "shards/tiny", older_than_s=0) == 2
    finally:
        session.close()
    assert _open_uploads(bucket) == {other_key}, "an upload of a key not ours was aborted"
    assert abandoned not in _open_uploads(bucket)
