"""quantize: folded-preprocessing export, INT8 quantization + metadata, accuracy gate, measurements, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
import torch
from typer.testing import CliRunner

from visionnode.components.common.artifacts import InferenceMetadata, ModelMetadata, ShardManifest
from visionnode.components.common.confusion import Confusion
from visionnode.components.common.data.ffcv_io import uint8_batches
from visionnode.components.quantize.accuracy import AccuracyReport, compare_accuracy
from visionnode.components.quantize.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    convert_to_openvino,
    export_onnx,
    load_trained_model,
    torch_logits,
)
from visionnode.components.quantize.gate import FAIL, PASS, WARN, judge_accuracy
from visionnode.components.quantize.perf import (
    ENGINES,
    OPENVINO_FP32,
    OPENVINO_INT8,
    PYTORCH_FP32,
    compile_openvino,
    openvino_logits,
)
from visionnode.components.quantize.quantize import QuantizeResult, quantize_openvino
from visionnode.components.transfer.transfer import UploadConfig, upload_shards
from visionnode.pipeline.cli import app


def _val_logits(int8_model: Path, shards: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FP32 logits, INT8 logits, labels) over every val image: the exported ONNX model and the shipped IR."""
    manifest = ShardManifest.load(shards)
    batches = list(uint8_batches([shards / s.file for s in manifest.shards_for("val")], 8, size))
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    fp32 = compile_openvino(ov.Core().read_model(str(int8_model / "model.onnx")), fp32_exact=True)
    int8 = compile_openvino(int8_model / "model.xml")
    return openvino_logits(fp32)(images), openvino_logits(int8)(images), labels


def _val_images(shards: Path, count: int, size: int) -> np.ndarray:
    manifest = ShardManifest.load(shards)
    paths = [shards / s.file for s in manifest.shards_for("val")]
    return np.concatenate([images for images, _ in uint8_batches(paths, 8, size, limit=count)])


def test_onnx_and_ir_take_uint8_nhwc_and_match_pytorch(int8_model: Path, tiny_model: Path,
                                                       tiny_shards: Path) -> None:
    trained = load_trained_model(tiny_model)
    size = trained.input_size
    graph = onnx.load(str(int8_model / "model.onnx"))
    onnx.checker.check_model(graph)
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == (INPUT_NAME, onnx.TensorProto.UINT8)
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", size, size, 3]
    assert out.name == OUTPUT_NAME

    images = _val_images(tiny_shards, 5, size)           # real pixels, odd batch size (dynamic batch)
    reference = torch_logits(trained, images)
    portable = compile_openvino(ov.Core().read_model(str(int8_model / "model.onnx")), fp32_exact=True)
    np.testing.assert_allclose(openvino_logits(portable)(images), reference, rtol=1e-4, atol=1e-4)
    int8 = openvino_logits(compile_openvino(int8_model / "model.xml"))(images)
    assert int8.shape == (5, trained.metadata.num_classes) and int8.dtype == np.float32
    spread = float(np.ptp(reference))
    assert float(np.abs(int8 - reference).max()) < 0.25 * spread  # quantized, yet the same function


