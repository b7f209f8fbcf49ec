"""transfer: round trip, integrity, resume after SIGKILL, S3 restart mid-transfer, user errors — real S3."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.skips import skip_unless_ci
from visionnode.components.common.artifacts import MANIFEST_FILE, ClassIndex, ShardInfo, ShardManifest
from visionnode.components.common.errors import ConfigError, DataError, IntegrityError
from visionnode.components.common.jsonio import sha256_file
from visionnode.components.common.storage.s3 import s3_client
from visionnode.components.transfer.transfer import (
    FetchConfig,
    UploadConfig,
    fetch_shards,
    materialize_shards,
    upload_shards,
)
from visionnode.pipeline.cli import app

MB = 1_000_000


def make_fake_shards(directory: Path, sizes: list[int], seed: int = 0) -> ShardManifest:
    """Random-bytes `.beton` stand-ins with a real ShardManifest (transfer never parses the shards)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, size in enumerate(sizes):
        split = "val" if i == len(sizes) - 1 else "train"
        path = directory / f"{split}_{i:04d}.beton"
        path.write_bytes(rng.randbytes(size))
        shards.append(ShardInfo(path.name, split, 10, size, sha256_file(path), {0: 6, 1: 4}))
    manifest = ShardManifest(ClassIndex(["n01", "n02"], ["a", "b"]), shards, {"max_resolution": 64})
    manifest.save(directory)
    return manifest


def keys_under(bucket: str, prefix: str) -> dict[str, int]:
    client = s3_client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", []) or []}


def open_multipart_uploads(bucket: str, prefix: str) -> list[str]:
    uploads = s3_client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) or []
    return [u["Key"] for u in uploads]


def assert_remote_matches(bucket: str, prefix: str, manifest: ShardManifest,
                          left_open: list[str] = ()) -> None:
    """Every shard present once, with its sha256 as metadata, and no multipart upload open but `left_open`."""
    client = s3_client()
    expected = {f"{prefix}/{s.file}": s for s in manifest.shards}
    found = keys_under(bucket, prefix + "/")
    assert set(found) == set(expected) | {f"{prefix}/manifest.json"}
    for key, shard in expected.items():
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ContentLength"] == shard.bytes
        assert head["Metadata"]["sha256"] == shard.sha256
        assert head.get("ChecksumSHA256"), "uploaded with a server-side SHA-256 checksum"
    assert open_multipart_uploads(bucket, prefix) == list(left_open)
    remote = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read())
    assert remote["base_uri"] == f"s3://{bucket}/{prefix}"
    assert {s["uri"] for s in remote["shards"]} == {f"s3://{bucket}/{k}" for k in expected}


def error_line(output: str) -> str:
    """The one `error: ...` line (MLflow may add its own "View run" lines when tracking is on)."""
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    """CLI output is checked line by line; progress bars (stderr) would interleave with it."""
    monkeypatch.setenv("VISIONNODE_PROGRESS", "0")


# ------------------------------------------------------------------------------------------ plain functions
def test_round_trip_verifies_and_skips_on_rerun(stack, bucket, tmp_path):
    manifest = make_fake_shards(tmp_path / "shards", [12 * MB, 6 * MB, 300_000, 2_000])
    dest = f"s3://{bucket}/run1"

    up = upload_shards(UploadConfig(tmp_path / "shards", dest, concurrency=8, part_size_mb=5,
                                    output_dir=tmp_path / "remote"))
    assert (up.objects, up.objects_transferred, up.objects_skipped) == (4, 4, 0)
    assert up.bytes_transferred == manifest.total_bytes and up.mb_per_s > 0
    assert up.verification == "s3-checksum-sha256"
    assert_remote_matches(bucket, "run1", manifest)
    local_remote = ShardManifest.load(tmp_path / "remote")
    assert local_remote.base_uri == dest and all(s.uri for s in local_remote.shards)

    # Re-run with another part size: every object is recognised (server checksum re-cut to its parts).
    again = upload_shards(UploadConfig(tmp_path / "shards", dest, concurrency=4, part_size_mb=8))
    assert (again.objects_transferred, again.objects_skipped, again.bytes_transferred) == (0, 4, 0)

    cache = tmp_path / "cache"
    down = fetch_shards(FetchConfig(dest, cache, concurrency=8, part_size_mb=5))
    assert (down.objects_transferred, down.bytes_transferred) == (4, manifest.total_bytes)
    for shard in manifest.shards:
        assert (cache / shard.file).read_bytes() == (tmp_path / "shards" / shard.file).read_bytes()
    assert ShardManifest.load(cache).base_uri == dest
    assert not list(cache.glob(".*.partial*"))
    assert fetch_shards(FetchConfig(dest, cache)).objects_skipped == 4


