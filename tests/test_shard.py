"""shard: FFCV shards + manifest from ImageNet-layout trees, and the ffcv_io readers other phases use."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from ffcv.reader import Reader
from typer.testing import CliRunner

from tests.data_fixtures import MessyDataset
from tests.shard_fixtures import TINY_IMAGES_PER_SHARD, TINY_MAX_RESOLUTION
from visionnode.components.common.artifacts import ShardManifest
from visionnode.components.common.data.beton_writer import (
    JPEG_MODE,
    MIN_PAGE_SIZE,
    encode_image,
    shard_fields,
    write_beton,
)
from visionnode.components.common.data.ffcv_io import (
    IMAGE_FIELD,
    LABEL_FIELD,
    flip_normalize_op,
    normalize_op,
    train_loader,
    uint8_batches,
    val_loader,
)
from visionnode.components.common.data.imagenet import open_imagenet
from visionnode.components.common.data.images import load_rgb_array, resize_max_side
from visionnode.components.common.errors import DataError
from visionnode.components.common.jsonio import sha256_file
from visionnode.components.shard.shard import JOURNAL_FILE, ShardConfig, ShardResult, shard_dataset
from visionnode.pipeline.cli import app

CLASSES = 6


def _shard(data: Path, out: Path, **overrides) -> ShardResult:
    settings = dict(images_per_shard=TINY_IMAGES_PER_SHARD, max_resolution=TINY_MAX_RESOLUTION, workers=2,
                    readback=False)
    settings.update(overrides)
    return shard_dataset(ShardConfig(data=data, out=out, **settings))


def _shas(directory: Path) -> dict[str, str]:
    return {s.file: s.sha256 for s in ShardManifest.load(directory).shards}


# -- the plain function ---------------------------------------------------------------------------------

def test_tiny_shards_manifest_matches_files(tiny_shards: Path, tiny_shard_result: ShardResult) -> None:
    manifest = ShardManifest.load(tiny_shards)
    assert [s.file for s in manifest.shards_for("train")] == ["train-00000.beton", "train-00001.beton",
                                                               "train-00002.beton"]
    assert [s.count for s in manifest.shards_for("train")] == [40, 40, 16]
    assert manifest.images_in("val") == 24 and manifest.classes.num_classes == CLASSES
    for shard in manifest.shards:
        path = tiny_shards / shard.file
        assert shard.bytes == path.stat().st_size and shard.sha256 == sha256_file(path)
        assert sum(shard.class_histogram.values()) == shard.count
    # shards are cut from a shuffled file list: the first train shard already mixes every class
    assert len(manifest.shards_for("train")[0].class_histogram) == CLASSES
    assert manifest.settings["max_resolution"] == TINY_MAX_RESOLUTION
    assert manifest.settings["jpeg_quality"] == 90 and manifest.settings["images_per_shard"] == 40
    assert manifest.skipped == [] and manifest.empty_classes == []
    assert tiny_shard_result.write_images_per_s > 0 and tiny_shard_result.shards_written == 4


def test_shards_are_read_back_with_the_ffcv_train_pipeline(synth_dataset: Path, tmp_path: Path) -> None:
    result = _shard(synth_dataset, tmp_path / "val", split="val", images_per_shard=12, workers=1,
                    readback=True)
    assert result.readback_resolution == TINY_MAX_RESOLUTION
    assert result.loader_images_per_s is not None and result.loader_images_per_s > 0
    assert result.loader_warmup_s is not None and result.loader_warmup_s > 0


def test_messy_tree_skips_bad_files_with_reasons(messy_dataset: MessyDataset, tmp_path: Path) -> None:
    result = _shard(messy_dataset.root, tmp_path / "out", split="train")
    manifest = ShardManifest.load(result.manifest)

    reasons = {s.path: s.reason for s in manifest.skipped}
    assert set(reasons) == set(messy_dataset.bad_files)
    expected_words = {"truncated": "truncated", "empty": "empty", "not an image": "not an image"}
    for path, kind in messy_dataset.bad_files.items():
        assert expected_words[kind] in reasons[path]
    assert manifest.empty_classes == [messy_dataset.empty_class]
    assert result.splits["train"].empty_classes == [messy_dataset.empty_class]
    # CMYK, grey and PNG-as-JPEG are converted and written; counts reconcile
    train = result.splits["train"]
    assert train.images_written == messy_dataset.good_files == manifest.images_in("train")
    assert train.files_skipped == len(messy_dataset.bad_files)
    assert train.images_written + train.files_skipped == train.files_found
    assert result.images_written + result.files_skipped == result.files_found


def test_same_input_gives_byte_identical_shards(synth_dataset: Path, tiny_shards: Path,
                                                tmp_path: Path) -> None:
    again = _shard(synth_dataset, tmp_path / "again")
    assert _shas(again.out) == _shas(tiny_shards)
    assert {f: sha256_file(again.out / f) for f in _shas(again.out)} == _shas(tiny_shards)


def test_rerun_reuses_verified_shards_and_rewrites_a_corrupted_one(synth_dataset: Path, tiny_shards: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "resume"
    shutil.copytree(tiny_shards, out)
    expected = _shas(tiny_shards)
    with open(out / "train-00001.beton", "r+b") as fh:  # flip bytes inside the image data
        fh.seek(out.joinpath("train-00001.beton").stat().st_size // 2)
        fh.write(b"\x00corrupted\x00")
    (out / ".train-00002.beton.abc123.partial").write_bytes(b"left by a killed run")

    result = _shard(synth_dataset, out)

    assert (result.shards_reused, result.shards_written) == (len(expected) - 1, 1)
    assert _shas(out) == expected
    assert {f: sha256_file(out / f) for f in expected} == expected
    assert not list(out.glob("*.partial")), "stale temp files are removed"


def _files_on_disk(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.glob("*.beton"))}


@pytest.mark.parametrize("changed", [{"jpeg_quality": 75}, {"max_resolution": 48}, {"images_per_shard": 50}],
                         ids=lambda changed: next(iter(changed)))
def test_rerun_with_other_settings_rebuilds_as_a_fresh_run_would(changed: dict, synth_dataset: Path,
                                                                 tiny_shards: Path, tmp_path: Path) -> None:
    """Shards made with other settings are never reused: the re-run's output is byte for byte a fresh run's
    (images_per_shard 50 also cuts one train shard fewer, so the old third one must go)."""
    out = tmp_path / "rerun"
    shutil.copytree(tiny_shards, out)

    result = _shard(synth_dataset, out, **changed)
    fresh = _shard(synth_dataset, tmp_path / "fresh", **changed)

    assert (result.shards_reused, result.shards_written) == (0, fresh.shards_written)
    assert _files_on_disk(out) == _files_on_disk(fresh.out) == _shas(fresh.out)
    assert (out / "manifest.json").read_bytes() == (fresh.out / "manifest.json").read_bytes()
    assert ShardManifest.load(out).settings.items() >= changed.items()


def _rewrite_mirrored(image: Path) -> None:
    from PIL import Image

    with Image.open(image) as original:
        mirrored = original.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored.save(image, "JPEG", quality=80)


def test_rerun_after_a_source_image_changed_rebuilds_only_its_shard(synth_dataset: Path, tiny_shards: Path,
                                                                      tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(synth_dataset, data)  # copies keep mtimes, so the journal still matches the sources
    shutil.copytree(tiny_shards, out)
    assert _shard(data, out).shards_reused == len(_shas(tiny_shards))
    _rewrite_mirrored(sorted((data / "train").rglob("*.JPEG"))[7])

    result = _shard(data, out)
    fresh = _shard(data, tmp_path / "fresh")

    assert (result.shards_reused, result.shards_written) == (len(_shas(tiny_shards)) - 1, 1)
    assert _files_on_disk(out) == _files_on_disk(fresh.out) == _shas(fresh.out)
    assert (out / "manifest.json").read_bytes() == (fresh.out / "manifest.json").read_bytes()
    changed = {name for name, sha in _shas(out).items() if _shas(tiny_shards)[name] != sha}
    assert len(changed) == 1 and changed.pop().startswith("train-")


@pytest.mark.parametrize("workers", [1, 3])
def test_one_two_and_three_workers_write_byte_identical_shards_and_manifest(workers: int, synth_dataset: Path,
                                                                            tiny_shards: Path,
                                                                            tmp_path: Path) -> None:
    other = _shard(synth_dataset, tmp_path / f"{workers}-workers", workers=workers)  # tiny_shards: 2 workers
    assert _files_on_disk(other.out) == _files_on_disk(tiny_shards) == _shas(tiny_shards)
    assert (other.out / "manifest.json").read_bytes() == (tiny_shards / "manifest.json").read_bytes()


def test_shard_files_are_the_bytes_ffcvs_own_writer_writes(synth_dataset: Path, tmp_path: Path) -> None:
    """write_beton drives FFCV's writer code in-process; FFCV's DatasetWriter (one worker, its own image
    encoder) must give the same file for the same resized images, labels and page size."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.writer import DatasetWriter

    records = open_imagenet(synth_dataset).scan("train").records[:30]
    arrays = [(resize_max_side(load_rgb_array(r.path), TINY_MAX_RESOLUTION), r.label) for r in records]
    ours = write_beton(tmp_path / "ours.beton", [(encode_image(a, 90), label) for a, label in arrays],
                       TINY_MAX_RESOLUTION, 90)
    fields = shard_fields(TINY_MAX_RESOLUTION, 90)
    DatasetWriter(str(tmp_path / "ffcv.beton"), fields, page_size=MIN_PAGE_SIZE,
                  num_workers=1).from_indexed_dataset(arrays)
    assert ours.read_bytes() == (tmp_path / "ffcv.beton").read_bytes()
    assert JPEG_MODE == IMAGE_MODES["jpg"]
    assert not list(tmp_path.glob(".*.partial"))