def test_quantize_writes_int8_ir_and_metadata_deploy_can_read(int8_model: Path,
                                                              quantized_tiny: QuantizeResult,
                                                              tiny_model: Path, tiny_shards: Path) -> None:
    meta = InferenceMetadata.load(int8_model)
    source = ModelMetadata.load(tiny_model)
    size = source.preprocessing.input_size
    assert meta.precision == "int8" and meta.arch == source.arch
    assert (meta.input.name, meta.input.dtype, meta.input.layout, meta.input.shape) == \
        (INPUT_NAME, "uint8", "NHWC", [-1, size, size, 3])
    assert (meta.output.name, meta.output.shape) == (OUTPUT_NAME, [-1, source.num_classes])
    assert meta.classes == source.classes and meta.preprocessing == source.preprocessing
    assert (int8_model / meta.ir_xml).is_file() and (int8_model / meta.onnx).is_file()

    ir = ov.Core().read_model(str(int8_model / meta.ir_xml))
    assert any(op.get_type_name() == "FakeQuantize" for op in ir.get_ops())
    # INT8 weights: the IR's .bin is well under the FP32 ONNX file
    assert (int8_model / "model.bin").stat().st_size < 0.5 * (int8_model / "model.onnx").stat().st_size

    acc = quantized_tiny.accuracy
    assert acc.images == ShardManifest.load(tiny_shards).images_in("val")
    assert meta.accuracy["int8_top1"] == acc.int8_top1 and meta.accuracy["quality_gate_passed"] == 1.0
    # The report's figures, recomputed here with numpy from both engines' logits and the val labels.
    # Tolerance: one image, which a near-tie can move between OpenVINO's batch sizes and thread counts.
    fp32, int8, labels = _val_logits(int8_model, tiny_shards, size)
    one_image = 100 / len(labels) + 1e-9
    engines = (("fp32", fp32), ("int8", int8))
    top1 = {name: 100 * float(np.mean(logits.argmax(1) == labels)) for name, logits in engines}
    top5 = {name: 100 * float(np.mean((np.argsort(-logits, 1)[:, :5] == labels[:, None]).any(1)))
            for name, logits in engines}
    agreement = 100 * float(np.mean(fp32.argmax(1) == int8.argmax(1)))
    figures = {"fp32_top1": top1["fp32"], "int8_top1": top1["int8"], "fp32_top5": top5["fp32"],
               "int8_top5": top5["int8"], "top1_agreement": agreement,
               "top1_drop_pts": top1["fp32"] - top1["int8"]}
    for name, expected in figures.items():
        assert getattr(acc, name) == pytest.approx(expected, abs=one_image), (name, acc, figures)
    assert acc.top1_agreement >= 80.0, acc
    assert acc.median_margin > 0 and acc.flip_max_margin >= 0
    assert (acc.flip_max_margin == 0) == (acc.top1_agreement == 100.0), acc
    # No "beats chance" check: the 2-epoch tiny model sits near chance on 24 val images (flaky); INT8 fidelity
    # on a trained model is measured by the demo and bench_quantize.py.
    report = json.loads((int8_model / "quantize_report.json").read_text())
    assert report["accuracy"]["top1_agreement"] == acc.top1_agreement
    # The INT8 confusion matrix counts every val image once, its diagonal is the INT8 top-1 reported.
    confusion = Confusion.load(int8_model)
    assert confusion.names == meta.classes.names and confusion.matrix.sum() == acc.images
    assert 100 * np.trace(confusion.matrix) / acc.images == pytest.approx(acc.int8_top1)
    per_class = np.bincount(labels, minlength=len(meta.classes.names))
    assert confusion.matrix.sum(axis=1).tolist() == per_class.tolist()  # each image in its true class's row
    assert meta.accuracy["flip_max_margin"] == acc.flip_max_margin


def _int8_fed(model, op_type: str, ports: tuple[int, ...]) -> set[str]:
    """Names of the `op_type` ops whose activation inputs at `ports` all come from a FakeQuantize.

    Activation inputs only: a Convolution's weights are stored as INT8 constants, not behind a
    FakeQuantize."""
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == op_type and all(
        op.input(i).get_source_output().get_node().get_type_name() == "FakeQuantize" for i in ports)}


def _names(model, op_type: str) -> set[str]:
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == op_type}


def _stored_weight_type(convolution):
    """Element type of the Constant a Convolution's weights come from (through Convert/Multiply...)."""
    node = convolution.input(1).get_source_output().get_node()
    while node.get_type_name() != "Constant":
        node = node.input(0).get_source_output().get_node()
    return node.get_element_type()


def test_adds_stem_and_projections_stay_fp32_unless_full_int8(int8_model: Path, tiny_model: Path,
                                                              tiny_shards: Path, tmp_path: Path) -> None:
    shipped = ov.Core().read_model(str(int8_model / "model.xml"))
    adds, convs = _names(shipped, "Add"), _names(shipped, "Convolution")
    assert len(adds) >= 8 and not _int8_fed(shipped, "Add", (0, 1))   # ResNet-18: 8 residual Adds, all FP32
    fp32_convs = convs - _int8_fed(shipped, "Convolution", (0,))
    stem = [name for name in fp32_convs if "/downsample/" not in name]
    assert stem == ["/classifier/conv1/Conv/WithoutBiases"], fp32_convs
    assert len(fp32_convs) == 4 and len(convs) == 20, fp32_convs   # ResNet-18: stem + 3 projections of 20
    weight_types = {_stored_weight_type(op) for op in shipped.get_ops()
                    if op.get_type_name() == "Convolution"}
    # the FP32-computing convolutions store INT8 weights too
    assert weight_types == {ov.Type.i8}, weight_types

    trained = load_trained_model(tiny_model)
    fp32 = convert_to_openvino(export_onnx(trained, tmp_path / "model.onnx"))
    calibration = [image[None] for image in _val_images(tiny_shards, 8, trained.input_size)]
    full = quantize_openvino(fp32, calibration, fast_bias_correction=True, full_int8=True)
    assert fp32_convs <= _int8_fed(full, "Convolution", (0,))   # stem and projections INT8 too
    assert len(_int8_fed(full, "Add", (0, 1))) >= 7   # NNCF quantizes 7 of the 8 residual Adds' inputs (seen)


