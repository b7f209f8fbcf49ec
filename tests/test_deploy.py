"""deploy: generated Triton repository, publish to S3, load through the repository API as a candidate,
answers checked against local OpenVINO, promotion with a zero-downtime version swap, and one-line errors.
(The promotion decision, refusals and two replicas: tests/test_promotion.py.)"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from typer.testing import CliRunner

from tests.serving_helpers import make_small_openvino_model, optional_fixture, serve, server_counts
from visionnode.components.common.artifacts import InferenceMetadata
from visionnode.components.common.data.samples import encode_jpeg
from visionnode.components.common.errors import DataError, ServiceError
from visionnode.components.common.serving.triton import triton_http_client
from visionnode.components.common.storage.s3 import s3_client
from visionnode.components.deploy.deploy import DeployConfig, deploy
from visionnode.components.deploy.repository import (
    JPEG_INPUT,
    ServingConfig,
    jpeg_model_config,
    labels_text,
    openvino_backend_config,
    parse_config,
    tensor_model_config,
)
from visionnode.pipeline.cli import app


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_small_openvino_model(tmp_path_factory.mktemp("small") / "model", size=32, classes=6)


def _infer(client, model: str, images: np.ndarray) -> np.ndarray:
    tensor = httpclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return client.infer(model, [tensor]).as_numpy("logits")


def _infer_grpc(client, model: str, images: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return client.infer(model, [tensor]).as_numpy("logits")


def _openvino_logits(ir_xml: Path, images: np.ndarray) -> np.ndarray:
    import openvino as ov

    return ov.Core().compile_model(str(ir_xml), "CPU")(images)[0]


def test_generated_configs_parse_as_triton_model_configs(small_model: Path) -> None:
    meta = InferenceMetadata.load(small_model)
    cfg = ServingConfig(max_batch_size=8, preferred_batch_sizes=[4, 8], max_queue_delay_us=2000,
                        queue_timeout_us=500_000, max_queue_size=32, instances=2)
    tensor = parse_config(tensor_model_config("m", meta, cfg))
    assert tensor.backend == "python" and tensor.max_batch_size == 8
    assert list(tensor.input[0].dims) == [32, 32, 3] and tensor.input[0].name == "images"
    assert tensor.output[0].label_filename == "labels.txt" and list(tensor.output[0].dims) == [6]
    batching = tensor.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8] and batching.max_queue_delay_microseconds == 2000
    policy = batching.default_queue_policy
    assert policy.timeout_action == policy.REJECT and policy.max_queue_size == 32
    assert policy.default_timeout_microseconds == 500_000
    group = tensor.instance_group[0]
    assert group.count == 2 and group.kind == group.KIND_CPU
    assert tensor.version_policy.latest.num_versions == 1
    jpeg = parse_config(jpeg_model_config("m", meta, cfg))
    assert jpeg.name == "m_jpeg" and jpeg.input[0].name == JPEG_INPUT
    assert jpeg.parameters["target_model"].string_value == "m"
    native = parse_config(openvino_backend_config("m", meta, cfg))
    assert native.backend == "openvino" and native.parameters["PERFORMANCE_HINT"].string_value == "THROUGHPUT"
    assert labels_text(meta).splitlines() == meta.classes.names


def test_wrong_input_spec_is_refused_before_anything_is_published(small_model: Path, tmp_path: Path) -> None:
    lying = make_small_openvino_model(tmp_path / "lying", size=32)
    meta = InferenceMetadata.load(lying)
    meta.input.shape = [-1, 48, 48, 3]  # model.json now promises 48² but the IR takes 32²
    meta.save(lying)
    with pytest.raises(DataError, match="wrong input spec"):
        deploy(DeployConfig(model_dir=lying, repository=str(tmp_path / "repo"), triton_http="127.0.0.1:1"))
    assert not (tmp_path / "repo").exists()


@pytest.fixture(scope="module")
def int8_or_small(request: pytest.FixtureRequest, small_model: Path) -> Path:
    """quantize's `int8_model` (needs tiny_shards); the small OpenVINO model until those fixtures exist."""
    return optional_fixture(request, "int8_model") or small_model


