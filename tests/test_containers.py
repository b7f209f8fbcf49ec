"""The images for real: docker/build.sh builds them offline (cached layers), every image runs its CLI as uid
10001 with a read-only root, phases run in their containers against the embedded stack, Triton serves from its
image over HTTP and gRPC, and the whole DAG runs with kfp.local's DockerRunner.

Needs a Docker engine (scripts/dockerd.sh start). With CI=true a missing engine fails the module; elsewhere
the module is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serving_helpers import make_small_openvino_model
from tests.stack_fixtures import stack_session
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.settings import resolve_endpoints, resolve_s3_credentials, service_env
from visionnode.components.common.storage.s3 import s3_client
from visionnode.components.local import containers
from visionnode.components.local.stack import LocalStack
from visionnode.components.local.synth import SynthConfig, synthesize_dataset

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("base", *containers.PHASES, "triton-openvino")
UID = containers.IMAGE_USER.split(":")[0]
TINY = SynthConfig(classes=6, train_per_class=16, val_per_class=4, seed=7, min_side=64, max_side=160)
MODEL = "tiny_int8"


def _engine_or_skip() -> object:
    try:
        return containers.docker_client()
    except Exception as exc:  # ServiceError / ConfigError: one line saying why
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a Docker engine for the container tests: {exc}", pytrace=False)
        pytest.skip(f"no Docker engine: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    engine = _engine_or_skip()
    yield engine
    engine.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def images(client: object) -> dict[str, str]:
    """docker/build.sh as a user runs it: a warm cache makes this a no-op rebuild."""
    started = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "docker" / "build.sh")], capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"docker/build.sh: {time.monotonic() - started:.0f} s")
    return {name: containers.image_tag(name) for name in IMAGES}


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A scratch dir the images' uid can reach (pytest's own tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="visionnode-containers-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dataset(shared_dir: Path) -> Path:
    root = synthesize_dataset(shared_dir / "tiny-imagenet", TINY).root
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def container_stack(images: dict[str, str], shared_dir: Path) -> Iterator[LocalStack]:
    """S3 and MLflow as processes, Triton from the triton-openvino image; the environment points at them."""
    state = shared_dir / "state"
    state.mkdir(mode=0o755)
    yield from stack_session(state, triton_container=True)


def _writable_out(shared_dir: Path, name: str) -> Path:
    out = shared_dir / name
    out.mkdir()
    os.chown(out, 10001, 10001)
    return out


def _run(client, image: str, args: list[str], mounts=(), environment=None,
         timeout_s: float = 600) -> tuple[int, str]:
    """`docker run --rm --network host --user 10001 --read-only --tmpfs /tmp IMAGE ARGS` through the SDK."""
    spec = containers.ContainerSpec(image, args, name="", environment=environment or {}, mounts=mounts)
    container = client.containers.create(image, args, **spec.run_args())
    try:
        container.start()
        status = container.wait(timeout=timeout_s)["StatusCode"]
        return status, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def _service_env() -> dict[str, str]:
    return service_env(resolve_endpoints(), resolve_s3_credentials()) | {"VISIONNODE_PROGRESS": "0"}


# ------------------------------------------------------------------------------------------------ the images

def test_every_image_runs_its_cli_as_uid_10001_with_a_read_only_root(client, images: dict[str, str]) -> None:
    for name, tag in images.items():
        config = client.images.get(tag).attrs["Config"]
        assert config["User"] == containers.IMAGE_USER, f"{tag} runs as {config['User']!r}"
        assert not any(key.startswith(("AWS_", "MLFLOW_TRACKING")) for key in
                       (e.split("=", 1)[0] for e in config.get("Env") or [])), f"{tag} carries credentials"
        status, output = _run(client, tag, ["visionnode", "--help"] if name == "base" else ["--help"])
        assert status == 0, f"{tag}: {output[-2000:]}"
        assert "Usage" in output, output
        if name in containers.PHASES:
            assert f"visionnode {name}" in output, output
    status, output = _run(client, images["shard"], [], environment={})
    assert status == 0 and "Usage" in output  # CMD ["--help"]: a bare `docker run` prints the help
    status, who = _run(client, images["base"], ["id", "-u"])
    assert status == 0 and who.strip() == UID


def test_phase_images_share_the_base_layers(client, images: dict[str, str]) -> None:
    base_layers = client.images.get(images["base"]).attrs["RootFS"]["Layers"]
    for name in (*containers.PHASES, "triton-openvino"):
        layers = client.images.get(images[name]).attrs["RootFS"]["Layers"]
        assert layers[:len(base_layers)] == base_layers, f"{name} does not build on the base"
        assert len(layers) - len(base_layers) <= 1, f"{name} adds {len(layers) - len(base_layers)} layers"


def test_shard_in_its_container_matches_the_host_byte_for_byte(client, images, dataset: Path,
                                                               shared_dir: Path) -> None:
    from visionnode.components.shard.shard import ShardConfig, shard_dataset

    out = _writable_out(shared_dir, "shards-container")
    status, output = _run(client, images["shard"],
                          ["--data", str(dataset), "--out", f"{out}/shards", "--images-per-shard", "32",
                           "--max-resolution", "64", "--json", f"{out}/shard.json"],
                          mounts=[(dataset, dataset, True), (out, out, False)],
                          environment={"VISIONNODE_PROGRESS": "0"})
    assert status == 0, output[-3000:]
    summary = json.loads((out / "shard.json").read_text())
    assert summary["images_written"] == 6 * (16 + 4) and summary["files_skipped"] == 0
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert (out / "shards" / "manifest.json").stat().st_uid == 10001

    host = shard_dataset(ShardConfig(data=dataset, out=shared_dir / "shards-host", images_per_shard=32,
                                     max_resolution=64))
    host_manifest = json.loads(host.manifest.read_text())
    container_digests = {s["file"]: s["sha256"] for s in manifest["shards"]}
    assert container_digests == {s["file"]: s["sha256"] for s in host_manifest["shards"]}


def test_killed_shard_container_fails_and_a_rerun_resumes(client, images, dataset: Path,
                                                          shared_dir: Path) -> None:
    out = _writable_out(shared_dir, "shards-killed")
    args = ["--data", str(dataset), "--out", f"{out}/shards", "--images-per-shard", "4", "--max-resolution",
            "64",
            "--workers", "1", "--json", f"{out}/shard.json"]
    mounts = [(dataset, dataset, True), (out, out, False)]
    spec = containers.ContainerSpec(images["shard"], args, name="", environment={"VISIONNODE_PROGRESS": "0"},
                                    mounts=mounts)
    container = client.containers.create(images["shard"], args, **spec.run_args())
    try:
        container.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and _journaled(out / "shards") < 2:
            time.sleep(0.05)
        container.reload()
        assert container.status == "running", "shard finished before it could be killed"
        container.kill()
        status = container.wait(timeout=60)["StatusCode"]
    finally:
        container.remove(force=True)
    assert status == 137, f"a killed task must fail, got exit code {status}"
    assert not (out / "shards" / "manifest.json").exists() and not (out / "shard.json").exists()

    status, output = _run(client, images["shard"], args, mounts=mounts,
                          environment={"VISIONNODE_PROGRESS": "0"})
    assert status == 0, output[-3000:]
    summary = json.loads((out / "shard.json").read_text())
    assert summary["shards_reused"] >= 2 and summary["images_written"] == 6 * (16 + 4)


def _journaled(out: Path) -> int:
    from visionnode.components.shard.shard import JOURNAL_FILE

    try:
        return len(json.loads((out / JOURNAL_FILE).read_text())["entries"])
    except (OSError, ValueError, KeyError):
        return 0


# ------------------------------------------------------------------------------- against the embedded stack

def test_transfer_upload_in_its_container_to_the_embedded_s3(client, images, container_stack,
                                                             shared_dir: Path,
                                                             tiny_shards: Path) -> None:
    shards = shared_dir / "upload-src"
    shutil.copytree(tiny_shards, shards)
    for path in [shards, *shards.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    bucket = "containers-upload"
    s3_client().create_bucket(Bucket=bucket)
    out = _writable_out(shared_dir, "upload-out")
    status, output = _run(client, images["transfer"],
                          ["upload", str(shards), f"s3://{bucket}/shards", "--json", f"{out}/upload.json"],
                          mounts=[(shards, shards, True), (out, out, False)], environment=_service_env())
    assert status == 0, output[-3000:]
    summary = json.loads((out / "upload.json").read_text())
    local_files = sorted(p.name for p in shards.glob("*.beton"))
    listed = s3_client().list_objects_v2(Bucket=bucket, Prefix="shards/")["Contents"]
    remote = {obj["Key"].rsplit("/", 1)[1]: obj["Size"] for obj in listed}
    for name in local_files:
        assert remote.get(name) == (shards / name).stat().st_size, name
    remote_manifest = json.loads(s3_client().get_object(Bucket=bucket,
                                                        Key="shards/manifest.json")["Body"].read())
    local_manifest = json.loads((shards / "manifest.json").read_text())
    assert ({s["file"]: s["sha256"] for s in remote_manifest["shards"]}
            == {s["file"]: s["sha256"] for s in local_manifest["shards"]})
    assert summary["objects"] >= len(local_files)
    assert "AWS_SECRET_ACCESS_KEY" not in output and _service_env()["AWS_SECRET_ACCESS_KEY"] not in output


@pytest.fixture(scope="module")
def small_model(shared_dir: Path) -> Path:
    return make_small_openvino_model(shared_dir / "small-model", size=32, classes=6)


@pytest.fixture(scope="module")
def served_model(container_stack: LocalStack, small_model: Path, shared_dir: Path) -> str:
    """Staged and promoted: served under its production name."""
    from tests.serving_helpers import serve
    from visionnode.components.deploy.deploy import DeployConfig

    _, promoted = serve(DeployConfig(model_dir=small_model, model_name=MODEL, check_images=8), shared_dir)
    assert promoted.promoted and promoted.model_name == MODEL
    return MODEL


def test_triton_container_answers_http_and_grpc_from_the_host(client, container_stack: LocalStack,
                                                              served_model: str, small_model: Path) -> None:
    record = container_stack.status()[2]
    assert record.name == "triton" and record.healthy and record.pid
    endpoints = container_stack.endpoints
    container = client.containers.get(f"visionnode-triton-{endpoints.triton_http.rsplit(':', 1)[1]}")
    assert container.attrs["HostConfig"]["ReadonlyRootfs"]
    assert container.attrs["Config"]["User"] == containers.IMAGE_USER
    assert container.attrs["State"]["Pid"] == record.pid  # `stack down` stops the PID it recorded

    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    http = httpclient.InferenceServerClient(endpoints.triton_http)
    assert http.is_server_ready() and http.is_model_ready(served_model)
    tensor = httpclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    http_logits = http.infer(served_model, [tensor]).as_numpy("logits")
    grpc = grpcclient.InferenceServerClient(endpoints.triton_grpc)
    assert grpc.is_server_live() and grpc.get_model_metadata(served_model).name == served_model
    tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    grpc_logits = grpc.infer(served_model, [tensor]).as_numpy("logits")
    assert http_logits.shape == (4, 6)
    np.testing.assert_array_equal(http_logits, grpc_logits)
    expected = _local_logits(small_model, images)
    np.testing.assert_allclose(http_logits, expected, rtol=1e-3, atol=1e-3)


def _local_logits(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """What OpenVINO on the host answers for the same images and the same model files."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(next(model_dir.rglob("*.xml"))), "CPU")
    return compiled(images)[compiled.output(0)]


