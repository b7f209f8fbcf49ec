"""Credentials are never printed: a sentinel S3 secret key and KFP token go through every cheap CLI command.

A dedicated stack (SeaweedFS S3 + MLflow, no Triton) is started by `visionnode stack up` with the sentinel as
its S3 secret, so every S3 and MLflow call below authenticates with it. Then stdout, stderr, every --json
summary, the stack's log files and the params/tags of every MLflow run are searched for either sentinel.
validate, train, quantize, deploy, benchmark and `pipeline run` take minutes or need Triton: only their --help
runs.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer

from tests.stack_fixtures import STACK_ENV, free_port_args
from visionnode.pipeline.cli import app

VISIONNODE = str(Path(sys.executable).parent / "visionnode")
SECRET = "sentinelS3secret" + secrets.token_hex(8)
TOKEN = "sentinelKFPtoken" + secrets.token_hex(8)


def _env(state: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in STACK_ENV}
    return {**env, "VISIONNODE_STATE_DIR": str(state), "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ACCESS_KEY_ID": "vnsentinel" + secrets.token_hex(4), "AWS_DEFAULT_REGION": "us-east-1",
            "KF_PIPELINES_TOKEN": TOKEN, "VISIONNODE_PROGRESS": "0"}


def _command_paths(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and group of the CLI, the root included."""
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _command_paths(sub, (*path, name))


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    """A KFP endpoint that records the Authorization headers it got and rejects them."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def kfp_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_no_command_prints_or_logs_the_s3_secret_or_the_kfp_token(tmp_path: Path, kfp_endpoint: str) -> None:
    state, env = tmp_path / "state", _env(tmp_path / "state")
    outputs: dict[str, str] = {}  # "<command> stdout/stderr" -> text

    def cli(*args: str, ok: bool = True) -> None:
        done = subprocess.run([VISIONNODE, *args], capture_output=True, text=True, env=env, timeout=120)
        outputs.update({f"{' '.join(args)} stdout": done.stdout, f"{' '.join(args)} stderr": done.stderr})
        assert (done.returncode == 0) is ok, f"{args}: {done.stdout}{done.stderr}"

    helps = [subprocess.Popen([VISIONNODE, *path, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for path in _command_paths(typer.main.get_command(app))]
    cli("stack", "up", "--state-dir", str(state), *free_port_args("--s3-port", "--mlflow-port"),
        "--no-triton", "--json", str(tmp_path / "up.json"))
    try:
        cli("stack", "status", "--state-dir", str(state), "--json", str(tmp_path / "status.json"))
        raw = str(tmp_path / "raw")
        cli("data", "synth", raw, "--classes", "2", "--train-per-class", "4", "--val-per-class", "2",
            "--min-side", "32", "--max-side", "48", "--json", str(tmp_path / "synth.json"))
        cli("shard", "--data", raw, "--out", str(tmp_path / "shards"), "--images-per-shard",
            "4", "--max-resolution", "48", "--no-readback", "--json", str(tmp_path / "shard.json"))
        cli("transfer", "upload", str(tmp_path / "shards"), "s3://visionnode/secrets", "--json",
            str(tmp_path / "upload.json"))
        cli("transfer", "fetch", "s3://visionnode/secrets", str(tmp_path / "cache"), "--json",
            str(tmp_path / "fetch.json"))
        cli("transfer", "fetch", "s3://visionnode/no-such-prefix", str(tmp_path / "cache2"), ok=False)
        cli("pipeline", "compile", str(tmp_path / "pipeline.yaml"))
        cli("pipeline", "submit", "--host", kfp_endpoint, "-p", "data_uri=s3://visionnode/raw", ok=False)
        runs = _mlflow_runs(json.loads((state / "stack.json").read_text())["mlflow_uri"])
    finally:
        cli("stack", "down", "--state-dir", str(state), "--json", str(tmp_path / "down.json"))
    for helped in helps:
        stdout, stderr = helped.communicate(timeout=120)
        command = " ".join(helped.args[1:])
        outputs.update({f"{command} stdout": stdout, f"{command} stderr": stderr})
        assert helped.returncode == 0, helped.args

    assert _Unauthorized.seen and set(_Unauthorized.seen) == {f"Bearer {TOKEN}"}  # the token was really used
    assert runs, "the commands logged no MLflow run to search"
    written = {path.name: path.read_text(errors="replace") for pattern in ("*.json", "state/logs/*.log")
               for path in tmp_path.glob(pattern)}
    assert len(written) >= 9  # seven --json summaries, the S3 and MLflow logs
    for what, sentinel in ("the S3 secret key", SECRET), ("the KFP token", TOKEN):  # where, not the value
        for where, texts in (("printed by", outputs), ("written to", written), ("in MLflow run", runs)):
            leaks = [name for name, text in texts.items() if sentinel in text]
            assert not leaks, f"{what} was {where} {leaks}"


def _mlflow_runs(uri: str) -> dict[str, str]:
    """Every run's params and tags as JSON text, by run id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.run_id: json.dumps({"params": run.data.params, "tags": run.data.tags})
            for run in client.search_runs(experiments)}