def test_size_memory_and_speed_are_measured_for_all_engines(int8_model: Path,
                                                            quantized_tiny: QuantizeResult) -> None:
    perf = quantized_tiny.perf
    assert perf is not None and set(perf.engines) == set(ENGINES)
    for timing in perf.engines.values():
        assert timing.latency_b1_ms > 0 and timing.throughput_ips > 0 and timing.latency_samples >= 3
    on_disk = (int8_model / "model.xml").stat().st_size + (int8_model / "model.bin").stat().st_size
    assert perf.int8_size_bytes == on_disk
    assert 20e6 < perf.int8_peak_rss_bytes < 4e9   # a real process: more than the interpreter, far from GBs
    # The speed-ups are the ratios of the engines' own measured throughputs, and exported as such.
    int8_ips = perf.engines[OPENVINO_INT8].throughput_ips
    assert perf.speedup_vs_pytorch == pytest.approx(int8_ips / perf.engines[PYTORCH_FP32].throughput_ips)
    openvino_fp32_ips = perf.engines[OPENVINO_FP32].throughput_ips
    assert perf.speedup_vs_openvino_fp32 == pytest.approx(int8_ips / openvino_fp32_ips)
    exported = quantized_tiny.metrics()
    assert exported["int8_speedup_vs_pytorch_fp32"] == pytest.approx(perf.speedup_vs_pytorch)
    assert (int8_model / "throughput.png").stat().st_size > 1000
    assert quantized_tiny.metrics()["int8_size_mb"] == on_disk / 1e6


def test_cli_from_s3_shards_gate_fails_loudly_keeps_outputs_and_logs_to_mlflow(
        stack, bucket: str, tiny_model: Path, tiny_shards: Path, tmp_path: Path) -> None:
    import mlflow

    source = f"s3://{bucket}/tiny"
    upload_shards(UploadConfig(tiny_shards, source))
    out, summary = tmp_path / "int8", tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["quantize", "--model", str(tiny_model), "--shards", source,
                                      "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                                      "--calibration-images", "16", "--no-measure",
                                      "--max-accuracy-drop", "-100", "--json", str(summary)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--max-accuracy-drop -100" in errors[0] and "Traceback" not in result.output
    assert InferenceMetadata.load(out).accuracy["quality_gate_passed"] == 0.0   # kept for inspection
    assert json.loads(summary.read_text())["gate"]["verdict"] == FAIL
    assert "# INT8 accuracy gate: FAILED" in (out / "gate.md").read_text()

    mlflow.set_tracking_uri(stack.endpoints.mlflow_uri)
    (run,) = mlflow.search_runs(experiment_names=["visionnode"], output_format="list",
                                filter_string=f"params.shards = '{source}'")
    assert run.data.metrics["quality_gate_passed"] == 0.0 and run.data.metrics["calibration_images"] == 16
    logged = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "int8_model")}
    assert {"model.xml", "model.bin", "model.json"} <= logged


def _report(images: int, fp32_right: int, fp32_only: int, int8_only: int) -> AccuracyReport:
    """A comparison with known counts: FP32 right on `fp32_right` images, INT8 loses `fp32_only` of them and
    gets `int8_only` others right."""
    int8_right = fp32_right - fp32_only + int8_only
    return AccuracyReport(images=images, fp32_top1=100 * fp32_right / images, fp32_top5=100.0,
                          int8_top1=100 * int8_right / images, int8_top5=100.0,
                          top1_agreement=100 * (images - fp32_only - int8_only) / images,
                          top1_drop_pts=100 * (fp32_right - int8_right) / images, fp32_only_right=fp32_only,
                          int8_only_right=int8_only)


@pytest.mark.parametrize("report, max_drop, verdict", [
    (_report(359, 250, 0, 0), 1.0, PASS),      # identical answers
    (_report(359, 250, 3, 3), 1.0, PASS),      # they disagree on 6 images, the same accuracy
    (_report(359, 250, 5, 0), 1.0, WARN),      # 1.39 pts > 1, but 5 images cannot tell: issue 31's case
    (_report(359, 250, 20, 2), 1.0, FAIL),     # 5.0 pts, lower bound 2.9 pts: a real drop
    (_report(5000, 3500, 100, 20), 1.0, FAIL),  # 1.6 pts on 5,000 images, bound 1.28: above 1
    (_report(5000, 3500, 80, 20), 1.0, WARN),  # 1.2 pts, bound 0.89: significant (> 0), not above 1
    (_report(24, 12, 0, 0), -100.0, FAIL),     # "INT8 must beat FP32 by 100 points": the bound 0 is above
])
def test_accuracy_gate_known_answers(report: AccuracyReport, max_drop: float, verdict: str) -> None:
    decision = judge_accuracy(report, max_drop=max_drop)
    assert decision.verdict == verdict, decision.message
    assert decision.passed is (verdict != FAIL) and decision.warning is (verdict == WARN)
    # the message names the measured drop, the images compared and the rule
    assert f"drop {report.top1_drop_pts:.2f} pts" in decision.message
    assert f"same {report.images} val images" in decision.message
    assert "Rule: fail only when" in decision.message
    if verdict == WARN:
        assert "too few images to tell" in decision.message


