"""train: real ResNet-152 steps, MLflow run + registry, S3 checkpoints, SIGTERM + resume, torchrun DDP,
errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visionnode.components.common.artifacts import IMAGENET_MEAN, IMAGENET_STD, ModelMetadata, ShardManifest
from visionnode.components.common.data.ffcv_io import Augmentation, train_loader, uint8_batches
from visionnode.components.common.errors import ConfigError, DataError, IntegrityError
from visionnode.components.common.storage.s3 import s3_client
from visionnode.components.common.training.model import build_resnet
from visionnode.components.common.training.recipe import (
    LR_AUTO,
    LR_BATCH_RULE,
    Recipe,
    build_optimizer,
    lr_factor,
    parameter_groups,
    parse_lr,
    parse_res_schedule,
    parse_warmup,
    resolution_for_epoch,
    resolve_lr,
)
from visionnode.components.local.synth import SynthConfig, synthesize_dataset
from visionnode.components.shard.shard import ShardConfig, shard_dataset
from visionnode.components.train.checkpoint import CheckpointStore, load_checkpoint
from visionnode.components.train.precision import resolve_precision
from visionnode.components.train.train import PREEMPTED_EXIT_CODE, TrainConfig, train
from visionnode.pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]


def small_config(shards: Path, out: Path, **overrides) -> TrainConfig:
    """ResNet-18 at 32 px, batch 8: 12 steps per epoch on tiny_shards, about 0.1-0.3 s each on 2 cores."""
    values = dict(shards=str(shards), out_dir=out, epochs=2, batch_size=8, arch="resnet18",
                  res_schedule="32:32", precision="fp32", resume="never", workers=2, tracking=False,
                  recipe=Recipe(lr=0.05, warmup_epochs=0.25))
    values.update(overrides)
    return TrainConfig(**values)


# -- recipe, precision: the rules, fast ------------------------------------------------------------------


@pytest.mark.parametrize("lr, batch, warmup_epochs", [
    (None, 32, 0.0),     # the batch rule's own LR (0.0125): safe from the first step, no warm-up
    (0.003, 32, 0.0),    # below it: none either
    (0.1, 32, 0.9),      # 8x the batch rule: log10(8) = 0.9 decades -> 0.9 epochs (issue 19's hand-picked 1)
    (0.3, 32, 1.38),     # 24x
    (0.1, 256, 0.0),     # at batch 256 the batch rule is 0.1 itself
])
def test_auto_warmup_grows_with_the_decades_the_lr_is_above_the_batch_rule(lr: float | None, batch: int,
                                                                           warmup_epochs: float) -> None:
    recipe = Recipe(lr=lr)
    assert recipe.resolved_warmup_epochs(batch) == pytest.approx(warmup_epochs, abs=0.01)
    plan = recipe.lr_plan(batch, steps_per_epoch=100, total_steps=1000, source="given")
    assert plan.warmup_steps == int(recipe.resolved_warmup_epochs(batch) * 100) and plan.warmup_auto
    assert plan.peak_lr == recipe.peak_lr(batch) and plan.batch_rule_lr == pytest.approx(0.1 * batch / 256)
    # a short run keeps three quarters of its steps for learning; a given warm-up wins over auto
    assert Recipe(lr=0.3).lr_plan(32, 100, 200, "probe").warmup_steps == 50
    assert Recipe(lr=0.3, warmup_epochs=0.5).lr_plan(32, 100, 1000, "probe").warmup_steps == 50


def test_warmup_flag_takes_auto_or_epochs() -> None:
    assert parse_warmup("auto") is None and parse_warmup("1.5") == 1.5 and parse_warmup("0") == 0.0
    for bad in ("-1", "soon", "inf"):
        with pytest.raises(ConfigError, match="--warmup-epochs"):
            parse_warmup(bad)


def test_recipe_rules() -> None:
    recipe = Recipe(warmup_epochs=2)
    assert recipe.peak_lr(256) == pytest.approx(0.1) and recipe.peak_lr(1024) == pytest.approx(0.4)
    assert Recipe(lr=0.3).peak_lr(1024) == 0.3
    # 10 epochs x 100 steps: warm-up 200 steps from 0.1x to 1x, then cosine to 0
    factors = [lr_factor(s, recipe, 100, 1000, 256) for s in (0, 100, 200, 600, 999)]
    assert factors[0] == pytest.approx(0.1) and factors[1] == pytest.approx(0.55)
    assert factors[2] == pytest.approx(1.0) and factors[3] == pytest.approx(0.5) and factors[4] < 1e-4
    step = Recipe(schedule="step", step_epochs=3, warmup_epochs=0)
    assert [lr_factor(s, step, 10, 100, 256) for s in (0, 29, 30, 60)] == pytest.approx([1, 1, 0.1, 0.01])

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    decayed, plain = build_optimizer(model, recipe, 256).param_groups
    assert decayed["weight_decay"] == recipe.weight_decay and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert len(plain["params"]) == 4  # conv bias, BN weight + bias, linear bias
    assert build_optimizer(model, recipe, 256).defaults["nesterov"] is True


def test_progressive_resizing_and_schedule_parsing() -> None:
    assert [resolution_for_epoch(e, 16, 160, 192) for e in (0, 7, 8, 15)] == [160, 160, 192, 192]
    assert [resolution_for_epoch(e, 5, 128, 256) for e in range(5)] == [128, 160, 192, 224, 256]
    assert resolution_for_epoch(0, 3, 40, 40) == 40
    assert parse_res_schedule("160:192") == (160, 192) and parse_res_schedule("64") == (64, 64)
    for bad in ("192:160", "a:b", "1:2:3", "8:8"):
        with pytest.raises(ConfigError):
            parse_res_schedule(bad)


def test_precision_resolution() -> None:
    cpu = torch.device("cpu")
    # bf16 on CPU only with AMX-BF16; AVX512-BF16 alone (this machine) measured slower than fp32. The CPU's
    # flags are read here, not through train's own helper.
    flags = {flag for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}
    assert resolve_precision("auto", cpu) == ("bf16" if "amx_bf16" in flags else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="--precision 'fp8' is not known"):
        TrainConfig(shards="unused", out_dir=Path("unused"), precision="fp8").validate()


# -- the real thing: ResNet-152 learns; outputs, MLflow run and registered model exist ----------------------


def test_resnet152_steps_loss_falls_outputs_and_mlflow(stack, tiny_shards: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a sample a second (10 s by default)
    out = tmp_path / "model"
    # Overfit one batch of 4 at 32 px: 6 SGD steps must cut the loss clearly on the real 60M-parameter model.
    result = train(TrainConfig(
        shards=str(tiny_shards), out_dir=out, epochs=1, batch_size=4, arch="resnet152",
        res_schedule="32:32", precision="fp32", resume="never", max_steps=6, overfit_batches=1, log_every=1,
        checkpoint_uri=str(tmp_path / "ckpt"), recipe=Recipe(lr=0.01, warmup_epochs=0),
    ))
    assert result.status == "max_steps" and result.steps == 6 and result.steps_this_run == 6
    losses = [float(line.split(",")[2]) for line in (out / "train_log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 6
    assert min(losses[-2:]) < 0.7 * losses[0], f"ResNet-152 did not learn one batch: losses {losses}"

    metadata = ModelMetadata.load(out)
    assert metadata.arch == "resnet152" and metadata.num_classes == 6 and len(metadata.classes.names) == 6
    assert metadata.preprocessing.input_size == 32 and metadata.preprocessing.resize_size == 37
    # top-1/top-5 recomputed here from the saved weights, the val images and their labels. Tolerance: one
    # image, which float32 summation order (channels_last in train) can move across a near-tie.
    top1, top5, images = _val_accuracy(out / "weights.pt", 152, tiny_shards, 32)
    one_image = 100 / images
    assert metadata.metrics["top1"] == pytest.approx(top1, abs=one_image + 1e-9), (metadata.metrics, top1)
    assert metadata.metrics["top5"] == pytest.approx(top5, abs=one_image + 1e-9), (metadata.metrics, top5)
    weights = torch.load(out / "weights.pt", weights_only=True)
    assert weights["fc.weight"].shape == (6, 2048) and not any(k.startswith("module.") for k in weights)
    # The curves: a PNG and a self-contained HTML page (train's KFP HTML artifact) with the val figures.
    assert (out / "training_curves.png").stat().st_size > 1000
    page = (out / "training_curves.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and f"<td>{metadata.metrics['top1']:.4g}</td>" in page
    # The confusion matrix of the val images, recomputed as counts: its diagonal is the top-1 reported.
    confusion = json.loads((out / "confusion_matrix.json").read_text())
    matrix = np.array(confusion["matrix"])
    assert confusion["names"] == metadata.classes.names and matrix.sum() == images
    assert 100 * np.trace(matrix) / images == pytest.approx(metadata.metrics["top1"])
    assert "most-confused class pairs" in (out / "confused_pairs.md").read_text()

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["arch"] == "resnet152" and run.data.params["precision_resolved"] == "fp32"
    # the LR plan: a given LR, no warm-up asked for, recorded with the run
    assert run.data.params["lr_plan.source"] == "given" and run.data.params["lr_plan.warmup_steps"] == "0"
    assert float(run.data.params["lr_plan.peak_lr"]) == 0.01
    # top-1 with its 95 % Wilson interval over the val images (the closed formula, z = 1.96)
    n, p, z = result.val_images, result.top1 / 100, 1.959964
    centre, half = (p + z * z / (2 * n)), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    expected = [100 * (centre - half) / (1 + z * z / n), 100 * (centre + half) / (1 + z * z / n)]
    assert n == images and [result.top1_ci_low, result.top1_ci_high] == pytest.approx(expected)
    assert run.data.metrics["top1_ci_low"] == pytest.approx(expected[0])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4, 5, 6]
    assert client.get_metric_history(run.info.run_id, "top1") and "img_per_s" in run.data.metrics
    system = {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"}
    assert system <= set(run.data.metrics), sorted(run.data.metrics)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        "plots/training_curves.png", "plots/confusion_matrix.png"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "confusion")} == {
        "confusion/confusion_matrix.json", "confusion/confused_pairs.md"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view

    # The registered version: MLflow's pytorch flavour of this run's model with its signature (uint8 images
    # in, logits out); loaded back through MLflow it answers as the weights written here do.
    name, version = result.registered_model.split("/")
    registered = client.get_model_version(name, version)
    assert name == "visionnode-resnet152" and registered.run_id == result.mlflow_run_id
    assert metadata.registered_model == result.registered_model  # model.json says which version it is
    info = mlflow.models.get_model_info(f"models:/{name}/{version}")
    assert "pytorch" in info.flavors
    assert info.signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "uint8",
                                                                                  "shape": (-1, 32, 32, 3)}}]
    assert info.signature.outputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32",
                                                                                   "shape": (-1, 6)}}]
    val_files = [tiny_shards / s.file for s in ShardManifest.load(tiny_shards).shards_for("val")]
    batch, _ = next(uint8_batches(val_files, 4, 32))
    served = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(batch)
    expected = _serving_logits(out / "weights.pt", batch)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    logged = client.get_logged_model(info.model_id)
    assert {m.key for m in logged.metrics or []} >= {"top1", "top5"}


def _serving_logits(weights: Path, images: np.ndarray) -> np.ndarray:
    state = torch.load(weights, weights_only=True)
    model = build_resnet(152, state["fc.weight"].shape[0])
    model.load_state_dict(state)
    model.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        return model((pixels - mean) / std).numpy()


def _val_accuracy(weights: Path, depth: int, shards: Path, size: int) -> tuple[float, float, int]:
    """(top-1 %, top-5 %, images) of a saved state dict on the val shards: numpy over the model's logits."""
    state = torch.load(weights, weights_only=True)
    model = build_resnet(depth, state["fc.weight"].shape[0])
    model.load_state_dict(state)
    model.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    val = [shards / s.file for s in ShardManifest.load(shards).shards_for("val")]
    top1 = top5 = seen = 0
    with torch.no_grad():
        for images, labels in uint8_batches(val, 8, size):
            pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
            ranked = np.argsort(-model((pixels - mean) / std).numpy(), axis=1)[:, :5]
            top1 += int((ranked[:, 0] == labels).sum())
            top5 += int((ranked == labels[:, None]).any(axis=1).sum())
            seen += len(labels)
    return 100 * top1 / seen, 100 * top5 / seen, seen


