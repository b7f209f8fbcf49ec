"""The shared building blocks: ImageNet reader, robust decoding, synthetic data, model factory, tracking,
the LR probe and the accuracy statistics."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionnode.components.common.adapters.kfp import confusion_views
from visionnode.components.common.confusion import CONFUSED_PAIRS_FILE, MAX_MATRIX_CLASSES, Confusion
from visionnode.components.common.data.imagenet import WNID_PATTERN, open_imagenet
from visionnode.components.common.data.images import UnreadableImage, load_rgb, load_rgb_array
from visionnode.components.common.errors import ConfigError, DataError
from visionnode.components.common.jsonio import atomic_path, read_json, write_json
from visionnode.components.common.settings import (
    ENDPOINT_ENV,
    named_in_environment,
    resolve_endpoints,
    service_env,
)
from visionnode.components.common.stats import mcnemar_exact_p, paired_drop_lower_bound, wilson_interval
from visionnode.components.common.tracking import tracked_run
from visionnode.components.common.training.lr_probe import (
    Judgement,
    LRProbeConfig,
    mini_schedule_factor,
    probe_lr,
    promise_note,
    suggestion,
    with_paired_gaps,
)
from visionnode.components.common.training.model import RESNET152_PARAMETERS, build_resnet, count_parameters
from visionnode.components.local.synth import SynthConfig, synthesize_dataset
from visionnode.components.local.synth_imagenet import (
    IMAGENET_MEAN_BYTES,
    IMAGENET_MEAN_SIZE,
    ImageNetSynthConfig,
    synthesize_imagenet,
)


def test_reader_indexes_classes_like_torchvision(synth_dataset: Path) -> None:
    from torchvision.datasets import ImageFolder

    layout = open_imagenet(synth_dataset)
    reference = ImageFolder(str(synth_dataset / "train"))
    assert layout.classes.wnids == reference.classes
    scan = layout.scan("train")
    assert [(str(r.path), r.label) for r in scan.records] == [(p, i) for p, i in reference.samples]
    assert layout.classes.names[0].startswith("synthetic")


def test_reader_reads_flat_val_with_solution_csv(tmp_path: Path) -> None:
    root = synthesize_dataset(tmp_path / "flat", SynthConfig(classes=3, train_per_class=2, val_per_class=3,
                                                             min_side=48, max_side=64, flat_val=True)).root
    assert not any(p.is_dir() for p in (root / "val").iterdir())
    layout = open_imagenet(root)
    val = layout.scan("val")
    assert len(val.records) == 9
    assert sorted({r.label for r in val.records}) == [0, 1, 2]
    assert all(r.path.stem.startswith("VN_val_") for r in val.records)


def test_reader_reports_empty_class_and_rejects_non_imagenet(messy_dataset, tmp_path: Path) -> None:
    scan = open_imagenet(messy_dataset.root).scan("train")
    assert scan.empty_classes == [messy_dataset.empty_class]
    with pytest.raises(DataError, match="not in ImageNet layout"):
        open_imagenet(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        open_imagenet(tmp_path / "missing")
    with pytest.raises(DataError, match="holds class folders of images itself") as given_train:
        open_imagenet(messy_dataset.root / "train")
    assert "pass the folder above it" in given_train.value.hint


def test_decoder_converts_odd_images_and_names_bad_ones(messy_dataset) -> None:
    wnid_dir = next(p.parent for p in messy_dataset.root.rglob("cmyk.JPEG"))
    readable = sorted(p.name for p in wnid_dir.iterdir()
                      if f"train/{wnid_dir.name}/{p.name}" not in messy_dataset.bad_files)
    assert {"cmyk.JPEG", "grey.JPEG", "png_inside.JPEG"} < set(readable)
    for name in readable:
        image = load_rgb(wnid_dir / name)
        assert image.mode == "RGB" and image.width > 0
        array = load_rgb_array(wnid_dir / name)  # shard's decoder: the same pixels, one copy fewer
        assert array.dtype == np.uint8 and np.array_equal(array, np.asarray(image))
    reasons = {}
    for rel in messy_dataset.bad_files:
        with pytest.raises(UnreadableImage) as info:
            load_rgb(messy_dataset.root / rel)
        reasons[rel] = info.value.reason
        with pytest.raises(UnreadableImage, match=re.escape(info.value.reason)):
            load_rgb_array(messy_dataset.root / rel)
    assert any("empty" in r for r in reasons.values())
    assert any("truncated" in r for r in reasons.values())
    assert any("not an image" in r for r in reasons.values())


def test_synth_is_deterministic_and_varied(tmp_path: Path) -> None:
    config = SynthConfig(classes=4, train_per_class=3, val_per_class=1, seed=3, min_side=48, max_side=120)
    a = synthesize_dataset(tmp_path / "a", config).root
    b = synthesize_dataset(tmp_path / "b", config).root
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.JPEG"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    sizes = {Image.open(a / f).size for f in files_a}
    assert len(sizes) > 5, "images should vary in size and aspect ratio"


def test_synth_signal_is_learnable_but_not_trivial(synth_dataset: Path) -> None:
    """Mean colour alone (a trivial feature) must not separate the classes perfectly."""
    layout = open_imagenet(synth_dataset)
    feats, labels = [], []
    for record in layout.scan("train").records:
        feats.append(np.asarray(load_rgb(record.path).resize((32, 32)), dtype=np.float32).mean(axis=(0, 1)))
        labels.append(record.label)
    feats, labels = np.stack(feats), np.array(labels)
    centroids = np.stack([feats[labels == c].mean(0) for c in range(layout.classes.num_classes)])
    nearest = np.argmin(((feats[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (nearest == labels).mean()
    assert accuracy < 0.9, f"mean colour alone classifies {accuracy:.0%}: the task is trivial"


def test_imagenet_shaped_synth_is_deterministic_whatever_the_worker_count(tmp_path: Path) -> None:
    config = ImageNetSynthConfig(classes=3, train_per_class=4, val_per_class=2, seed=7, workers=1)
    one = synthesize_imagenet(tmp_path / "one", config).root
    two = synthesize_imagenet(tmp_path / "two", replace(config, workers=2)).root
    other = synthesize_imagenet(tmp_path / "other", replace(config, seed=8)).root
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".JPEG"]) == 3 * (4 + 2)
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    jpegs = [f for f in files if f.suffix == ".JPEG"]
    assert all((one / f).read_bytes() != (other / f).read_bytes() for f in jpegs)


@pytest.mark.parametrize("flat_val", [False, True])
def test_imagenet_shaped_synth_is_read_by_the_shard_and_validate_scanner(tmp_path: Path,
                                                                         flat_val: bool) -> None:
    from visionnode.components.common.storage.dataset import fingerprint_dataset

    root = synthesize_imagenet(tmp_path / "data", ImageNetSynthConfig(classes=5, train_per_class=3,
                                                                      val_per_class=2, workers=2,
                                                                      flat_val=flat_val)).root
    layout = open_imagenet(root)
    assert layout.classes.num_classes == 5
    assert all(WNID_PATTERN.match(w) for w in layout.classes.wnids)
    train, val = layout.scan("train"), layout.scan("val")
    assert len(train.records) == 15 and not train.empty_classes
    assert len(val.records) == 10 and not val.unlabelled and not val.empty_classes
    assert sorted({r.label for r in val.records}) == list(range(5))
    assert fingerprint_dataset(root).files == 25 + 1 + flat_val  # images, synset mapping, val solution
    for record in train.records[:3] + val.records[:3]:
        assert load_rgb(record.path).mode == "RGB"


def test_imagenet_shaped_synth_has_imagenets_mean_size_and_bytes(tmp_path: Path) -> None:
    """A 300-image sample: means within 6 % (sizes) and 15 % (bytes) of ImageNet's; sizes, ratios vary."""
    result = synthesize_imagenet(tmp_path / "data", ImageNetSynthConfig(classes=30, train_per_class=10,
                                                                        workers=2))
    files = sorted(result.root.rglob("*.JPEG"))
    sizes = np.array([Image.open(f).size for f in files])
    kb = np.array([f.stat().st_size for f in files]) / 1000
    assert len(files) == 300 and result.mean_width == pytest.approx(sizes[:, 0].mean())
    assert result.mean_kb == pytest.approx(kb.mean())
    width, height = IMAGENET_MEAN_SIZE
    assert abs(sizes[:, 0].mean() / width - 1) < 0.06, sizes.mean(0)
    assert abs(sizes[:, 1].mean() / height - 1) < 0.06, sizes.mean(0)
    assert abs(kb.mean() * 1000 / IMAGENET_MEAN_BYTES - 1) < 0.15, kb.mean()
    assert (sizes.max(1) == 500).mean() > 0.5, "most ImageNet images have a 500-px longer side"
    assert 0.65 < (sizes[:, 0] > sizes[:, 1]).mean() < 0.9, "mostly landscape"
    assert len({tuple(s) for s in sizes}) > 30 and kb.std() > 10