def test_materialize_shards_from_every_kind_of_source(stack, bucket, tmp_path):
    manifest = make_fake_shards(tmp_path / "shards", [3 * MB, 1 * MB])
    dest = f"s3://{bucket}/m"
    upload_shards(UploadConfig(tmp_path / "shards", dest, output_dir=tmp_path / "remote"))

    assert materialize_shards(tmp_path / "shards") == tmp_path / "shards"       # local dir: as is
    from_uri = materialize_shards(dest, tmp_path / "c1")                        # s3://bucket/prefix
    from_artifact = materialize_shards(tmp_path / "remote", tmp_path / "c2")    # remote-manifest dir
    default_cache = materialize_shards(dest)                                    # cache in the state dir
    for local in (from_uri, from_artifact, default_cache):
        loaded = ShardManifest.load(local)
        assert [s.sha256 for s in loaded.shards] == [s.sha256 for s in manifest.shards]
        assert all(sha256_file(local / s.file) == s.sha256 for s in manifest.shards)
    assert default_cache.is_relative_to(Path(os.environ["VISIONNODE_STATE_DIR"]))


def test_corrupted_object_is_detected_on_fetch_and_repaired_by_upload(stack, bucket, tmp_path):
    manifest = make_fake_shards(tmp_path / "shards", [7 * MB, 2 * MB])
    dest = f"s3://{bucket}/c"
    upload_shards(UploadConfig(tmp_path / "shards", dest, part_size_mb=5))
    victim = manifest.shards[0]
    key = f"c/{victim.file}"
    s3_client().put_object(Bucket=bucket, Key=key, Body=os.urandom(victim.bytes))  # same size, other bytes

    with pytest.raises(IntegrityError) as caught:
        fetch_shards(FetchConfig(dest, tmp_path / "cache"))
    assert f"s3://{bucket}/{key}" in str(caught.value)
    assert not (tmp_path / "cache" / victim.file).exists()
    assert not list((tmp_path / "cache").glob(".*.partial*"))

    result = CliRunner().invoke(app, ["transfer", "fetch", dest, str(tmp_path / "cache2")])
    assert result.exit_code == 2
    assert key in error_line(result.output)

    repaired = upload_shards(UploadConfig(tmp_path / "shards", dest, part_size_mb=5))
    assert (repaired.objects_transferred, repaired.objects_skipped) == (1, 1)
    assert fetch_shards(FetchConfig(dest, tmp_path / "cache")).objects == 2