# -- checkpoints: SIGTERM mid-epoch, resume from S3 with the same optimizer state ---------------------------


# Runs train's CLI with one pause: when the first checkpoint's `latest.json` pointer is written (step
# `--checkpoint-every` of epoch 1), it says so on stderr and waits until SIGTERM has reached train's own
# handler. Whatever the machine's speed, the signal lands at that step, mid-epoch.
PAUSED_AT_FIRST_CHECKPOINT = "paused at the first checkpoint"
TRAIN_PAUSED_AT_FIRST_CHECKPOINT = f"""
import runpy, signal, sys, threading
import boto3

terminated = threading.Event()
install_handler = signal.signal


def observed_install(signum, handler):
    if signum == signal.SIGTERM and callable(handler):
        def observed(number, frame, handler=handler):
            handler(number, frame)
            terminated.set()
        return install_handler(signum, observed)
    return install_handler(signum, handler)


paused = threading.Event()


def pause_at_first_pointer(params, **_):
    if str(params.get("Key", "")).endswith("/latest.json") and not paused.is_set():
        paused.set()
        print("{PAUSED_AT_FIRST_CHECKPOINT}", file=sys.stderr, flush=True)
        terminated.wait(timeout=120)


make_client = boto3.client


def pausing_client(*args, **kwargs):
    client = make_client(*args, **kwargs)
    client.meta.events.register("before-parameter-build.s3.PutObject", pause_at_first_pointer)
    return client


signal.signal = observed_install
boto3.client = pausing_client
sys.argv = ["visionnode.components.train", *sys.argv[1:]]
runpy.run_module("visionnode.components.train", run_name="__main__")
"""