@pytest.mark.parametrize("args, message", [
    (["--classes", "1001"], "error: --classes 1001 is out of range (use 2..1000)"),
    (["--workers", "0"], "error: --workers 0 must be at least 1 (use the number of CPU cores)"),
    (["--train-per-class", "0"],
     "error: images per class must be positive (use --train-per-class >= 1 and --val-per-class >= 0)"),
])
def test_imagenet_shaped_synth_rejects_bad_options_in_one_line(tmp_path: Path, args: list[str],
                                                               message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "visionnode.pipeline.cli", "data", "synth-imagenet",
                             str(tmp_path / "x"), *args], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "x").exists()


def test_resnet152_has_the_reference_parameter_count() -> None:
    model = build_resnet()
    assert count_parameters(model) == RESNET152_PARAMETERS
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


def test_a_narrow_resnet_is_torchvisions_with_fewer_channels() -> None:
    from torchvision import models

    from visionnode.components.common.training.model import NarrowResNet

    torch.manual_seed(0)
    reference = models.resnet18(num_classes=10, zero_init_residual=True).state_dict()
    torch.manual_seed(0)
    same = NarrowResNet((2, 2, 2, 2), 10, 64, zero_init_residual=True).state_dict()
    assert same.keys() == reference.keys() and all(torch.equal(same[k], reference[k]) for k in same)
    narrow = build_resnet(18, 10, width=32)
    assert [narrow.layer1[0].conv1.out_channels, narrow.layer4[1].conv2.out_channels] == [32, 256]
    assert not narrow.layer2[0].bn2.weight.any()  # residual branches start at identity
    assert narrow(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ConfigError, match="narrow only ResNet-18 or -34"):
        build_resnet(50, 10, width=32)


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"b": 1, "a": Path("/x")})
    assert read_json(target) == {"a": "/x", "b": 1}