class PartGate:
    """Holds every UploadPart request after the first `let_through` until released: while it holds, the
    upload is provably unfinished (its remaining parts have not been sent)."""

    def __init__(self, let_through: int) -> None:
        self.let_through = let_through
        self.sent = 0
        self._lock = threading.Lock()
        self.holding = threading.Event()
        self.released = threading.Event()

    def before_send(self, **_) -> None:
        with self._lock:
            self.sent += 1
            held = self.sent > self.let_through
        if held:
            self.holding.set()
            self.released.wait(timeout=120)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every boto3 client made from now on sends its parts through the gate."""
        import boto3

        make_client = boto3.client

        def gated_client(*args, **kwargs):
            client = make_client(*args, **kwargs)
            client.meta.events.register("before-send.s3.UploadPart", self.before_send)
            return client

        monkeypatch.setattr(boto3, "client", gated_client)


def test_s3_restart_mid_upload_completes(stack, bucket, tmp_path, monkeypatch):
    manifest = make_fake_shards(tmp_path / "shards", [12 * MB] * 2 + [1 * MB])
    gate = PartGate(let_through=2)
    gate.install(monkeypatch)
    dest = f"s3://{bucket}/r"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = upload_shards(UploadConfig(tmp_path / "shards", dest, concurrency=2,
                                                           part_size_mb=5))
        except Exception as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert gate.holding.wait(timeout=60), f"the upload never sent a third part: {outcome}"
        assert worker.is_alive() and open_multipart_uploads(bucket, "r/")
        stop_s3(stack)
    finally:
        gate.released.set()  # the held parts now meet a stopped server
    time.sleep(1.0)  # a real outage, not just a reconnect
    stack.up()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].retries >= 1
    assert_remote_matches(bucket, "r", manifest)


# --------------------------------------------------------------------------------------------- CLI
def test_kill_at_random_points_then_resume(stack, bucket, tmp_path):
    manifest = make_fake_shards(tmp_path / "shards", [16 * MB] * 4 + [3 * MB, 500_000])
    dest = f"s3://{bucket}/k"
    cmd = [sys.executable, "-m", "visionnode.pipeline.cli", "transfer", "upload", str(tmp_path / "shards"),
           dest, "--concurrency", "2", "--part-size", "5"]
    env = dict(os.environ, VISIONNODE_PROGRESS="0")
    rng = random.Random(4)
    killed_mid_transfer = 0
    for _ in range(3):
        present = len(keys_under(bucket, "k/"))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # Kill only once bytes move (CLI start-up is seconds), then at a random moment after that.
            wait_for(lambda: proc.poll() is not None or open_multipart_uploads(bucket, "k/")
                     or len(keys_under(bucket, "k/")) > present, "bytes to move", timeout=60)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed_mid_transfer += 1
        finally:
            proc.wait(timeout=30)
    assert killed_mid_transfer >= 1

    # What the killed runs left: finished objects (S3 shows an object only once complete) and open uploads.
    finished = {k for k in keys_under(bucket, "k/") if not k.endswith(MANIFEST_FILE)}
    left_open = open_multipart_uploads(bucket, "k/")
    done = subprocess.run(cmd + ["--json", str(tmp_path / "resume.json")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "resume.json").read_text())
    assert summary["objects_skipped"] == len(finished), (summary, finished)
    assert summary["objects_transferred"] == len(manifest.shards) - len(finished), summary
    # The killed runs' open uploads are young: as far as the resumed run can tell they may be another run's,
    # in flight, so they are left alone; past the age bound they are aborted (test_concurrency.py).
    assert summary["stale_uploads_aborted"] == 0
    assert_remote_matches(bucket, "k", manifest, left_open)
    fetched = fetch_shards(FetchConfig(dest, tmp_path / "cache"))
    assert fetched.objects_transferred == len(manifest.shards)


def test_kill_during_fetch_leaves_no_partial_file(stack, bucket, tmp_path):
    manifest = make_fake_shards(tmp_path / "shards", [20 * MB] * 3)
    dest = f"s3://{bucket}/f"
    upload_shards(UploadConfig(tmp_path / "shards", dest))
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "visionnode.pipeline.cli", "transfer", "fetch", dest, str(cache),
           "--concurrency", "2", "--part-size", "5"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, VISIONNODE_PROGRESS="0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: proc.poll() is not None or any(cache.glob(".*.partial*")), "the fetch to start")
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the fetch ended before it was killed: nothing was tested"
    result = CliRunner().invoke(app, ["transfer", "fetch", dest, str(cache),
                                      "--json", str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    assert not list(cache.glob(".*.partial*"))
    assert all(sha256_file(cache / s.file) == s.sha256 for s in manifest.shards)


def test_cli_upload_writes_summary(stack, bucket, tmp_path):
    make_fake_shards(tmp_path / "shards", [1 * MB, 200_000])
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["transfer", "upload", str(tmp_path / "shards"), f"s3://{bucket}/cli",
                                      "--concurrency", "4", "--part-size", "5",
                                      "--out", str(tmp_path / "out"), "--json", str(summary)])
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert data["objects_transferred"] == 2 and data["bytes_transferred"] == 1_200_000
    assert ShardManifest.load(tmp_path / "out").base_uri == f"s3://{bucket}/cli"


def test_cli_user_errors_are_one_line(stack, bucket, tmp_path, monkeypatch):
    make_fake_shards(tmp_path / "shards", [100_000])
    runner = CliRunner()
    upload = ["transfer", "upload", str(tmp_path / "shards")]

    missing = runner.invoke(app, [*upload, f"s3://{bucket}-nope/x"])
    assert missing.exit_code == 2 and "--create-bucket" in error_line(missing.output)
    created = runner.invoke(app, [*upload, f"s3://{bucket}-new/x", "--create-bucket"])
    assert created.exit_code == 0, created.output

    bad_part = runner.invoke(app, [*upload, f"s3://{bucket}/x", "--part-size", "1"])
    assert bad_part.exit_code == 2 and "part-size" in error_line(bad_part.output)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong_creds = runner.invoke(app, [*upload, f"s3://{bucket}/x"])
    assert wrong_creds.exit_code == 2 and "credentials" in error_line(wrong_creds.output)
    monkeypatch.undo()

    from visionnode.components.local.stack.process import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("VISIONNODE_S3_ENDPOINT", nowhere)
    wrong_endpoint = runner.invoke(app, ["transfer", "fetch", f"s3://{bucket}/x", str(tmp_path / "c")])
    assert wrong_endpoint.exit_code == 2 and nowhere in error_line(wrong_endpoint.output)


def test_plain_function_errors(stack, bucket, tmp_path):
    make_fake_shards(tmp_path / "shards", [100_000])
    with pytest.raises(ConfigError):
        upload_shards(UploadConfig(tmp_path / "shards", f"s3://{bucket}"))  # no prefix
    (tmp_path / "shards" / "val_0000.beton").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="val_0000.beton"):
        upload_shards(UploadConfig(tmp_path / "shards", f"s3://{bucket}/p"))
    with pytest.raises(DataError, match="never-uploaded/manifest.json"):
        fetch_shards(FetchConfig(f"s3://{bucket}/never-uploaded", tmp_path / "c"))


def test_tiny_shards_round_trip(request, stack, bucket, tmp_path):
    try:
        shards = request.getfixturevalue("tiny_shards")
    except pytest.FixtureLookupError:
        skip_unless_ci("tests/shard_fixtures.py (tiny_shards) is not written yet")
    upload_shards(UploadConfig(shards, f"s3://{bucket}/tiny", output_dir=tmp_path / "remote"))
    local = materialize_shards(tmp_path / "remote", tmp_path / "cache")
    original = ShardManifest.load(shards)
    for shard in original.shards:
        assert sha256_file(local / shard.file) == shard.sha256


# --------------------------------------------------------------------------------------------- helpers
def wait_for(condition, what: str, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def stop_s3(stack) -> None:
    """Stop the stack's S3 server by its PID file (`stack.up()` brings it back: same port, same data;
    MLflow and Triton are kept running)."""
    from visionnode.components.local.stack import process

    pid_file = stack.state_dir / "run" / "s3.pid"
    record = process.read_record(pid_file)
    assert record is not None, "the stack's S3 server is not running"
    process.stop(pid_file)
    assert process.wait_ports_closed(record.ports) == []