def test_killed_run_never_leaves_a_complete_looking_file(synth_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "visionnode.pipeline.cli", "shard", "--data", str(synth_dataset), "--out",
           str(out), "--images-per-shard", "8", "--max-resolution", "64", "--no-readback"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "VISIONNODE_PROGRESS": "0"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _journaled(out) < 2:  # a shard is renamed, then journaled
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the CLI and its decode pool
        proc.wait()
    assert not (out / "manifest.json").exists()
    journal = json.loads((out / JOURNAL_FILE).read_text())["entries"]
    for shard in out.glob("*.beton"):  # every file under a final name is complete (journaled or not yet)
        if shard.name in journal:
            assert sha256_file(shard) == journal[shard.name]["sha256"]
        assert Reader(str(shard)).num_samples == 8

    result = _shard(synth_dataset, out, images_per_shard=8)
    assert result.shards_reused >= 2 and result.images_written == 96 + 24
    assert not list(out.glob("*.partial"))


def _journaled(out: Path) -> int:
    try:
        return len(json.loads((out / JOURNAL_FILE).read_text())["entries"])
    except (OSError, ValueError, KeyError):
        return 0


def test_bad_settings_and_missing_split_are_user_errors(synth_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _shard(tmp_path / "nowhere", tmp_path / "out")
    only_train = tmp_path / "only-train"
    shutil.copytree(synth_dataset / "train", only_train / "train")
    with pytest.raises(DataError, match="no val/ folder"):
        _shard(only_train, tmp_path / "out")


# -- the readers other phases use ------------------------------------------------------------------------

def test_train_loader_yields_normalised_nchw_batches_and_resizes(tiny_shards: Path) -> None:
    manifest = ShardManifest.load(tiny_shards)
    paths = [tiny_shards / s.file for s in manifest.shards_for("train")]
    loader = train_loader(paths, batch_size=8, resolution=32, workers=1, seed=3)
    assert len(loader) == sum(s.count // 8 for s in manifest.shards_for("train")) == 12

    batches = [(images.clone(), labels.clone()) for images, labels in loader]
    assert len(batches) == len(loader)
    images, labels = batches[0]
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (8,) and labels.dtype == torch.int64
    all_labels = torch.cat([b[1] for b in batches])
    assert set(all_labels.tolist()) <= set(range(CLASSES)) and len(set(all_labels.tolist())) == CLASSES
    pixels = torch.cat([b[0] for b in batches])
    assert -3.0 < float(pixels.mean()) < 3.0 and 0.3 < float(pixels.std()) < 3.0  # normalised, not 0..255

    loader.set_resolution(48)
    images, _ = next(iter(loader))
    assert images.shape == (8, 3, 48, 48)


def test_an_epoch_keeps_at_most_one_shard_memory_mapped(tiny_shards: Path) -> None:
    """FFCV maps a whole .beton and never unmaps it; the loader drops each shard's Loader once the shard is
    read, so resident memory does not grow with the dataset (benchmarks/bench_scale.py)."""
    import gc

    def mappings() -> int:
        return sum(line.endswith(".beton") for line in Path("/proc/self/maps").read_text().splitlines())

    paths = [tiny_shards / s.file for s in ShardManifest.load(tiny_shards).shards_for("train")]
    assert len(paths) > 1
    gc.collect()
    before = mappings()  # other tests' Loaders may still be alive
    loader = train_loader(paths, batch_size=8, resolution=32, workers=1, seed=3)
    for epoch in range(2):
        during = [mappings() - before for _ in loader]
        assert len(during) == len(loader) and max(during) == 1, (epoch, during)
        assert mappings() <= before, epoch


def test_fused_flip_normalize_equals_stock_normalize_flipped_or_not(tiny_shards: Path) -> None:
    """The training pipeline's flip+normalise pass gives NormalizeImage's floats, mirrored for about half."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    def batches(operation):
        decoder = CenterCropRGBImageDecoder((32, 32), ratio=1.0)
        first_train = ShardManifest.load(tiny_shards).shards_for("train")[0].file
        loader = Loader(str(tiny_shards / first_train), batch_size=16, num_workers=1,
                        order=OrderOption.SEQUENTIAL,
                        pipelines={IMAGE_FIELD: [decoder, operation, ToTensor()], LABEL_FIELD: None})
        return np.concatenate([images.numpy() for images, *_ in loader])

    stock, fused = batches(normalize_op()), batches(flip_normalize_op())
    assert fused.dtype == np.float32 and fused.shape == stock.shape
    same = [np.array_equal(f, s) for f, s in zip(fused, stock)]
    mirrored = [np.array_equal(f, s[:, ::-1]) for f, s in zip(fused, stock)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 0 < sum(m and not s for m, s in zip(mirrored, same)) < len(fused)


def test_the_model_computes_on_every_usable_cpu_however_many_threads_ffcv_decodes_with(
        tiny_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FFCV sets torch's thread count to its decoder count on every epoch (1 here); the batches it yields are
    computed on with the usable CPUs (3, as this process is told) instead."""
    from visionnode.components.common import cpus

    monkeypatch.setattr(cpus, "usable_cpus", lambda: 3)
    manifest = ShardManifest.load(tiny_shards)
    loader = train_loader([tiny_shards / s.file for s in manifest.shards_for("train")], batch_size=8,
                          resolution=32, workers=1, seed=3)
    seen = {torch.get_num_threads() for _ in loader}
    assert seen == {3}, seen


@pytest.mark.parametrize("cpu_max, quota", [("150000 100000\n", 1.5), ("max 100000\n", None), (None, None)])
def test_a_pods_cpu_limit_caps_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          cpu_max: str | None, quota: float | None) -> None:
    import math

    from visionnode.components.common import cpus

    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert cpus.cgroup_cpu_quota(path) == quota
    monkeypatch.setattr(cpus, "CGROUP_CPU_MAX", path)
    affinity = len(os.sched_getaffinity(0))
    assert cpus.usable_cpus() == (min(affinity, math.ceil(quota)) if quota else affinity)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus.usable_cpus() + 1))  # more processes than CPUs: 1 each
    assert cpus.compute_threads() == 1