def test_benchmark_in_its_container_against_the_triton_container(client, images, container_stack,
                                                                 served_model: str, shared_dir: Path) -> None:
    out = _writable_out(shared_dir, "bench-out")
    status, output = _run(client, images["benchmark"],
                          ["--model", served_model, "--concurrency", "1,2", "--duration", "2", "--warmup",
                           "0.5",
                           "--no-baselines", "--target-qps", "1", "--target-p99-ms", "5000",
                           "--json", f"{out}/bench.json", "--report", f"{out}/report.html"],
                          mounts=[(out, out, False)], environment=_service_env())
    assert status == 0, output[-3000:]
    summary = json.loads((out / "bench.json").read_text())
    levels = summary["levels"]
    assert [lv["concurrency"] for lv in levels[:2]] == [1, 2]
    assert all(lv["requests"] >= 5 and lv["errors"] == 0 for lv in levels[:2]), levels
    assert (out / "report.html").stat().st_size > 10_000


def test_whole_dag_with_the_docker_runner_a_killed_task_and_a_rerun(client, container_stack, images,
                                                                    dataset: Path,
                                                                    shared_dir: Path) -> None:
    """Every task in its image (the fingerprint, the seven phases, promote or reject, the final step). The
    train task's container is killed mid-run: the task fails (exit 137, named), the pipeline's retry policy
    runs it again and the run completes. A second run takes validate to quantize from KFP's cache (keyed by
    the images' ids too) and runs the rest, as with the subprocess runner."""
    from visionnode.pipeline.local_dag import LOG_DIR_FILE
    from visionnode.pipeline.local_run import DECISION_STEPS, TASK_ORDER, LocalRunConfig, run_local

    params = {"train_arch": "resnet18", "train_epochs": 1, "train_batch_size": 16,
              "train_res_schedule": "64:64", "validate_subset": 48, "validate_steps": 12,
              "validate_image_size": 48, "shard_images_per_shard": 64, "shard_max_resolution": 64,
              "quantize_calibration_images": 32, "quantize_max_accuracy_drop": 100.0,
              "benchmark_concurrency": "1,2", "benchmark_duration_s": 1.5}
    steps: list[str] = []
    config = LocalRunConfig(data=dataset, params=params, work_dir=shared_dir / "runs", runner="docker",
                            on_step=steps.append)
    train_containers: set[str] = set()
    killed: list[str] = []
    done = threading.Event()

    def kill_the_first_train_task() -> None:
        while not done.is_set():
            for container in client.containers.list(filters={"ancestor": images["train"]}):
                train_containers.add(container.id)
                if not killed:
                    time.sleep(3)  # mid-run: past start-up, into the step
                    container.kill()
                    killed.append(container.id)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_first_train_task, daemon=True)
    killer.start()
    try:
        first = run_local(config)
    finally:
        done.set()
        killer.join(timeout=30)
    log = (first.log_dir / "train.log").read_text()
    assert killed and len(train_containers) >= 2, "the killed train task was not run again"
    assert "task container visionnode/train" in log and "exited with status 137 (killed)" in log
    assert "Task 'train-op' finished with status FAILURE" in log
    train_lines = [line.split()[1] for line in steps if line.startswith("train ")]
    assert train_lines == ["started", "FAILED", "started", "done"], steps
    ran = set(first.task_metrics) - set(TASK_ORDER)  # the seven phases, then promote or reject
    assert set(TASK_ORDER) <= set(first.task_metrics) and len(ran & set(DECISION_STEPS)) == 1, ran
    assert first.summary["qps"] > 0
    assert first.summary["promotion"].startswith(("promoted: ", "not promoted: "))

    second = run_local(config)
    assert set(TASK_ORDER) <= set(second.task_metrics)
    assert set(second.cached) == {"validate", "shard", "transfer", "train", "quantize"}, steps
    # what the tasks wrote (not kfp.local's executor_output.json, nor the host's note of where the logs are)
    outputs = [p for p in second.run_dir.rglob("*")
               if p.is_file() and p.name not in ("executor_output.json", LOG_DIR_FILE)]
    assert outputs and all(p.stat().st_uid == 10001 for p in outputs), "tasks ran as another uid"
    assert second.task_metrics["shard"]["images_written"] == 6 * (16 + 4)
    transfer = second.task_metrics["transfer"]
    assert transfer["objects_transferred"] == 0 and transfer["objects_skipped"] > 0, transfer
    assert second.summary["qps"] > 0 and second.mlflow_run_url


