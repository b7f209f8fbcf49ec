"""validate: smoke training gate, ResNet-152 integrity, pipeline profile, report/JSON/MLflow outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from visionnode.components.common.data.imagenet import open_imagenet
from visionnode.components.common.errors import QualityGateError
from visionnode.components.common.training.lr_probe import Judgement, LRProbeResult
from visionnode.components.common.training.model import RESNET152_PARAMETERS
from visionnode.components.validate.profile import _rate as measured_rate
from visionnode.components.validate.report import render_lr_probe
from visionnode.components.validate.validate import (
    ValidateConfig,
    ValidateResult,
    check_architecture,
    choose_subset,
    decode_subset,
    gate_failures,
    judge_loss_curve,
    raise_for_gates,
    run_checks,
    smoke_train,
    summarize_profile,
)

# Small enough for ~10 s on 2 idle cores, large enough that the 96-image synthetic set is over-fitted
# (4 epochs) and the loss falls far past the 25 % gate.
FAST = {"image_size": 64, "steps": 24, "batch_size": 16, "profile_batches": 2, "workers": 2,
        "lr_probe_steps": 4}


@pytest.fixture(scope="module")
def validated(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> ValidateResult:
    report = tmp_path_factory.mktemp("validate") / "report.md"
    return run_checks(ValidateConfig(data=synth_dataset, subset=256, report=report, **FAST))


@pytest.fixture(scope="module")
def subset_tensors(synth_dataset: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    layout = open_imagenet(synth_dataset)
    records = choose_subset(layout.scan("train").records, 48, seed=0)
    images, labels, skipped = decode_subset(records, 64, 16, workers=0)
    assert not skipped and len(labels) == 48
    return images, labels, layout.classes.num_classes


def test_loss_falls_on_synthetic_data(validated: ValidateResult) -> None:
    smoke = validated.smoke
    assert validated.passed and not validated.failures
    assert smoke.trend == "falling" and smoke.passed
    assert len(smoke.losses) == FAST["steps"] and smoke.window == FAST["steps"] // 5
    assert smoke.relative_drop >= 0.25
    assert smoke.last_mean <= 0.75 * smoke.first_mean
    # labels are class indices of the sorted wnids: 6 classes, so an untrained model starts near ln 6
    assert smoke.num_classes == 6 and abs(smoke.losses[0] - math.log(6)) < 0.5
    assert validated.images_used == validated.images_listed == 96 and validated.images_skipped == 0


def test_lr_zero_is_caught_as_flat_with_a_diagnosis(
    synth_dataset: Path, subset_tensors: tuple[torch.Tensor, torch.Tensor, int]
) -> None:
    images, labels, classes = subset_tensors
    config = ValidateConfig(data=synth_dataset, steps=8, batch_size=16, lr=0.0)
    smoke = smoke_train(images, labels, classes, config)
    assert not smoke.passed and smoke.trend == "flat"
    assert "learning rate (0) may be too low or zero" in smoke.diagnosis


def test_labels_permuted_every_step_fail_the_gate(
    synth_dataset: Path, subset_tensors: tuple[torch.Tensor, torch.Tensor, int]
) -> None:
    images, labels, classes = subset_tensors
    config = ValidateConfig(data=synth_dataset, steps=12, batch_size=16)
    shuffle = torch.Generator().manual_seed(1)
    smoke = smoke_train(
        images, labels, classes, config, corrupt_labels=lambda y: y[torch.randperm(len(y), generator=shuffle)]
    )
    assert not smoke.passed and smoke.trend in ("flat", "rising"), smoke.diagnosis
    assert ("shuffled" in smoke.diagnosis) or ("diverges" in smoke.diagnosis)


@pytest.mark.parametrize(
    "losses, trend, words",
    [
        ([2.0, 2.1, 1.9, 2.0, float("nan"), float("nan")], "non-finite", "too high"),
        ([2.0, 2.0, 2.5, 3.0, 3.5, 4.0], "rising", "diverges"),
        ([2.0, 2.0, 1.9, 2.0, 1.9, 1.9], "flat", "too low"),
        ([2.0, 2.0, 1.5, 1.2, 1.0, 1.0], "falling", "fell 50%"),
    ],
)
def test_loss_curve_verdicts_name_a_cause(losses: list[float], trend: str, words: str) -> None:
    config = ValidateConfig(data=Path("."), steps=6, window=2)
    smoke = judge_loss_curve(losses, config, num_classes=6, images=32, seconds=1.0)
    assert smoke.trend == trend and (smoke.passed == (trend == "falling"))
    assert words in smoke.diagnosis


def test_lr_probe_in_validate_outputs_a_suggestion_plot_and_metrics(validated: ValidateResult) -> None:
    probe = validated.lr_probe
    assert probe is not None and probe.candidates == [0.03, 0.1, 0.3] and probe.seconds > 0
    # 96 images: a quarter held out, judged un-augmented; the rest train every candidate on the same batches
    assert probe.heldout_images == 24 and probe.steps_run == 3 * 4 and len(probe.judgements) == 3
    metrics = validated.metrics()
    assert metrics["suggested_lr"] == (probe.suggested_lr or 0.0)  # 0: no suggestion, train's batch rule
    assert metrics["lr_probe_top1"] == probe.promised_top1 and metrics["lr_probe_seconds"] == probe.seconds
    assert metrics["lr_probe_chance_loss"] == pytest.approx(probe.chance_loss)
    plot = Path(validated.lr_probe_plot)
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.parent == Path(validated.report).parent
    report = Path(validated.report).read_text()
    assert "## 4. Learning-rate probe" in report and report.count("](data:image/png;base64,") == 2
    assert "held-out loss ± SE" in report and f"{probe.judgements[0].heldout_loss:.3f}" in report


@pytest.mark.parametrize("suggested, words", [(0.1, "**Suggested LR: 0.1**"), (None, "**No suggestion:**")])
def test_the_lr_probe_report_names_the_suggestion_or_why_there_is_none(suggested: float | None,
                                                                        words: str) -> None:
    judged = [Judgement(lr, 60, loss, 0.1, 30.0) for lr, loss in ((0.03, 2.2), (0.1, 1.9), (0.3, 2.4))]
    probe = LRProbeResult(candidates=[0.03, 0.1, 0.3], judgements=judged, suggested_lr=suggested,
                          promised_top1=30.0, chance_loss=2.3, heldout_images=64, train_images=192,
                          steps_run=180, seconds=9.0)
    text = "\n".join(render_lr_probe(probe, b"png"))
    assert words in text and "| 0.1 | 60 | 1.900 ± 0.100 | 30.0 |" in text
    assert ("batch rule" in text) is (suggested is None)


def test_architecture_check_passes_on_real_resnet152(validated: ValidateResult) -> None:
    arch = validated.architecture
    assert arch.passed and arch.gradient_problems == []
    assert arch.parameters == arch.expected_parameters == RESNET152_PARAMETERS == 60_192_808
    assert arch.output_shape == [2, 1000]
    assert arch.parameter_tensors == 467


def test_architecture_check_names_frozen_and_zero_gradient_layers() -> None:
    def break_two_layers(model: torch.nn.Module) -> None:
        model.layer3[5].conv2.weight.requires_grad_(False)
        model.fc.bias.register_hook(torch.zeros_like)

    arch = check_architecture(tamper=break_two_layers)
    assert not arch.passed
    problems = {p.parameter: p.problem for p in arch.gradient_problems}
    assert problems == {
        "layer3.5.conv2.weight": "frozen: requires_grad is False",
        "fc.bias": "gradient is all zero",
    }
    assert "layer3.5.conv2.weight" in arch.diagnosis and "fc.bias" in arch.diagnosis


def test_profile_measures_three_rates_and_names_the_bottleneck(validated: ValidateResult) -> None:
    profile = validated.profile
    rates = (profile.data_images_per_s, profile.compute_images_per_s, profile.combined_images_per_s)
    assert all(rate > 0 and math.isfinite(rate) for rate in rates)
    assert profile.batches == FAST["profile_batches"] and profile.batch_size == FAST["batch_size"]
    # What the verdict says is what was measured (the rules that turn rates into a verdict are pinned by the
    # known-answer tests below, on both sides).
    assert all(f"{rate:,.0f} img/s" in profile.verdict for rate in rates), profile.verdict
    assert f"{profile.ratio:.1f}x" in profile.verdict and profile.ratio >= 1.0


def test_rate_counts_images_per_second_after_the_first_batch() -> None:
    """Batches of known size and length: a slow first batch (start-up) is left out; 3 batches of 8 images in
    3 x 20 ms of sleep are at most 400 img/s (sleep only oversleeps). Counting the first batch would give at
    most 32 / 0.36 s = 89 img/s, counting batches instead of images 50/s: both fall under the lower bound."""

    def batches():
        for seconds in (0.3, 0.02, 0.02, 0.02):
            time.sleep(seconds)
            yield 8

    assert 400 / 4 <= measured_rate(batches()) <= 400


@pytest.mark.parametrize("data_rate, compute_rate, bottleneck, ratio, opening", [
    (50.0, 200.0, "data", "4.0x", "I/O + decode bound"),
    (300.0, 100.0, "compute", "3.0x", "compute bound"),
    (100.0, 100.0, "compute", "1.0x", "compute bound"),  # a tie: a faster loader would not help
])
def test_profile_verdict_names_the_slower_stage(data_rate: float, compute_rate: float, bottleneck: str,
                                                ratio: str, opening: str) -> None:
    profile = summarize_profile("resnet18", ValidateConfig(data=Path(".")), data_rate=data_rate,
                                compute_rate=compute_rate, combined_rate=45.0)
    assert profile.bottleneck == bottleneck and f"{profile.ratio:.1f}x" == ratio
    assert profile.verdict.startswith(opening) and ratio in profile.verdict


def test_report_embeds_the_loss_curve_and_lists_every_check(validated: ValidateResult) -> None:
    report = Path(validated.report).read_text()
    plot = Path(validated.plot)
    assert (
        plot.is_file()
        and plot.read_bytes().startswith(b"\x89PNG")
        and plot.parent == Path(validated.report).parent
    )
    assert "](data:image/png;base64," in report
    for heading in (
        "# validate: PASSED",
        "## 1. Smoke training",
        "## 2. Architecture integrity",
        "## 3. Pipeline profile",
        "Bottleneck:",
    ):
        assert heading in report
    assert "60,192,808" in report


def test_messy_data_is_decoded_or_skipped_and_counted(messy_dataset, tmp_path: Path) -> None:
    config = ValidateConfig(
        data=messy_dataset.root,
        subset=10_000,
        image_size=48,
        steps=4,
        batch_size=16,
        profile_batches=1,
        workers=2,
        report=tmp_path / "report.md",
    )
    result = run_checks(config)
    assert result.images_used == messy_dataset.good_files
    assert result.images_skipped == len(messy_dataset.bad_files) == 3
    skipped = {Path(s.path).relative_to(messy_dataset.root).as_posix(): s.reason for s in result.skipped}
    assert set(skipped) == set(messy_dataset.bad_files)
    assert "empty" in skipped[next(k for k, v in messy_dataset.bad_files.items() if v == "empty")]
    assert result.empty_classes == [messy_dataset.empty_class]
    report = (tmp_path / "report.md").read_text()
    assert "## Skipped files" in report and "truncated.JPEG" in report and messy_dataset.empty_class in report


@pytest.mark.parametrize("above, fails", [(0.0, False), (0.01, True)])
def test_failed_gate_raises_quality_gate_error_naming_the_cause(
    validated: ValidateResult, synth_dataset: Path, above: float, fails: bool
) -> None:
    """The real smoke run's losses judged against a required drop exactly at the drop they achieved (passes)
    and 1 point above it (flat: raise_for_gates fails naming the cause)."""
    smoke = validated.smoke
    config = ValidateConfig(data=synth_dataset, **FAST, min_relative_drop=smoke.relative_drop + above)
    judged = judge_loss_curve(smoke.losses, config, smoke.num_classes, smoke.images, smoke.seconds)
    assert judged.relative_drop == smoke.relative_drop and judged.passed == (not fails)
    failures = gate_failures(judged, validated.architecture)
    result = dataclasses.replace(validated, smoke=judged, passed=not failures, failures=failures)
    if fails:
        with pytest.raises(QualityGateError, match="smoke training \\(resnet18\\): loss is flat"):
            raise_for_gates(result)
    else:
        assert raise_for_gates(result) is result


def test_cli_writes_json_and_report(synth_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from visionnode.pipeline.cli import app

    monkeypatch.setenv("VISIONNODE_PROGRESS", "0")
    out = tmp_path / "result.json"
    report = tmp_path / "r" / "validate.md"
    result = CliRunner().invoke(
        app,
        [
            "validate",
            "--data",
            str(synth_dataset),
            "--subset",
            "32",
            "--steps",
            "8",
            "--batch-size",
            "16",
            "--profile-batches",
            "1",
            "--json",
            str(out),
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["passed"] is True and summary["smoke"]["trend"] == "falling", summary["smoke"]["losses"]
    assert summary["images_used"] == 32 and len(summary["smoke"]["losses"]) == 8
    assert summary["architecture"]["parameters"] == RESNET152_PARAMETERS
    assert summary["report"] == str(report) and report.is_file()
    assert (tmp_path / "r" / "validate_loss.png").is_file()


def test_validate_logs_params_losses_profile_and_artifacts_to_mlflow(
    stack, synth_dataset: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    config = ValidateConfig(
        data=synth_dataset,
        subset=32,
        steps=10,
        batch_size=16,
        profile_batches=1,
        report=tmp_path / "report.md",
    )
    result = run_checks(config)
    assert result.mlflow_run_id
    client = MlflowClient(stack.endpoints.mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["arch"] == "resnet18" and run.data.params["steps"] == "10"
    history = client.get_metric_history(result.mlflow_run_id, "smoke_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(10))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(result.smoke.losses)
    for name in (
        "data_images_per_s",
        "compute_images_per_s",
        "combined_images_per_s",
        "bottleneck_ratio",
        "resnet152_parameters",
        "loss_relative_drop",
    ):
        assert name in run.data.metrics
    assert run.data.metrics["resnet152_parameters"] == RESNET152_PARAMETERS
    assert run.data.tags["validate.bottleneck"] == result.profile.bottleneck
    artifacts = {
        a.path for folder in ("plots", "report") for a in client.list_artifacts(result.mlflow_run_id, folder)
    }
    assert artifacts == {"plots/report_loss.png", "plots/report_lr_probe.png", "report/report.md"}
    assert run.data.metrics["suggested_lr"] == (result.lr_probe.suggested_lr or 0.0)  # 0: no suggestion
    logged = json.loads(
        Path(
            client.download_artifacts(result.mlflow_run_id, "validate_result.json", str(tmp_path))
        ).read_text()
    )
    assert logged["smoke"]["losses"] == pytest.approx(result.smoke.losses)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--data", "/nonexistent/imagenet"],
            "error: dataset directory /nonexistent/imagenet does not exist",
        ),
        (["--data", ".", "--steps", "1"], "error: --steps 1 is too few"),
        (["--data", ".", "--arch", "vgg16"], "error: --arch 'vgg16' is not known"),
        (["--data", ".", "--lr-probe-steps", "3"], "error: --lr-probe-steps 3 is too few"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    from visionnode.pipeline.cli import app

    result = CliRunner().invoke(app, ["validate", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "Traceback" not in result.output
