"""The embedded stack, proven against the real servers: SeaweedFS S3, MLflow server, Triton."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

from tests.stack_fixtures import free_port_args
from visionnode.components.common.numbers import MIB
from visionnode.components.common.serving.triton import parse_triton_repository
from visionnode.components.common.settings import S3Credentials, ensure_local_credentials, resolve_endpoints
from visionnode.components.common.storage.s3 import S3Config, minio_client, resolve_s3_config, s3_client
from visionnode.components.common.tracking import tracked_run
from visionnode.components.local.stack import LocalStack, StackConfig
from visionnode.components.local.stack.process import free_port, free_ports
from visionnode.components.local.stack.s3 import s3_spec
from visionnode.pipeline.cli import app

runner = CliRunner()
PORT_FLAGS = ("--s3-port", "--mlflow-port", "--triton-http-port", "--triton-grpc-port",
              "--triton-metrics-port")


# ------------------------------------------------------------------ S3
def test_s3_put_get_list_with_boto3_and_minio(bucket: str) -> None:
    boto = s3_client()
    minio = minio_client()
    boto.put_object(Bucket=bucket, Key="a/boto.bin", Body=b"written by boto3")
    payload = os.urandom(256 * 1024)
    minio.put_object(bucket, "a/minio.bin", io.BytesIO(payload), length=len(payload))

    # each client reads what the other wrote
    assert boto.get_object(Bucket=bucket, Key="a/minio.bin")["Body"].read() == payload
    response = minio.get_object(bucket, "a/boto.bin")
    try:
        assert response.read() == b"written by boto3"
    finally:
        response.close()
        response.release_conn()

    listed_boto = sorted(o["Key"] for o in boto.list_objects_v2(Bucket=bucket, Prefix="a/")["Contents"])
    listed_minio = sorted(o.object_name for o in minio.list_objects(bucket, prefix="a/", recursive=True))
    assert listed_boto == listed_minio == ["a/boto.bin", "a/minio.bin"]


def test_many_buckets_each_take_writes(stack: LocalStack) -> None:
    # Each bucket is a SeaweedFS collection that grows its own volumes on the first write; the volume count
    # must not depend on the disk space free when the server started (with 14 GB free it ran out before 60).
    client = s3_client()
    names = [f"many-{os.getpid()}-{i}" for i in range(60)]
    try:
        for name in names:
            client.create_bucket(Bucket=name)
            client.put_object(Bucket=name, Key="x", Body=b"written")
        assert [client.get_object(Bucket=n,
                                  Key="x")["Body"].read() for n in names] == [b"written"] * len(names)
    finally:
        for name in names:
            client.delete_object(Bucket=name, Key="x")
            client.delete_bucket(Bucket=name)


def test_stack_buckets_exist_and_bucket_fixture_is_empty(stack: LocalStack, bucket: str) -> None:
    names = {b["Name"] for b in s3_client().list_buckets()["Buckets"]}
    assert {"visionnode", "mlflow", bucket} <= names
    assert s3_client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_wrong_credentials_are_refused(stack: LocalStack) -> None:
    from botocore.exceptions import ClientError

    good = resolve_s3_config()
    from visionnode.components.common.settings import S3Credentials

    bad = S3Config(endpoint=good.endpoint, credentials=S3Credentials(good.credentials.access_key,
                                                                     "wrong-secret"),
                   region=good.region, max_attempts=1)
    with pytest.raises(ClientError):
        s3_client(bad).list_buckets()


@pytest.fixture
def nearly_full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 GiB tmpfs with 8 MiB free: under 1 % of its size, where `weed mini` took no writes at all."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1G", "tmpfs", str(disk)], check=True)
    try:
        with open(disk / "filler", "wb") as filler:
            for _ in range(1016):
                filler.write(bytes(MIB))
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_s3_takes_writes_with_under_one_percent_of_its_disk_free(nearly_full_disk: Path) -> None:
    assert shutil.disk_usage(nearly_full_disk).free < shutil.disk_usage(nearly_full_disk).total / 100
    local = LocalStack(StackConfig(state_dir=nearly_full_disk / "state", s3_port=free_port(),
                                   with_mlflow=False, with_triton=False, die_with_parent=True,
                                   s3_min_free_mb=2))  # needs 4 MiB free to start
    local.up()
    try:
        client = s3_client(S3Config(endpoint=local.endpoints.s3_endpoint,
                                    credentials=ensure_local_credentials(local.state_dir), region="us-east-1",
                                    max_attempts=1))
        client.put_object(Bucket="visionnode", Key="small.bin", Body=b"x" * 65536)
        assert client.get_object(Bucket="visionnode", Key="small.bin")["Body"].read() == b"x" * 65536
    finally:
        local.down()


def test_s3_does_not_start_without_twice_its_minimum_free_space(nearly_full_disk: Path) -> None:
    state = nearly_full_disk / "state"
    up = runner.invoke(app, ["stack", "up", "--state-dir", str(state), "--no-mlflow", "--no-triton",
                             "--s3-port", str(free_port()), "--s3-min-free-mb", "8"])  # needs 16 MiB, has 8
    assert up.exit_code != 0 and "Traceback" not in up.output
    reported = re.search(r"needs (\d+) MiB free under .* but its disk has (\d+) MiB free", up.output)
    assert reported is not None, up.output
    assert int(reported[1]) == 16 and int(reported[2]) <= 8
    assert "--state-dir" in up.output
    assert not (state / "run" / "s3.pid").exists()


# ------------------------------------------------------------------ MLflow
def test_mlflow_run_logs_param_metric_and_artifact_into_s3(stack: LocalStack, tmp_path: Path) -> None:
    import mlflow

    report = tmp_path / "report.txt"
    report.write_text("hello from the stack test\n")
    with tracked_run("stack-test", tags={"suite": "stack"}) as tracker:
        tracker.log_params({"lr": 0.1})
        tracker.log_metrics({"top1": 0.75}, step=1)
        tracker.log_artifact(report)
        run_id = tracker.run_id
    assert run_id

    run = mlflow.MlflowClient(stack.endpoints.mlflow_uri).get_run(run_id)
    assert run.data.params["lr"] == "0.1"
    assert run.data.metrics["top1"] == pytest.approx(0.75)

    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket="mlflow")["Contents"]]
    artifact_keys = [k for k in keys if run_id in k and k.endswith("report.txt")]
    assert len(artifact_keys) == 1, keys
    body = s3_client().get_object(Bucket="mlflow", Key=artifact_keys[0])["Body"].read()
    assert body == report.read_bytes()


# ------------------------------------------------------------------ Triton
MODEL_PY = textwrap.dedent('''
    import json

    import numpy as np
    import openvino  # proves the python backend sees the project's virtual environment
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.scale = 2.0

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                y = (x * self.scale + 1.0).astype(np.float32)
                version = np.array([[openvino.__version__.encode()]] * x.shape[0], dtype=object)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y),
                                                             pb_utils.Tensor("OV_VERSION", version)]))
            return responses
''')

CONFIG_PBTXT = textwrap.dedent('''
    backend: "python"
    max_batch_size: 8
    input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [
      { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] },
      { name: "OV_VERSION", data_type: TYPE_STRING, dims: [ 1 ] }
    ]
    instance_group [ { kind: KIND_CPU, count: 1 } ]
''')


def _publish_model(repository: str, name: str) -> None:
    """Put a python-backend model where Triton reads its repository (S3 prefix or local dir)."""
    repo = parse_triton_repository(repository)
    files = {f"{name}/config.pbtxt": CONFIG_PBTXT, f"{name}/1/model.py": MODEL_PY}
    if repo.local_dir is not None:
        for rel, text in files.items():
            (repo.local_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo.local_dir / rel).write_text(text)
        return
    config = resolve_s3_config()
    client = s3_client(S3Config(endpoint=repo.endpoint, credentials=config.credentials, region=config.region))
    for rel, text in files.items():
        key = repo.location.child(rel)
        client.put_object(Bucket=key.bucket, Key=key.key, Body=text.encode())


def test_triton_loads_python_model_from_repository_and_serves_http_and_grpc(stack: LocalStack) -> None:
    import openvino
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    endpoints = resolve_endpoints()
    assert endpoints.triton_repository and endpoints.triton_repository.startswith("s3://")
    _publish_model(endpoints.triton_repository, "doubler")

    http = httpclient.InferenceServerClient(endpoints.triton_http)
    grpc = grpcclient.InferenceServerClient(endpoints.triton_grpc)
    assert http.is_server_live() and grpc.is_server_ready()
    http.load_model("doubler")
    try:
        assert http.is_model_ready("doubler")
        x = np.arange(12, dtype=np.float32).reshape(3, 4)

        http_in = httpclient.InferInput("X", list(x.shape), "FP32")
        http_in.set_data_from_numpy(x)
        http_result = http.infer("doubler", [http_in])
        np.testing.assert_allclose(http_result.as_numpy("Y"), x * 2 + 1)
        assert http_result.as_numpy("OV_VERSION")[0, 0].decode() == openvino.__version__

        grpc_in = grpcclient.InferInput("X", list(x.shape), "FP32")
        grpc_in.set_data_from_numpy(x)
        np.testing.assert_allclose(grpc.infer("doubler", [grpc_in]).as_numpy("Y"), x * 2 + 1)

        index = {m["name"]: m for m in http.get_model_repository_index()}
        assert index["doubler"]["state"] == "READY"
    finally:
        http.unload_model("doubler")
        http.close()
        grpc.close()


def test_triton_metrics_endpoint_answers(stack: LocalStack) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://{stack.endpoints.triton_metrics}/metrics", timeout=5) as response:
        assert b"nv_" in response.read()


# ------------------------------------------------------------------ CLI lifecycle
def _listening(pids: set[int]) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _listening_ports(pids: set[int]) -> list[int]:
    return [port for _, port in _listening(pids)]


def _pids_with_children(pids: list[int]) -> set[int]:
    family: set[int] = set()
    for pid in pids:
        proc = psutil.Process(pid)
        family |= {pid, *(c.pid for c in proc.children(recursive=True))}
    return family


def test_cli_up_status_down_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "VISIONNODE_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)  # the stack must generate its own credentials
    port_args = free_port_args(*PORT_FLAGS)
    ports = dict(zip(port_args[::2], map(int, port_args[1::2]), strict=True))
    args = ["stack", "up", "--state-dir", str(state), *port_args]

    up = runner.invoke(app, args)
    assert up.exit_code == 0, up.output
    creds_file = state / "credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    assert json.loads(creds_file.read_text())["secret_key"] not in up.output

    try:
        status = runner.invoke(app, ["stack", "status", "--state-dir", str(state), "--json",
                                     str(tmp_path / "s.json")])
        assert status.exit_code == 0, status.output
        services = json.loads((tmp_path / "s.json").read_text())["services"]
        assert [s["name"] for s in services] == ["s3", "mlflow", "triton"]
        assert all(s["healthy"] and s["pid"] for s in services)
        pids = [s["pid"] for s in services]
        family = _pids_with_children(pids)
        listening = _listening(family)
        assert all(_is_loopback(ip) for ip, _ in listening), listening  # nothing binds a non-loopback address
        recorded = {p for f in (state / "run").glob("*.pid") for p in json.loads(f.read_text())["ports"]}
        # every port a server opens (weed server opens eight) was set explicitly, so two stacks never collide
        assert {port for _, port in listening} == recorded
        assert set(ports.values()) <= recorded
        saved = json.loads((state / "stack.json").read_text())
        assert saved["s3_endpoint"] == f"http://127.0.0.1:{ports['--s3-port']}"
        assert saved["triton_grpc"] == f"127.0.0.1:{ports['--triton-grpc-port']}"
        assert saved["triton_repository"] == f"s3://127.0.0.1:{ports['--s3-port']}/visionnode/triton-models"

        again = runner.invoke(app, [*args, "--json", str(tmp_path / "again.json")])  # idempotent
        assert again.exit_code == 0, again.output
        kept = json.loads((tmp_path / "again.json").read_text())["services"]
        assert [s["action"] for s in kept] == ["kept"] * 3
        assert [s["pid"] for s in kept] == pids
    finally:
        down = runner.invoke(app, ["stack", "down", "--state-dir", str(state)])
    assert down.exit_code == 0, down.output
    assert not [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not _listening_ports(family)
    for port in ports.values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still accepts connections"
    assert not (state / "stack.json").exists()
    after = runner.invoke(app, ["stack", "status", "--state-dir", str(state)])
    assert after.exit_code == 1  # nothing runs


def test_cli_up_uses_external_services_it_is_told_to_leave_out(stack: LocalStack, tmp_path: Path) -> None:
    """--no-s3 --no-mlflow: only Triton starts, reading its repository from the S3 named in the
    environment."""
    state = tmp_path / "state"
    external_s3 = os.environ["VISIONNODE_S3_ENDPOINT"]  # the session stack's S3 plays "a real MinIO"
    triton_ports = free_port_args("--triton-http-port", "--triton-grpc-port", "--triton-metrics-port")
    up = runner.invoke(app, ["stack", "up", "--state-dir", str(state), "--no-s3", "--no-mlflow",
                             *triton_ports,
                             "--json", str(tmp_path / "up.json")])
    try:
        assert up.exit_code == 0, up.output
        assert [s["name"] for s in json.loads((tmp_path / "up.json").read_text())["services"]] == ["triton"]
        saved = json.loads((state / "stack.json").read_text())
        assert saved["s3_endpoint"] == external_s3
        assert saved["mlflow_uri"] == os.environ["MLFLOW_TRACKING_URI"]
        assert saved["triton_repository"].startswith(external_s3.replace("http://", "s3://"))
        assert not (state / "s3").exists() and not (state / "mlflow").exists()
    finally:
        down = runner.invoke(app, ["stack", "down", "--state-dir", str(state)])
    assert down.exit_code == 0, down.output


def test_cli_up_reports_a_port_in_use_as_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        others = free_port_args("--s3-port", "--triton-http-port", "--triton-grpc-port",
                                "--triton-metrics-port", avoid={taken})
        result = runner.invoke(app, ["stack", "up", "--state-dir", str(tmp_path), "--mlflow-port", str(taken),
                                     *others], catch_exceptions=False)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert str(taken) in lines[0] and "--mlflow-port" in lines[0]
    assert not list((tmp_path / "run").glob("*.pid"))  # nothing was started


@pytest.mark.parametrize("same, other", [
    ("--triton-grpc-port", "--triton-metrics-port"),  # two roles of one server (CI once picked this pair)
    ("--s3-port", "--mlflow-port"),                   # two servers
])
def test_cli_up_refuses_one_port_for_two_listeners(tmp_path: Path, same: str, other: str) -> None:
    args = free_port_args(*PORT_FLAGS)
    args[args.index(other) + 1] = args[args.index(same) + 1]
    result = runner.invoke(app, ["stack", "up", "--state-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert same in lines[0] and other in lines[0] and args[args.index(same) + 1] in lines[0]
    assert not list((tmp_path / "run").glob("*.pid"))  # nothing was started


def test_cli_up_refuses_a_port_outside_1_to_65535_and_starts_nothing(tmp_path: Path) -> None:
    args = free_port_args(*PORT_FLAGS)
    args[args.index("--s3-port") + 1] = "70000"
    result = runner.invoke(app, ["stack", "up", "--state-dir", str(tmp_path), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    refusal = "error: --s3-port 70000 is out of range (use 1..65535; default 8333)"
    assert result.exit_code == 2 and lines == [refusal], result.output
    assert not (tmp_path / "run").exists()


def test_free_ports_are_distinct_and_outside_the_avoided_ones() -> None:
    """800 picks at once; picked one by one (each socket closed before the next bind), 800 held 34 repeats."""
    first = free_ports(800)
    assert len(set(first)) == 800
    second = free_ports(200, avoid=set(first))
    assert len(set(second)) == 200 and not set(second) & set(first)


def test_embedded_s3_picks_its_internal_ports_outside_the_other_servers_ports(tmp_path: Path) -> None:
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    taken = set(range(low, (low + high) // 2))  # half the kernel's range stands for "the other servers"
    spec = s3_spec(tmp_path, 8333, S3Credentials("key", "secret"), min_free_mb=256, avoid_ports=taken)
    internal = [p.port for p in spec.ports if p.flag is None]
    assert len(internal) == len(set(internal)) == 7
    assert not set(internal) & (taken | {8333})


def test_stop_kills_a_server_that_ignores_sigterm_and_only_its_own_pid(tmp_path: Path) -> None:
    import sys

    from visionnode.components.local.stack import process

    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(120)")
    pid_file, log_file = tmp_path / "run" / "stubborn.pid", tmp_path / "stubborn.log"
    record = process.spawn([sys.executable, "-c", stubborn], os.environ, log_file, pid_file)
    bystander = psutil.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        process.wait_until_healthy([process.Pending("stubborn", record, lambda: "up" in log_file.read_text(),
                                                    log_file)], timeout_s=30)
        assert process.read_record(pid_file).pid == record.pid
        assert process.stop(pid_file, term_timeout_s=1.0) == record.pid
        assert not process.is_running(record)
        assert not pid_file.exists()
        assert bystander.is_running()  # stop never touches processes it did not start
        assert process.stop(pid_file) is None  # already stopped: nothing to do
    finally:
        bystander.kill()
        bystander.wait()
