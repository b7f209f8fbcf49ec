"""The shared building blocks: ImageNet reader, robust decoding, synthetic data, model factory, tracking,
the LR range test's suggestion rule."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionnode.components.common.data.imagenet import open_imagenet
from visionnode.components.common.data.images import UnreadableImage, load_rgb
from visionnode.components.common.errors import ConfigError, DataError
from visionnode.components.common.jsonio import atomic_path, read_json, write_json
from visionnode.components.common.tracking import tracked_run
from visionnode.components.common.training.lr_range import LRRangeConfig, exponential_lrs, lr_range_test
from visionnode.components.common.training.model import RESNET152_PARAMETERS, build_resnet, count_parameters
from visionnode.components.local.synth import SynthConfig, synthesize_dataset


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


def test_decoder_converts_odd_images_and_names_bad_ones(messy_dataset) -> None:
    wnid_dir = next(p.parent for p in messy_dataset.root.rglob("cmyk.JPEG"))
    for name in ("cmyk.JPEG", "grey.JPEG", "png_inside.JPEG"):
        image = load_rgb(wnid_dir / name)
        assert image.mode == "RGB" and image.width > 0
    reasons = {}
    for rel in messy_dataset.bad_files:
        with pytest.raises(UnreadableImage) as info:
            load_rgb(messy_dataset.root / rel)
        reasons[rel] = info.value.reason
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


def test_resnet152_has_the_reference_parameter_count() -> None:
    model = build_resnet()
    assert count_parameters(model) == RESNET152_PARAMETERS
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


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


def _range_test_loss(fall_at: float, rise_at: float, noise: float = 0.0) -> Callable[[float], float]:
    """An LR range-test loss with a known answer: flat 2.0, falls to 0.5 around `fall_at` (its steepest
    point), stays there and climbs from `rise_at` on (the largest LR that still trains); seeded noise."""
    rng = np.random.default_rng(0)

    def loss(lr: float) -> float:
        falling = 2.0 - 1.5 / (1 + math.exp(-4 * math.log10(lr / fall_at)))
        return falling + min(1.0, max(0.0, math.log10(lr / rise_at))) + noise * float(rng.normal())

    return loss


@pytest.mark.parametrize("smoothing", [0.0, 0.8])
@pytest.mark.parametrize("fall_at, rise_at", [(0.002, 0.3), (0.001, 0.03)])
def test_lr_range_suggests_a_third_of_where_the_loss_stops_falling(fall_at: float, rise_at: float,
                                                                  smoothing: float) -> None:
    result = lr_range_test(_range_test_loss(fall_at, rise_at), LRRangeConfig(smoothing=smoothing))
    # not too high: well below where the loss climbs; not too low: far above the steepest fall
    assert rise_at / 4 < result.suggested_lr < rise_at / 2.5
    assert result.suggested_lr > 4 * result.steepest_lr and not result.clamped
    assert result.suggested_lr == pytest.approx(result.min_loss_lr / 3)


@pytest.mark.parametrize("fall_at, rise_at", [(0.002, 0.3), (0.001, 0.03), (0.003, 0.1)])
def test_lr_range_suggestion_survives_noise(fall_at: float, rise_at: float) -> None:
    result = lr_range_test(_range_test_loss(fall_at, rise_at, noise=0.03), LRRangeConfig())
    assert rise_at / 4 < result.suggested_lr < rise_at / 2 and result.suggested_lr > 4 * result.steepest_lr


@pytest.mark.parametrize("smoothing", [0.0, 0.8])
def test_lr_range_suggestion_stays_below_a_cliff_right_after_the_fall(smoothing: float) -> None:
    # the loss falls fastest right before it turns; the smoothed minimum trails into the climb
    config = LRRangeConfig(smoothing=smoothing)
    loss = _range_test_loss(0.02, 0.03)
    lrs = exponential_lrs(config)
    turn = min(lrs, key=loss)
    result = lr_range_test(loss, config)
    assert result.suggested_lr < turn and result.min_loss_lr >= turn


@pytest.mark.parametrize(
    "rise_at, band_high, expected",
    [(1e-3, 1.0, 1e-3),    # min loss / 3 below the band: its lower end
     (10.0, 0.2, 0.2),     # the loss never climbs (1 / 3 above the band): its upper end
     (10.0, 1.0, 1 / 3)],  # never climbs, band wide enough: a third of the largest LR tried
)
def test_lr_range_suggestion_is_clamped_to_the_band_on_both_sides(rise_at: float, band_high: float,
                                                                  expected: float) -> None:
    result = lr_range_test(_range_test_loss(rise_at / 30, rise_at),
                           LRRangeConfig(smoothing=0.0, band_high=band_high))
    assert result.suggested_lr == pytest.approx(expected)
    assert result.clamped is (expected != pytest.approx(result.min_loss_lr / 3))


def test_lr_range_config_rejects_a_divisor_below_one() -> None:
    with pytest.raises(ConfigError, match="min-loss divisor"):
        LRRangeConfig(min_loss_divisor=0.5).checked()


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