def _wait_for_line(proc: subprocess.Popen, line: str) -> list[str]:
    """Lines the process printed up to and including `line` (all of them if it exited first)."""
    seen = []
    for printed in proc.stdout:
        seen.append(printed.rstrip("\n"))
        if seen[-1] == line:
            break
    return seen


def test_sigterm_mid_epoch_then_resume_from_s3(bucket: str, tiny_shards: Path, tmp_path: Path) -> None:
    ckpt_uri = f"s3://{bucket}/checkpoints/run1"
    summary = tmp_path / "preempted.json"
    command = [sys.executable, "-c", TRAIN_PAUSED_AT_FIRST_CHECKPOINT, "--shards", str(tiny_shards),
               "--out", str(tmp_path / "model"), "--epochs", "2", "--batch-size", "8", "--arch", "resnet18",
               "--res-schedule", "32:32", "--precision", "fp32", "--lr", "0.05", "--warmup-epochs", "0.25",
               "--checkpoint-uri", ckpt_uri,
               "--checkpoint-every", "2", "--json", str(summary)]
    env = {**os.environ, "VISIONNODE_PROGRESS": "0", "MLFLOW_TRACKING_URI": ""}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = _wait_for_line(proc, PAUSED_AT_FIRST_CHECKPOINT)
    assert seen and seen[-1] == PAUSED_AT_FIRST_CHECKPOINT and proc.poll() is None, "\n".join(seen)
    proc.send_signal(signal.SIGTERM)
    output = "\n".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == PREEMPTED_EXIT_CODE, output
    assert "pre-empted" in output and "--resume auto" in output

    preempted = json.loads(summary.read_text())
    step = preempted["steps"]
    saved = load_checkpoint(preempted["checkpoint"])
    assert preempted["status"] == "preempted" and step == 2 and saved["step"] == step
    assert (saved["epoch"], saved["batch_in_epoch"]) == (0, 2), "stopped where SIGTERM landed: step 2 of 12"
    assert CheckpointStore(ckpt_uri).latest() == preempted["checkpoint"]

    resumed = train(small_config(tiny_shards, tmp_path / "model", checkpoint_uri=ckpt_uri, resume="auto",
                                 max_steps=step + 1))
    assert resumed.resumed_from == preempted["checkpoint"] and resumed.resumed_step == step
    assert resumed.steps == step + 1 and resumed.steps_this_run == 1
    after = load_checkpoint(resumed.checkpoint)
    assert after["batch_in_epoch"] == saved["batch_in_epoch"] + 1
    assert after["scheduler"]["last_epoch"] == step + 1

    # Same optimizer state: torch's Nesterov SGD gives  p_k - p_k+1 = lr_k (buf_k+1 - m buf_k + m buf_k+1).
    # It holds only if the resumed run started from the checkpoint's momentum buffers (fresh ones give
    # p_k - p_k+1 = lr (1 + m) buf_k+1 instead).
    m, lr = 0.9, saved["optimizer"]["param_groups"][0]["lr"]
    for name in ("fc.weight", "layer4.1.conv2.weight", "layer4.1.bn2.weight"):
        index = _optimizer_index(name)
        buf_k = saved["optimizer"]["state"][index]["momentum_buffer"]
        buf_next = after["optimizer"]["state"][index]["momentum_buffer"]
        expected = lr * (buf_next - m * buf_k + m * buf_next)
        actual = saved["model"][name] - after["model"][name]
        fresh = lr * (1 + m) * buf_next
        # Updates are ~1e-7 on weights ~1e-2: float32 leaves a few % of noise in `actual`, so compare norms
        # relative to the update's size (the fresh-buffer formula is off by lr*m*buf_k, tens of %).
        scale = float(actual.norm())
        assert scale > 0, name
        right, wrong = float((actual - expected).norm()) / scale, float((actual - fresh).norm()) / scale
        assert right < 0.1 and wrong > 3 * right, f"{name}: error {right:.3f} resumed vs {wrong:.3f} fresh"