def test_stack_down_stops_the_triton_container_and_keeps_its_log(client, container_stack: LocalStack) -> None:
    import docker

    name = f"visionnode-triton-{container_stack.config.triton_http_port}"
    pid = client.containers.get(name).attrs["State"]["Pid"]
    container_stack.down()
    assert not Path(f"/proc/{pid}").exists(), "Triton's main process still runs"
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(name)
    assert "successfully loaded" in (container_stack.state_dir / "logs" / "triton.log").read_text()


# ----------------------------------------------------------------------------------- bad input and faults

def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "visionnode"), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_docker_runner_without_images_is_one_line_naming_the_build_command(client, tmp_path: Path) -> None:
    done = _cli("pipeline", "run", "--local", "--runner", "docker",
                env={"VISIONNODE_IMAGE_PREFIX": "nowhere.invalid/none",
                     "VISIONNODE_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not built" in lines[0] and "make images" in lines[0], done.stderr
    assert not (tmp_path / "run").exists(), "nothing may start before the images are checked"


def test_docker_runner_without_an_engine_is_one_line(tmp_path: Path) -> None:
    done = _cli("pipeline", "run", "--local", "--runner", "docker",
                env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
                     "VISIONNODE_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Docker engine" in lines[0] and "dockerd.sh start" in lines[0], done.stderr


def test_build_without_network_for_pip_names_what_it_could_not_fetch(tmp_path: Path) -> None:
    from visionnode.components.local.stack.process import free_port

    closed = free_port()
    env = {**os.environ, "VISIONNODE_WHEELHOUSE": str(tmp_path / "wheelhouse"), "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": f"http://127.0.0.1:{closed}/simple", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0",
           "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1"}
    done = subprocess.run(["bash", str(ROOT / "docker" / "build.sh"), "--no-triton"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not fetch" in errors[0] and "==" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_triton_container_with_a_missing_image_is_one_line(client, tmp_path: Path, monkeypatch) -> None:
    from tests.stack_fixtures import free_stack_config

    monkeypatch.setattr(containers, "IMAGE_PREFIX", "nowhere.invalid/none")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k" * 12)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s" * 24)
    config = free_stack_config(tmp_path, triton_container=True)
    config.with_s3 = config.with_mlflow = False
    config.triton_repository = str(tmp_path / "models")
    with pytest.raises(ConfigError, match="not built.*make images"):
        LocalStack(config).up()