def test_val_loader_and_uint8_batches_cover_val_in_order(tiny_shards: Path) -> None:
    manifest = ShardManifest.load(tiny_shards)
    paths = [tiny_shards / s.file for s in manifest.shards_for("val")]
    histogram = Counter({k: v for s in manifest.shards_for("val") for k, v in s.class_histogram.items()})

    loader = val_loader(paths, batch_size=10, resolution=40, workers=1)
    batches = [(images.clone(), labels.clone()) for images, labels in loader]
    assert len(loader) == len(batches) == 3 and batches[-1][0].shape == (4, 3, 40, 40)
    labels = torch.cat([b[1] for b in batches])
    assert Counter(labels.tolist()) == histogram

    chunks = list(uint8_batches(paths, batch_size=8, resolution=40, workers=1))
    assert [len(c[0]) for c in chunks] == [8, 8, 8]
    images, raw_labels = chunks[0]
    assert images.shape == (8, 40, 40, 3) and images.dtype == np.uint8 and raw_labels.dtype == np.int64
    assert np.concatenate([c[1] for c in chunks]).tolist() == labels.tolist()  # same order as val_loader
    # val_loader is uint8_batches normalised: one preprocessing definition
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std
    assert torch.allclose(batches[0][0][:8], expected, atol=1e-3)

    limited = list(uint8_batches(paths, batch_size=8, resolution=40, limit=10, workers=1))
    assert [len(c[0]) for c in limited] == [8, 2]