def _optimizer_index(name: str) -> int:
    """Optimizer state is keyed by position over the param groups (build_optimizer's grouping)."""
    model = build_resnet(18, 6)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in parameter_groups(model, 1e-4) for p in group["params"]]
    return order.index(name)


# -- torchrun: two CPU processes (gloo) agree on the weights ----------------------------------------------


def test_torchrun_two_processes_agree(tiny_shards: Path, tmp_path: Path) -> None:
    summary = tmp_path / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "visionnode.components.train", "--shards", str(tiny_shards),
               "--out", str(tmp_path / "model"),
               "--epochs", "1", "--batch-size", "4", "--arch", "resnet18", "--res-schedule", "32:32",
               "--precision", "fp32", "--max-steps", "2", "--workers", "1", "--resume", "never",
               "--json", str(summary)]
    env = {**os.environ, "VISIONNODE_PROGRESS": "0", "MLFLOW_TRACKING_URI": "", "OMP_NUM_THREADS": "1"}
    # Own session: on a timeout or failure the whole group (torchrun + both DDP workers) is killed.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, start_new_session=True)
    try:
        output = proc.communicate(timeout=150)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
        pytest.fail(f"torchrun did not finish in 150 s:\n{output[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-6000:]
    result = json.loads(summary.read_text())
    assert result["world_size"] == 2 and result["global_batch"] == 8 and result["steps"] == 2
    fingerprints = result["replica_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    initial = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    assert set(initial) and not any(k.startswith("module.") for k in initial)


# -- errors: one line, exit 2 ----------------------------------------------------------------------------


def test_missing_and_corrupt_checkpoints_are_clear_errors(tiny_shards: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["train", "--shards", str(tiny_shards), "--out", str(tmp_path / "m"), "--arch", "resnet18",
            "--res-schedule", "32:32", "--precision", "fp32", "--batch-size", "8"]
    missing = runner.invoke(app, base + ["--resume", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert "error:" in missing.output and "does not exist" in missing.output

    corrupt = tmp_path / "ckpt" / "checkpoint-e0000-s000000002.pt"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    (corrupt.parent / "latest.json").write_text(json.dumps({"checkpoint": corrupt.name}))
    broken = runner.invoke(app, base + ["--checkpoint-uri", str(corrupt.parent)])
    assert broken.exit_code == 2 and "corrupt" in broken.output and "Traceback" not in broken.output
    assert len([line for line in broken.output.splitlines() if line.startswith("error:")]) == 1

    torch.save({"just": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(IntegrityError, match="not a VisionNode training checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))
    with pytest.raises(DataError, match="does not exist"):
        load_checkpoint(str(tmp_path / "gone.pt"))


def test_cli_user_errors(tiny_shards: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for flags, needle in ((["--res-schedule", "256:128"], "res-schedule"),
                          (["--arch", "vgg16"], "--arch 'vgg16' is not known (use one of resnet18, resnet34"),
                          (["--precision", "fp16"], "CUDA")):
        result = runner.invoke(app, ["train", "--shards", str(tiny_shards), "--out", str(tmp_path / "m"),
                                     *flags])
        assert result.exit_code == 2 and result.output.startswith("error:"), result.output
        assert needle in result.output, result.output


# -- learning rate: given, batch rule or LR probe --------------------------------------------------------


def test_lr_words_and_the_pipeline_rule_a_given_lr_wins() -> None:
    assert parse_lr("auto") == LR_AUTO and parse_lr(" AUTO ") == LR_AUTO
    assert parse_lr("batch-rule") == LR_BATCH_RULE and parse_lr("0.05") == 0.05
    for bad in ("0", "-0.1", "fast", "nan", "inf", ""):  # 0 once meant auto or the batch rule: now an error
        with pytest.raises(ConfigError, match="auto .* batch-rule .* or a peak LR > 0"):
            parse_lr(bad)
    assert resolve_lr("0.05", suggested_lr=0.3) == (0.05, "given")  # the user's LR wins
    assert resolve_lr("auto", suggested_lr=0.3) == (0.3, "probe")  # validate's suggestion
    assert resolve_lr("auto", suggested_lr=0.0) == (None, "batch rule")  # the probe did not run
    assert resolve_lr("batch-rule", suggested_lr=0.3) == (None, "batch rule")  # asked for: the probe ignored
    # validate's probe trains a ResNet-18: a bottleneck ResNet takes its suggestion up to 0.03 (both sides of
    # the cap), ResNet-34 the suggestion itself
    source = "probe on resnet18, at most 0.03 for resnet152"
    assert resolve_lr("auto", suggested_lr=0.3, depth=152) == (0.03, source)
    assert resolve_lr("auto", suggested_lr=0.02, depth=152) == (0.02, source)
    assert resolve_lr("auto", suggested_lr=0.3, depth=34) == (0.3, "probe")
    assert Recipe(lr=None).peak_lr(64) == 0.025 and Recipe(lr=0.05).peak_lr(64) == 0.05
    with pytest.raises(ConfigError, match="not a positive number"):
        Recipe(lr=0.0).validate()


def test_train_cli_names_the_lr_words_on_a_bad_lr(tiny_shards: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--shards", str(tiny_shards), "--out", str(tmp_path / "m"),
                                      "--lr", "0"])
    assert result.exit_code == 2
    assert "learning rate '0' is invalid" in result.output and "batch-rule" in result.output


def test_lr_auto_keeps_the_batch_rule_when_its_probe_sees_no_signal(tiny_shards: Path,
                                                                     tmp_path: Path) -> None:
    summary = tmp_path / "auto.json"
    result = CliRunner().invoke(app, [
        "train", "--shards", str(tiny_shards), "--out", str(tmp_path / "m"), "--arch", "resnet18",
        "--res-schedule", "32:32", "--precision", "fp32", "--batch-size", "8", "--epochs", "1",
        "--workers", "1", "--max-steps", "2", "--resume", "never", "--lr", "auto", "--lr-probe-steps", "4",
        "--json", str(summary)])
    assert result.exit_code == 0, result.output
    done = json.loads(summary.read_text())
    probe = done["lr_probe"]
    assert probe["steps_run"] == 3 * 4 and probe["heldout_images"] == 16  # two held-out batches of 8
    # 4 steps judged on 16 held-out images tell nothing: no suggestion, the batch rule
    assert probe["suggested_lr"] is None and "LR probe: no suggestion" in result.output
    assert done["lr_plan"]["source"] == "batch rule" and done["peak_lr"] == Recipe().batch_rule_lr(8)
    saved = load_checkpoint(done["checkpoint"])
    assert saved["scheduler"]["base_lrs"][0] == pytest.approx(done["peak_lr"])
    assert (tmp_path / "m" / "lr_probe.png").read_bytes().startswith(b"\x89PNG")
    assert "LR probe:" in result.output and "LR plan: peak LR" in result.output


def test_lr_auto_and_a_given_lr_exclude_each_other(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        small_config(tiny_shards, tmp_path, auto_lr=True).validate()  # small_config gives lr 0.05


# -- augmentation strength -------------------------------------------------------------------------------


def _two_passes_differ(shards: Path, augmentation: Augmentation) -> float:
    """Mean |difference| between two passes over the same epoch (same sample order): only augmentation
    differs."""
    files = sorted(str(p) for p in shards.glob("train-*.beton"))
    loader = train_loader(files, batch_size=8, resolution=32, workers=1, seed=0, augmentation=augmentation)
    passes = []
    for _ in range(2):
        loader.set_epoch(0)
        passes.append(torch.cat([images.clone() for images, _ in loader]))
    return float((passes[0] - passes[1]).abs().mean())


def test_crop_scale_and_flip_set_how_much_two_passes_differ(tiny_shards: Path) -> None:
    imagenet = _two_passes_differ(tiny_shards, Augmentation())
    gentle = _two_passes_differ(tiny_shards, Augmentation(min_scale=1.0, flip=False))
    assert imagenet > 0.3 and gentle < 0.1 * imagenet, (imagenet, gentle)


def test_augmentation_flags_are_checked(tiny_shards: Path, tmp_path: Path) -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="--crop-min-scale"):
            small_config(tiny_shards, tmp_path, crop_min_scale=bad).validate()
    small_config(tiny_shards, tmp_path, crop_min_scale=1.0, flip=False).validate()


# -- fine-tuning from a weights file ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second generated dataset with another class count (4, tiny_shards has 6), as shards."""
    root = tmp_path_factory.mktemp("other")
    synthesize_dataset(root / "data", SynthConfig(classes=4, train_per_class=16, val_per_class=4, seed=11,
                                                  min_side=64, max_side=96))
    return shard_dataset(ShardConfig(data=root / "data", out=root / "shards", images_per_shard=64,
                                     max_resolution=64, workers=2, readback=False)).out


def _backbone(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    parameters = {name for name, _ in build_resnet(18, 4).named_parameters()}
    return {k: v for k, v in weights.items() if k in parameters and not k.startswith("fc.")}


@pytest.mark.parametrize("head_epochs", [1, 0])
def test_fine_tune_our_own_weights_on_other_classes(bucket: str, tiny_model: Path, other_shards: Path,
                                                    tmp_path: Path, head_epochs: int) -> None:
    """The 6-class tiny model, fetched from S3, fine-tuned on 4 classes: the head is replaced; with one
    head-only warm-up epoch out of one the backbone stays exactly as loaded, without it the backbone
    trains."""
    source = torch.load(tiny_model / "weights.pt", weights_only=True)
    s3_client().upload_file(str(tiny_model / "weights.pt"), bucket, "pretrained/weights.pt")
    out = tmp_path / "ft"
    result = train(small_config(other_shards, out, epochs=1, init_weights=f"s3://{bucket}/pretrained/weights.pt",
                                head_epochs=head_epochs))
    assert result.init_weights.head_replaced and result.init_weights.source_classes == 6
    tuned = torch.load(out / "weights.pt", weights_only=True)
    assert tuned["fc.weight"].shape == (4, 512) and source["fc.weight"].shape == (6, 512)
    unchanged = [k for k, v in _backbone(tuned).items() if torch.equal(v, source[k])]
    if head_epochs:
        assert unchanged == list(_backbone(tuned)), "the backbone trained during the head-only epoch"
    else:
        assert not unchanged, f"backbone tensors never trained: {unchanged[:3]}"


def test_init_weights_that_do_not_fit_are_one_line_errors(tiny_model: Path, other_shards: Path,
                                                          tmp_path: Path) -> None:
    torch.save(build_resnet(34, 4).state_dict(), tmp_path / "resnet34.pt")
    torch.save({"model": "not tensors"}, tmp_path / "junk.pt")
    base = ["train", "--shards", str(other_shards), "--out", str(tmp_path / "m"), "--arch", "resnet18",
            "--res-schedule", "32:32", "--precision", "fp32", "--batch-size", "8", "--resume", "never"]
    for flags, needle in ((["--init-weights", str(tmp_path / "resnet34.pt")], "do not fit resnet18"),
                          (["--init-weights", str(tmp_path / "junk.pt")], "not a state dict"),
                          (["--init-weights", str(tmp_path / "gone.pt")], "does not exist"),
                          (["--head-epochs", "1"], "--init-weights")):
        result = CliRunner().invoke(app, base + flags)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output
        assert "Traceback" not in result.output


# -- the fixture other phases use ----------------------------------------------------------------------


def test_tiny_model_fixture(tiny_model: Path, tiny_model_result) -> None:
    metadata = ModelMetadata.load(tiny_model)
    assert metadata.arch == "resnet18" and metadata.preprocessing.input_size == 64
    assert tiny_model_result.status == "completed" and tiny_model_result.epochs_completed == 2
    # Epoch means, not two single batches (one noisy batch each): the second epoch's loss is lower.
    rows = [line.split(",") for line in (tiny_model / "train_log.csv").read_text().splitlines()[1:]]
    by_epoch = {e: [float(r[2]) for r in rows if int(r[1]) == e] for e in (0, 1)}
    assert all(by_epoch.values()), rows
    mean = {e: sum(v) / len(v) for e, v in by_epoch.items()}
    assert mean[1] < mean[0], f"tiny model did not learn: epoch mean losses {mean}"
    model_keys = torch.load(tiny_model / "weights.pt", weights_only=True).keys()
    assert "fc.weight" in model_keys and metadata.training["config"]["arch"] == "resnet18"