def _predicting(classes: list[int]):
    """A model whose answer for image i is classes[i] (one-hot logits over 4 classes)."""
    return lambda images: np.eye(4, dtype=np.float32)[np.asarray(classes)[images]]


@pytest.mark.parametrize("fp32, int8, drop, discordant", [
    ([0, 1, 2, 0], [0, 1, 0, 0], 25.0, (1, 0)),   # FP32 3/4 right, INT8 2/4: INT8 lost 25 points
    ([0, 1, 0, 0], [0, 1, 2, 0], -25.0, (0, 1)),  # the other way round: INT8 gained 25 points
    ([0, 1, 2, 0], [0, 1, 2, 1], 0.0, (0, 0)),    # both wrong on the last image, differently
])
def test_top1_drop_and_discordant_images_of_known_predictions(fp32: list[int], int8: list[int], drop: float,
                                                              discordant: tuple[int, int]) -> None:
    labels = np.array([0, 1, 2, 3])
    confusion = Confusion.empty(["a", "b", "c", "d"])
    report = compare_accuracy(_predicting(fp32), _predicting(int8), [(np.arange(4), labels)], num_classes=4,
                              int8_confusion=confusion)
    assert report.top1_drop_pts == drop and report.top1_agreement == 75.0
    assert (report.fp32_only_right, report.int8_only_right) == discordant
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[labels, int8] = 1  # image i: true class i, INT8's answer int8[i]
    np.testing.assert_array_equal(confusion.matrix, expected)


@pytest.fixture(scope="module")
def digit_classifiers() -> dict:
    """Real models on real images: two linear classifiers of sklearn's scanned digits (8x8), trained on the
    same 1,000 images from different seeds (each about 94 % on the other 797), and the first with its
    weights damaged (Gaussian noise of the weights' own size, as a broken INT8 conversion would)."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = torch.tensor(images / 16.0, dtype=torch.float32)
    labels_t = torch.tensor(labels)

    def fit(seed: int) -> torch.nn.Linear:
        torch.manual_seed(seed)
        model = torch.nn.Linear(64, 10)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        order = torch.randperm(1000)
        for step in range(300):
            batch = order[(step * 100) % 1000:(step * 100) % 1000 + 100]
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels_t[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model

    first, second = fit(0), fit(1)
    damaged = torch.nn.Linear(64, 10)
    with torch.no_grad():
        damaged.load_state_dict(first.state_dict())
        generator = torch.Generator().manual_seed(2)
        damaged.weight += first.weight.std() * torch.randn(damaged.weight.shape, generator=generator)

    def logits(model: torch.nn.Linear):
        return lambda index: model(images[index]).detach().numpy()

    held_out = np.arange(1000, len(labels))
    return {"batches": [(held_out[i:i + 100], labels[held_out[i:i + 100]]) for i in range(0, 797, 100)],
            "first": logits(first), "second": logits(second), "damaged": logits(damaged)}


def test_gate_fails_a_damaged_model_on_real_images(digit_classifiers: dict) -> None:
    report = compare_accuracy(digit_classifiers["first"], digit_classifiers["damaged"],
                              digit_classifiers["batches"], num_classes=10)
    decision = judge_accuracy(report, max_drop=1.0)
    assert report.images == 797 and report.fp32_top1 > 90 and report.top1_drop_pts > 5, report
    assert decision.verdict == FAIL and decision.drop_lower_bound_pts > 1.0, decision.message


def test_gate_passes_two_equally_good_models_that_disagree_on_some_images(digit_classifiers: dict) -> None:
    report = compare_accuracy(digit_classifiers["first"], digit_classifiers["second"],
                              digit_classifiers["batches"], num_classes=10)
    decision = judge_accuracy(report, max_drop=1.0)
    assert report.fp32_only_right + report.int8_only_right >= 4, report  # they do disagree
    assert abs(report.top1_drop_pts) < 2 and decision.passed, decision.message


def test_cli_missing_model_dir_is_one_line_user_error(tiny_shards: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["quantize", "--model", str(tmp_path / "nope"),
                                      "--shards", str(tiny_shards),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")
    assert "does not exist" in result.stderr and not (tmp_path / "out").exists()