def test_tracking_is_a_noop_without_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MLFLOW_TRACKING_URI", "VISIONNODE_MLFLOW_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VISIONNODE_STATE_DIR", str(tmp_path))
    with tracked_run("noop") as tracker:
        tracker.log_metrics({"loss": 1.0})
        assert not tracker.enabled and tracker.run_url is None


def test_an_endpoint_named_by_any_of_its_variables_is_external_and_handed_on_under_all_of_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for names in ENDPOINT_ENV.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VISIONNODE_STATE_DIR", str(tmp_path))  # no stack.json
    assert not named_in_environment("mlflow_uri")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert named_in_environment("mlflow_uri") and not named_in_environment("s3_endpoint")
    endpoints = resolve_endpoints()
    assert endpoints.mlflow_uri == "http://127.0.0.1:1"
    handed = service_env(endpoints, None)
    assert handed == {"VISIONNODE_MLFLOW_URI": "http://127.0.0.1:1", "MLFLOW_TRACKING_URI": "http://127.0.0.1:1",
                      "AWS_DEFAULT_REGION": endpoints.s3_region}


def test_cli_reports_user_errors_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "visionnode.pipeline.cli", "data", "synth",
                             str(tmp_path / "x"),
                             "--classes", "1"], capture_output=True, text=True,
                             env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --classes 1 is out of range (use 2..1000)"]