def test_deploy_serves_the_int8_model_over_http_and_grpc(stack, request: pytest.FixtureRequest,
                                                         int8_or_small: Path, bucket: str,
                                                         tmp_path: Path) -> None:
    int8_model = int8_or_small
    shards = optional_fixture(request, "tiny_shards")
    result, promoted = serve(DeployConfig(model_dir=int8_model, model_name="tiny_int8",
                                          repository=f"s3://{bucket}/models",
                                          shards=str(shards) if shards else None, check_images=12), tmp_path)
    assert result.check.source == (str(shards) if shards else "synthetic") and result.check.images == 12
    assert promoted.checks[0].images == 12  # promotion checked the production name's answers the same way
    assert result.triton_repository == stack.endpoints.triton_repository
    assert f"s3://{bucket}/models" in result.published
    keys = {o["Key"] for o in s3_client().list_objects_v2(Bucket=bucket, Prefix="models")["Contents"]}
    v = result.model_version
    assert {"models/tiny_int8/config.pbtxt", "models/tiny_int8/labels.txt", f"models/tiny_int8/{v}/model.xml",
            f"models/tiny_int8/{v}/model.py", f"models/tiny_int8_jpeg/{v}/model.py"} <= keys
    # the candidate's copy is withdrawn once promoted: only a note keeps its version number taken
    assert {k for k in keys if k.startswith(f"models/tiny_int8_candidate/{v}/")} == {
        f"models/tiny_int8_candidate/{v}/WITHDRAWN"}
    assert any(k.startswith("models-openvino/tiny_int8/") and k.endswith("config.pbtxt")
               for k in {o["Key"] for o in s3_client().list_objects_v2(Bucket=bucket)["Contents"]})
    meta = InferenceMetadata.load(int8_model)
    size = meta.input.shape[1]
    images = np.random.default_rng(1).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    http = triton_http_client(result.http_url)
    grpc = grpcclient.InferenceServerClient(result.grpc_url)
    # Triton's answers, over both protocols, are OpenVINO's own on the same bytes (computed here, not by
    # deploy).
    local = _openvino_logits(int8_model / meta.ir_xml, images)
    assert local.shape == (3, meta.classes.num_classes)
    for served in (_infer(http, "tiny_int8", images), _infer_grpc(grpc, "tiny_int8", images)):
        np.testing.assert_allclose(served, local, rtol=0, atol=1e-3 * float(local.max() - local.min()))
        assert (served.argmax(1) == local.argmax(1)).all()
    tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    answer = grpc.infer("tiny_int8", [tensor],
                        outputs=[grpcclient.InferRequestedOutput("logits", class_count=2)])
    top = answer.as_numpy("logits")  # classification extension: "score:index:label", top-2 per image
    assert top.shape == (3, 2)
    label = top[0, 0].decode().split(":", 2)[2]
    assert label in meta.classes.names
    # A photo as-is: a real (lossy) JPEG of a different size, decoded and centre-cropped server-side.
    photo = np.random.default_rng(2).integers(0, 256, (size + 40, size + 10, 3), dtype=np.uint8)
    encoded = np.array([[encode_jpeg(photo)]], dtype=np.object_)
    jpeg_in = httpclient.InferInput(JPEG_INPUT, [1, 1], "BYTES")
    jpeg_in.set_data_from_numpy(encoded)
    assert http.infer("tiny_int8_jpeg", [jpeg_in]).as_numpy("logits").shape == (1, meta.classes.num_classes)


def test_new_version_replaces_the_old_without_failing_requests(stack, small_model: Path,
                                                               tmp_path: Path) -> None:
    first, _ = serve(DeployConfig(model_dir=small_model, model_name="swap"), tmp_path)
    client = triton_http_client(first.http_url)
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def keep_asking() -> None:
        nonlocal answered
        own = httpclient.InferenceServerClient(first.http_url)
        while not stop.is_set():
            try:
                _infer(own, "swap", images)
                answered += 1
            except Exception as exc:  # any failure during the swap is what this test looks for
                failures.append(str(exc))

    worker = threading.Thread(target=keep_asking)
    worker.start()
    try:
        second, _ = serve(DeployConfig(model_dir=small_model, model_name="swap"), tmp_path)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert second.model_version == first.model_version + 1 and second.champion_version == first.model_version
    assert failures == [] and answered > 20
    assert client.is_model_ready("swap", str(second.model_version))
    assert not client.is_model_ready("swap", str(first.model_version))  # latest-1 policy unloaded it


BATCHER_IDLE_TIMEOUT_MS = 500  # Triton's dynamic batcher sleeps this long when it is not woken
SEQUENTIAL_REQUESTS = 1500       # ~6 stalls expected with one instance (~1 in 250), P(none) ~ 0.3 %
STATS_EVERY = 20                 # requests between two reads of Triton's cumulative queue time