def test_distributed_loader_needs_a_process_group_and_splits_by_rank(tiny_shards: Path,
                                                                     tmp_path: Path) -> None:
    import torch.distributed as dist

    paths = [tiny_shards / s.file for s in ShardManifest.load(tiny_shards).shards_for("train")]
    with pytest.raises(DataError, match="process group"):
        train_loader(paths, 8, 32, 1, distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = train_loader(paths, 8, 32, 1, distributed=True)
        assert len(loader) == 12 and sum(1 for _ in loader) == 12
    finally:
        dist.destroy_process_group()


def _rank_labels(rank: int, world: int, paths: list[str], rendezvous: str, out_dir: str, epochs: int) -> None:
    """One DDP rank (spawned): the labels its train loader yields, per epoch, written to
    out_dir/<rank>.json."""
    import torch.distributed as dist

    from visionnode.components.common.data.ffcv_io import train_loader

    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        loader = train_loader(paths, 4, 32, 1, distributed=True, seed=5)
        seen = [[int(label) for _, labels in loader for label in labels.reshape(-1)] for _ in range(epochs)]
        Path(out_dir, f"{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


def test_two_ranks_read_disjoint_parts_that_cover_every_shard(tmp_path: Path) -> None:
    """Two gloo processes as DDP runs them. One image per class, so a label names its image: in every epoch
    the ranks' images are disjoint and together are the whole train split (a rank-dependent order would
    overlap)."""
    import torch.multiprocessing as mp

    from visionnode.components.local.synth import SynthConfig, synthesize_dataset

    synthesize_dataset(tmp_path / "data", SynthConfig(classes=16, train_per_class=1, val_per_class=1, seed=3,
                                                      min_side=40, max_side=48))
    _shard(tmp_path / "data", tmp_path / "shards", images_per_shard=8, max_resolution=48, split="train")
    train_shards = ShardManifest.load(tmp_path / "shards").shards_for("train")
    paths = [str(tmp_path / "shards" / s.file) for s in train_shards]
    assert len(paths) == 2
    mp.spawn(_rank_labels, args=(2, paths, f"file://{tmp_path / 'pg'}", str(tmp_path), 2), nprocs=2)
    per_rank = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    for epoch in range(2):
        first, second = per_rank[0][epoch], per_rank[1][epoch]
        assert len(first) == len(second) == 8 and not set(first) & set(second), per_rank
        assert sorted(first + second) == list(range(16)), per_rank
    assert per_rank[0][0] != per_rank[0][1], "the second epoch repeated the first one's order"


# -- CLI and KFP adapters --------------------------------------------------------------------------------

def test_cli_writes_shards_and_json(synth_dataset: Path, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["shard", "--data", str(synth_dataset), "--out", str(tmp_path / "s"),
                                      "--split", "val", "--images-per-shard", "10", "--max-resolution", "48",
                                      "--workers", "1", "--no-readback", "--json", str(summary)])
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert (data["images_written"], data["shards"], data["files_skipped"]) == (24, 3, 0)
    assert [s.count for s in ShardManifest.load(tmp_path / "s").shards] == [10, 10, 4]


def test_cli_names_the_skipped_files_without_json(messy_dataset: MessyDataset, tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = CliRunner().invoke(app, ["shard", "--data", str(messy_dataset.root), "--out", str(out),
                                      "--split", "train", "--workers", "1", "--no-readback"])
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if line.startswith("warning:"))
    assert f"{len(messy_dataset.bad_files)} unreadable files" in warning
    shown = [path for path in messy_dataset.bad_files if path in warning]
    assert len(shown) == min(3, len(messy_dataset.bad_files)), warning


def test_cli_user_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "visionnode.pipeline.cli", "shard", "--data",
                             str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: dataset directory") and "does not exist" in lines[0]


def test_cli_rejects_bad_split(synth_dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["shard", "--data", str(synth_dataset), "--out", str(tmp_path / "o"),
                                      "--split", "test"])
    assert result.exit_code == 2
    assert "error: --split 'test' is not known (use one of train, val, both" in result.output