def test_tracked_runs_nest_under_the_pipeline_parent_and_the_caller(stack,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from visionnode.components.common.tracking import PIPELINE_RUN_ENV, tracked_run

    monkeypatch.delenv("VISIONNODE_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-under-test")
    with tracked_run("outer-phase") as outer, tracked_run("called-phase") as inner:
        inner.log_metrics({"x": 1.0})
    with tracked_run("second-phase") as second:
        pass
    client = mlflow.MlflowClient()
    parent_of = {t.run_id: client.get_run(t.run_id).data.tags.get("mlflow.parentRunId")
                 for t in (outer, inner, second)}
    assert parent_of[inner.run_id] == outer.run_id
    assert parent_of[outer.run_id] == parent_of[second.run_id] is not None  # one parent per pipeline run
    pipeline_parent = client.get_run(parent_of[outer.run_id])
    assert pipeline_parent.data.tags["visionnode.pipeline_run_id"] == "run-under-test"


# -- the LR probe (a short sweep judged on held-out loss) ------------------------------------------------


def test_lr_probe_trains_three_candidates_sixty_steps_each_by_default() -> None:
    config = LRProbeConfig()
    assert config.candidates == (0.03, 0.1, 0.3) and config.steps == 60 and config.total_steps == 180
    assert LRProbeConfig(steps=4, candidates=(1, 2, 3, 4, 5)).total_steps == 20


def test_lr_probe_mini_schedule_warms_up_a_quarter_then_decays_to_zero() -> None:
    factors = [mini_schedule_factor(step, 8) for step in range(8)]
    assert factors[:3] == pytest.approx([0.1, 0.55, 1.0])
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)))
    assert factors[2:] == sorted(factors[2:], reverse=True)