def _windows_with_a_stall(client, http_url: str, model: str) -> tuple[list[float], int]:
    """Send SEQUENTIAL_REQUESTS one at a time; every STATS_EVERY requests read Triton's own queue time.
    Returns the queue milliseconds of each window that waited near the batcher's idle timeout, and how
    many requests Triton answered meanwhile."""
    tensor = grpcclient.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    first = previous = server_counts(http_url, model)
    stalled_ms: list[float] = []
    for sent in range(1, SEQUENTIAL_REQUESTS + 1):
        client.infer(model, [tensor])
        if sent % STATS_EVERY == 0:
            now = server_counts(http_url, model)
            window_ms = (now - previous).queue_ns / 1e6
            if window_ms >= 0.8 * BATCHER_IDLE_TIMEOUT_MS:
                stalled_ms.append(round(window_ms))
            previous = now
    # Triton adds a request to its statistics just after sending the response: on a busy machine the last
    # one can be missing for a moment
    deadline = time.monotonic() + 5.0
    while (previous - first).requests < SEQUENTIAL_REQUESTS and time.monotonic() < deadline:
        time.sleep(0.05)
        previous = server_counts(http_url, model)
    return stalled_ms, (previous - first).requests


def test_sequential_requests_are_never_left_in_the_batchers_queue(stack, small_model: Path) -> None:
    # With one model instance, Triton 2.51 wakes its dynamic batcher for a new request only when the instance
    # already waits for work: a request that lands in the short gap after the previous response waits for the
    # batcher's 500 ms idle timeout (~1 in 250 sequential requests here). The default config must not do that.
    # Judged by Triton's own queue time, not client latency: a busy machine can delay a response by 300 ms,
    # but a request alone in the queue waits about max_queue_delay (3 ms) unless the batcher sleeps: seen
    # ~60 ms per window of STATS_EVERY requests, ~560 ms with one stall (one instance: 3 in 1,500 requests).
    served = deploy(DeployConfig(model_dir=small_model, model_name="no_stall", check_images=2))
    client = grpcclient.InferenceServerClient(served.grpc_url)
    stalled_ms, answered = _windows_with_a_stall(client, served.http_url, served.candidate_name)
    assert answered == SEQUENTIAL_REQUESTS, "Triton's statistics did not count exactly our requests"
    assert stalled_ms == [], f"{STATS_EVERY}-request windows that waited out the idle timeout: {stalled_ms}"


def test_failed_load_reports_tritons_message_and_keeps_the_old_version(stack, small_model: Path,
                                                                        tmp_path: Path) -> None:
    good, _ = serve(DeployConfig(model_dir=small_model, model_name="keep"), tmp_path)
    with pytest.raises(ServiceError, match=r"Triton could not load model 'keep_candidate': .*NOT_A_HINT"):
        deploy(DeployConfig(model_dir=small_model, model_name="keep",
                            serving=ServingConfig(ov_performance_hint="NOT_A_HINT")))
    client = triton_http_client(good.http_url)
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    assert _infer(client, "keep", images).shape == (1, 6)  # version 1 still serves


def test_cli_deploys_and_reports_unreachable_triton_in_one_line(stack, small_model: Path,
                                                                tmp_path: Path) -> None:
    runner = CliRunner()
    summary = tmp_path / "deploy.json"
    done = runner.invoke(app, ["deploy", "--model", str(small_model), "--name", "cli_model",
                               "--check-images", "4", "--json", str(summary)])
    assert done.exit_code == 0, done.output
    assert '"candidate_name": "cli_model_candidate"' in summary.read_text()
    promoted = runner.invoke(app, ["promote", "--endpoint", str(summary), "--model", str(small_model),
                                   "--reason", "by hand", "--json", str(tmp_path / "promote.json")])
    assert promoted.exit_code == 0, promoted.output
    assert '"outcome": "promoted: cli_model version 1 serves on 1 replica (by hand)"' in (
        tmp_path / "promote.json").read_text()
    assert triton_http_client(stack.endpoints.triton_http).is_model_ready("cli_model", "1")
    not_a_summary = runner.invoke(app, ["reject", "--endpoint", str(tmp_path / "promote.json")])
    assert not_a_summary.exit_code == 2 and "is not a deploy summary" in not_a_summary.output
    failed = runner.invoke(app, ["deploy", "--model", str(small_model), "--triton-url", "127.0.0.1:9"])
    assert failed.exit_code == 2
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"error: Triton at 127\.0\.0\.1:9 is not reachable", lines[0])
    assert "visionnode stack up" in lines[0]