def _blobs(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well-separated Gaussian blobs in 8 dimensions: a linear model learns them in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    return torch.randn(count, 8, generator=generator) + 3.0 * (2 * labels.float() - 1).unsqueeze(1), labels


def _blob_probe(heldout_labels_permuted: bool):
    from visionnode.components.common.training.recipe import Recipe

    batches = [_blobs(seed, 32) for seed in range(12)]
    images, labels = _blobs(100, 64)
    if heldout_labels_permuted:  # the held-out labels say nothing about the images: no LR can be told apart
        labels = labels[torch.randperm(64, generator=torch.Generator().manual_seed(1))]

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Linear(8, 2)

    return probe_lr(fresh_model, batches, [(images, labels)], Recipe(),
                    LRProbeConfig(steps=4, candidates=(1e-6, 0.05, 1e6)))


def test_lr_probe_keeps_the_lr_that_learns_over_a_too_small_and_a_diverging_one() -> None:
    result = _blob_probe(heldout_labels_permuted=False)
    assert result.suggested_lr == 0.05
    by_lr = {j.lr: j for j in result.judgements}
    assert by_lr[0.05].heldout_top1 > 95 and by_lr[0.05].heldout_loss < by_lr[1e-6].heldout_loss
    assert not math.isfinite(by_lr[1e6].heldout_loss) or by_lr[1e6].heldout_loss > by_lr[0.05].heldout_loss
    assert result.promised_top1 == by_lr[0.05].heldout_top1 and result.heldout_images == 64
    assert result.steps_run == 3 * 4 and result.train_images == 12 * 32
    assert result.chance_loss == pytest.approx(math.log(2))  # two balanced classes
    assert result.metrics()["suggested_lr"] == 0.05 and "LR probe: 0.05 of" in result.summary_line()


def test_lr_probe_suggests_nothing_when_no_candidate_beats_chance_on_held_out_images() -> None:
    result = _blob_probe(heldout_labels_permuted=True)
    assert result.suggested_lr is None and result.metrics()["suggested_lr"] == 0.0
    assert "no suggestion" in result.summary_line() and "batch rule stays" in result.summary_line()


@pytest.mark.parametrize("chance, suggested", [(2.21, 0.1), (2.19, None)])
def test_the_winner_counts_only_two_standard_errors_below_chance(chance: float,
                                                                 suggested: float | None) -> None:
    judged = [Judgement(0.03, 60, 2.05, 0.05, 20.0), Judgement(0.1, 60, 2.00, 0.10, 22.0),
              Judgement(0.3, 60, 2.40, 0.10, 10.0)]
    # the lowest loss, 2.00 +- 0.10, is 2 SE below 2.21 but not below 2.19
    assert suggestion(judged, chance) == suggested


def test_candidates_the_held_out_images_cannot_tell_apart_go_to_the_smallest_lr() -> None:
    judged = [Judgement(0.03, 60, 1.05, 0.1, 60.0, gap_se=0.06), Judgement(0.1, 60, 1.00, 0.1, 62.0),
              Judgement(0.3, 60, 1.02, 0.1, 61.0, gap_se=0.03)]
    assert suggestion(judged, 2.3) == 0.03  # 0.05 above the lowest, paired SE 0.06: a tie; the smallest LR
    judged[0] = dataclasses.replace(judged[0], gap_se=0.04)  # 0.05 > 0.04: told apart
    assert suggestion(judged, 2.3) == 0.1  # 0.3 (0.02 above, SE 0.03) ties, but 0.1 is smaller
    judged[2] = dataclasses.replace(judged[2], gap_se=0.01)
    assert suggestion(judged, 2.3) == 0.1


def test_paired_gaps_tell_apart_what_each_losss_own_error_cannot() -> None:
    spread = torch.linspace(0.1, 3.0, 64, dtype=torch.float64)  # per-image losses that vary a lot
    worse = Judgement(0.3, 60, float((spread + 0.1).mean()), 0.1, 50.0)
    best = Judgement(0.1, 60, float(spread.mean()), 0.1, 55.0)
    noise = 0.01 * torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gapped = with_paired_gaps([(best, spread), (worse, spread + 0.1 + noise)])
    assert gapped[0].gap_se == 0.0 and 0 < gapped[1].gap_se < 0.01  # 0.1 worse on every image: not a tie
    assert gapped[1].heldout_loss - gapped[0].heldout_loss > gapped[1].gap_se


def test_lr_probe_config_refuses_too_few_steps_or_candidates() -> None:
    with pytest.raises(ConfigError, match="too few"):
        LRProbeConfig(steps=3).checked()
    with pytest.raises(ConfigError, match="two positive"):
        LRProbeConfig(candidates=(0.1,)).checked()


@pytest.mark.parametrize("top1, images, promised, heldout, noted", [
    (20.0, 300, 60.0, 64, True),    # far below: intervals apart
    (50.0, 300, 60.0, 64, False),   # below, but within the noise of 64 held-out images
    (70.0, 300, 60.0, 64, False),   # above the promise
])
def test_a_note_only_when_top1_is_far_below_the_probes_promise(top1: float, images: int, promised: float,
                                                              heldout: int, noted: bool) -> None:
    note = promise_note(top1, images, promised, heldout)
    assert (note is not None) is noted
    if noted:
        assert f"top-1 {top1:.1f} %" in note and f"{promised:.1f} %" in note and "64 held-out" in note


# -- how sure a measured accuracy is ---------------------------------------------------------------------


@pytest.mark.parametrize("hits, total, low, high", [
    (62, 100, 52.21, 70.90),  # (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.96
    (0, 10, 0.0, 27.75),      # 0 of 10: still an interval, not the Wald's 0-0
    (10, 10, 72.25, 100.0),
])
def test_wilson_interval_known_answers(hits: int, total: int, low: float, high: float) -> None:
    interval = wilson_interval(hits, total)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=0.01)


def test_mcnemar_exact_p_is_the_binomial_tail_of_the_discordant_images() -> None:
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 ** -10)       # 10 of 10 went FP32's way
    assert mcnemar_exact_p(5, 1) == pytest.approx(7 / 64)          # P(X >= 5 | n = 6, 1/2)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(3, 3) == pytest.approx(42 / 64)


@pytest.mark.parametrize("first_only, second_only, total, bound", [
    (10, 0, 100, 100 * 10 * (2 * 0.05 ** 0.1 - 1) / 100),  # one-sided Clopper-Pearson of 10/10: 0.05^(1/10)
    (3, 0, 100, 100 * 3 * (2 * 0.05 ** (1 / 3) - 1) / 100),  # 3 images: the bound is below zero
    (0, 4, 100, -4.0),                                      # none went the first's way: -n / total
    (0, 0, 24, 0.0),                                        # no discordant image: exactly no drop
])
def test_paired_drop_lower_bound_known_answers(first_only: int, second_only: int, total: int,
                                               bound: float) -> None:
    assert paired_drop_lower_bound(first_only, second_only, total) == pytest.approx(bound)


def test_paired_drop_bound_above_zero_exactly_when_mcnemar_rejects_at_five_percent() -> None:
    for first_only in range(0, 15):
        for second_only in range(0, 6):
            significant = mcnemar_exact_p(first_only, second_only) < 0.05
            assert (paired_drop_lower_bound(first_only, second_only, 200) > 0) is significant


CI_MARKERS = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
              "TF_BUILD", "BUILDKITE")


def _mlflow_telemetry_client_after_importing_tracking(extra_env: dict[str, str]) -> str:
    """Outside CI (MLflow turns telemetry off there by itself): does MLflow start its telemetry client?"""
    env = {k: v for k, v in os.environ.items() if k not in CI_MARKERS and k != "MLFLOW_DISABLE_TELEMETRY"}
    code = ("import visionnode.components.common.tracking, mlflow\n"
            "from mlflow.telemetry.client import get_telemetry_client\n"
            "print('on' if get_telemetry_client() else 'off')")
    done = subprocess.run([sys.executable, "-c", code], env={**env, **extra_env}, capture_output=True,
                          text=True, check=True, timeout=120)
    return done.stdout.strip().splitlines()[-1]


def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on() -> None:
    # its config thread unset an env var while requests iterated os.environ: a demo step died of KeyError
    assert _mlflow_telemetry_client_after_importing_tracking({}) == "off"
    assert _mlflow_telemetry_client_after_importing_tracking({"MLFLOW_DISABLE_TELEMETRY": "false"}) == "on"


@pytest.mark.parametrize("classes", [MAX_MATRIX_CLASSES, MAX_MATRIX_CLASSES + 1])
def test_confusion_views_the_matrix_up_to_50_classes_and_the_most_confused_pairs_always(
        classes: int, tmp_path: Path) -> None:
    """What KFP's UI gets from a model's confusion_matrix.json: ClassificationMetrics holding the matrix (up
    to MAX_MATRIX_CLASSES classes; beyond, nothing it could draw readably) and the pairs table."""
    from kfp.dsl import ClassificationMetrics, Markdown

    names = [f"class {i}" for i in range(classes)]
    confusion = Confusion.empty(names)
    labels = np.repeat(np.arange(classes), 4)
    predictions = labels.copy()
    predictions[labels == 1] = 7          # every image of class 1 read as class 7: the most confused pair
    predictions[::16] = 0                 # a few more images read as class 0
    confusion.add(labels, predictions)
    confusion.save(tmp_path)
    (tmp_path / CONFUSED_PAIRS_FILE).write_text(confusion.markdown("test"))
    matrix = ClassificationMetrics(name="confusion_matrix", uri=str(tmp_path / "m"))
    pairs = Markdown(name="confused_pairs", uri=str(tmp_path / "pairs.md"))
    pairs.path = str(tmp_path / "pairs.md")
    confusion_views(str(tmp_path), matrix, pairs)
    if classes <= MAX_MATRIX_CLASSES:
        shown = matrix.metadata["confusionMatrix"]
        assert [c["displayName"] for c in shown["annotationSpecs"]] == names
        assert [row["row"] for row in shown["rows"]] == confusion.matrix.tolist()
    else:
        assert "confusionMatrix" not in matrix.metadata
    table = (tmp_path / "pairs.md").read_text()
    first_row = table.split("|---|---|---:|---:|\n", 1)[1].splitlines()[0]
    assert first_row == "| class 1 | class 7 | 4 | 100.0 % |", table
    assert f"{len(labels)} val images, {classes} classes" in table
