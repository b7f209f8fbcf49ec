"""The KFP DAG: compile (structure, defaults, reproducibility), submit errors, and a local run on tiny
data."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.browser import rendered_text
from tests.kfp_steps import one_step_then_finish
from tests.net_helpers import listeners_that_never_answer
from visionnode.components.common.adapters.cli import human_value
from visionnode.components.common.adapters.kfp import project_version
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.serving.triton import triton_http_client
from visionnode.components.common.tracking import PARENT_RUN_ENV, tracked_run
from visionnode.pipeline.cli import app
from visionnode.pipeline.compile import (
    compile_pipeline,
    dag_tasks,
    fed_parameter,
    load_compiled,
    parameter_types,
    parse_params,
)
from visionnode.pipeline.step_log import user_error

runner = CliRunner()
PHASES = ("validate", "shard", "transfer", "train", "quantize", "deploy", "benchmark")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return load_compiled(compile_pipeline(tmp_path_factory.mktemp("ir") / "p.yaml"))


def _tasks(spec: dict) -> dict:
    return dag_tasks(spec)


def _artifact_sources(task: dict) -> dict[str, tuple[str, str]]:
    artifacts = task.get("inputs", {}).get("artifacts", {})
    return {name: (a["taskOutputArtifact"]["producerTask"], a["taskOutputArtifact"]["outputArtifactKey"])
            for name, a in artifacts.items() if "taskOutputArtifact" in a}


def test_dag_has_the_phases_fingerprint_promotion_and_final_step_and_no_importer(spec: dict) -> None:
    """The raw data is read where it lies: no importer (KFP's launcher would download all of it into each
    pod that takes it), only its fingerprint, computed first."""
    steps = {name for name in _tasks(spec) if not name.startswith(("exit-handler", "condition"))}
    assert steps == {f"{p}-op" for p in PHASES} | {"fingerprint-op", "promote-op", "reject-op", "finish-op"}
    assert "importer" not in json.dumps(spec["deploymentSpec"])
    for phase in ("validate", "shard"):
        assert fed_parameter(_tasks(spec)[f"{phase}-op"]["inputs"]["parameters"]["data_uri"]) == "data_uri"
        assert not _artifact_sources(_tasks(spec)[f"{phase}-op"])


def test_every_pipeline_parameter_has_the_description_of_the_component_input_it_feeds(spec: dict) -> None:
    """The KFP run form shows each parameter's description: the help text of the component input it feeds
    (one declaration), and per phase where it feeds several."""
    from visionnode.components.train.component import train_op

    params = spec["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("description") for p in params.values()), [n for n, p in params.items()
                                                               if not p.get("description")]
    assert params["train_epochs"]["description"] == train_op.component_spec.inputs["epochs"].description
    data_uri = params["data_uri"]["description"]
    assert data_uri.startswith("[fingerprint] ") and "[shard] " in data_uri and "[validate] " in data_uri


def test_every_pipeline_parameter_is_named_after_the_phase_it_configures(spec: dict) -> None:
    """`<phase>_<the component input it feeds>` (the shard store's base excepted: `shard_store_uri`), so the
    run form groups a phase's settings; `data_uri` alone feeds several phases."""
    fed: dict[str, set[str]] = {}
    steps = {name: task for name, task in _tasks(spec).items()
             if not name.startswith(("exit-handler", "condition"))}  # not the DAGs that hand inputs on
    for name, task in steps.items():
        for input_name, source in task.get("inputs", {}).get("parameters", {}).items():
            if (parameter := fed_parameter(source)) in spec["root"]["inputDefinitions"]["parameters"]:
                fed.setdefault(parameter, set()).add(f"{name.removesuffix('-op')}_{input_name}")
    assert fed.pop("data_uri") == {"fingerprint_data_uri", "validate_data_uri", "shard_data_uri"}
    assert fed.pop("shard_store_uri") == {"shard_shards_uri"}
    assert all(feeds == {parameter} for parameter, feeds in fed.items()), fed


def test_only_a_candidate_that_proved_itself_is_promoted_and_the_run_always_finishes(spec: dict) -> None:
    tasks, components = _tasks(spec), spec["components"]
    # promote-op and reject-op sit in the two branches of one condition on benchmark's decision
    branches = tasks["condition-branches-2"]
    assert set(components[branches["componentRef"]["name"]]["dag"]["tasks"]) == {"condition-3", "condition-4"}
    promote_if = tasks["condition-3"]["triggerPolicy"]["condition"]
    reject_if = tasks["condition-4"]["triggerPolicy"]["condition"]
    assert "pipelinechannel--benchmark-op-promote" in promote_if and promote_if.endswith("== true")
    assert reject_if == f"!({promote_if})"
    assert set(components["comp-condition-3"]["dag"]["tasks"]) == {"promote-op"}
    assert set(components["comp-condition-4"]["dag"]["tasks"]) == {"reject-op"}
    promote = tasks["promote-op"]["inputs"]
    assert fed_parameter(promote["parameters"]["decision"]) == "benchmark-op-decision"
    assert promote["artifacts"]["endpoint"]["componentInputArtifact"] == "pipelinechannel--deploy-op-endpoint"
    # every step but finish runs inside the exit handler; finish runs after it whatever its state
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finish-op"}
    finish = root["finish-op"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert finish["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    for step in ("promote-op", "reject-op", "finish-op"):  # side effects on Triton and MLflow: never cached
        assert tasks[step]["cachingOptions"] == {}, step


def test_artifacts_flow_along_the_contract(spec: dict) -> None:
    tasks = _tasks(spec)
    assert _artifact_sources(tasks["transfer-op"]) == {"shards": ("shard-op", "shards")}
    assert _artifact_sources(tasks["train-op"]) == {"remote_shards": ("transfer-op", "remote_shards")}
    assert _artifact_sources(tasks["quantize-op"]) == {"model": ("train-op", "model"),
                                                       "remote_shards": ("transfer-op", "remote_shards")}
    assert _artifact_sources(tasks["deploy-op"]) == {"int8_model": ("quantize-op", "int8_model")}
    assert _artifact_sources(tasks["benchmark-op"]) == {"endpoint": ("deploy-op", "endpoint"),
                                                        "remote_shards": ("transfer-op", "remote_shards")}
    assert "validate-op" in tasks["shard-op"]["dependentTasks"]


def test_parameter_defaults_and_types(spec: dict) -> None:
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in params["data_uri"]
    assert params["train_arch"]["defaultValue"] == "resnet152"
    assert params["benchmark_target_qps"]["defaultValue"] == 100.0
    assert params["benchmark_target_p99_ms"]["defaultValue"] == 150.0
    types = parameter_types(spec)
    assert types["train_epochs"] is int and types["train_lr"] is str and types["data_uri"] is str


def test_train_takes_validates_suggested_lr_and_the_new_training_parameters(spec: dict) -> None:
    train_inputs = _tasks(spec)["train-op"]["inputs"]["parameters"]
    assert train_inputs["suggested_lr"]["taskOutputParameter"] == {"producerTask": "validate-op",
                                                                   "outputParameterKey": "suggested_lr"}
    for name in ("lr", "crop_min_scale", "flip", "init_weights", "head_epochs", "max_steps"):
        assert fed_parameter(train_inputs[name]) == f"train_{name}"
    validate_outputs = spec["components"]["comp-validate-op"]["outputDefinitions"]["parameters"]
    assert validate_outputs["suggested_lr"]["parameterType"] == "NUMBER_DOUBLE"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["train_lr"]["defaultValue"] == "auto"  # validate's LR probe suggestion
    assert params["train_crop_min_scale"]["defaultValue"] == 0.08
    assert params["train_flip"]["defaultValue"] is True and params["train_init_weights"]["defaultValue"] == ""
    assert params["train_head_epochs"]["defaultValue"] == 0
    assert params["validate_lr_probe_steps"]["defaultValue"] == 60
    quantize_outputs = spec["components"]["comp-quantize-op"]["outputDefinitions"]["artifacts"]
    assert quantize_outputs["gate_report"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_cluster_settings_secrets_retries_caching_resources(spec: dict) -> None:
    tasks = _tasks(spec)
    for phase in ("transfer", "deploy", "train"):
        assert tasks[f"{phase}-op"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["shard-op"]["cachingOptions"].get("enableCache") is True
    executors = spec["deploymentSpec"]["executors"]
    for phase in PHASES:
        resources = executors[f"exec-{phase}-op"]["container"]["resources"]
        assert resources["cpuRequest"] and resources["memoryRequest"]
        assert executors[f"exec-{phase}-op"]["container"]["image"].startswith("visionnode/")
    assert executors["exec-train-op"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    platform = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for phase in PHASES:
        secrets = {s["secretName"] for s in platform[f"exec-{phase}-op"]["secretAsEnv"]}
        assert secrets == {"visionnode-s3", "visionnode-mlflow"}


def test_compiled_yaml_is_reproducible(tmp_path: Path) -> None:
    first = compile_pipeline(tmp_path / "a.yaml").read_bytes()
    second = compile_pipeline(tmp_path / "b.yaml").read_bytes()
    assert first == second
    assert "AWS_SECRET_ACCESS_KEY: " not in first.decode()  # only secret *references*, never values
    assert "pip install" not in first.decode()  # our images ship kfp: no network needed at step start-up


def test_cli_compile_writes_yaml(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pipeline", "compile", str(tmp_path / "p.yaml")])
    assert result.exit_code == 0, result.output
    assert load_compiled(tmp_path / "p.yaml")["pipelineInfo"]["name"] == "visionnode-152"


def test_params_are_typed_and_unknown_ones_rejected(spec: dict) -> None:
    types = parameter_types(spec)
    assert parse_params(["train_epochs=4", "train_lr=0.2", "data_uri=s3://d/i"], types) == {
        "train_epochs": 4, "train_lr": "0.2", "data_uri": "s3://d/i"}
    with pytest.raises(ConfigError, match="unknown pipeline parameter 'train_epoch'") as typo:
        parse_params(["train_epoch=4"], types)
    assert typo.value.hint is not None and typo.value.hint.startswith("did you mean train_epochs or")
    with pytest.raises(ConfigError) as without_phase:
        parse_params(["concurrency=4"], types)
    assert without_phase.value.hint == "did you mean benchmark_concurrency or transfer_concurrency?"
    with pytest.raises(ConfigError) as unlike:
        parse_params(["zzz=4"], types)
    assert (unlike.value.hint or "").startswith("known parameters: benchmark_accuracy_images")
    with pytest.raises(ConfigError, match="not a valid int"):
        parse_params(["train_epochs=four"], types)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_submit_to_unreachable_host_is_a_clear_error() -> None:
    with socket.socket() as probe:  # a loopback port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        unused_port = probe.getsockname()[1]
    result = runner.invoke(app, ["pipeline", "submit", "--host", f"http://127.0.0.1:{unused_port}",
                                 "-p", "data_uri=s3://datasets/imagenet"])
    assert "unreachable" in _one_line_error(result)


def test_submit_rejected_auth_is_a_clear_error() -> None:
    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "unauthenticated"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = runner.invoke(app, ["pipeline", "submit", "--host", f"http://127.0.0.1:{server.server_port}",
                                     "-p", "data_uri=s3://datasets/imagenet"])
    finally:
        server.shutdown()
    line = _one_line_error(result)
    assert "rejected" in line or "401" in line


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "visionnode"), *args], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "VISIONNODE_PROGRESS": "0", **(env or {})})


def _unreadable_dataset(root: Path) -> Path:
    for split, count in (("train", 5), ("val", 1)):
        (root / split / "n01").mkdir(parents=True)
        for i in range(count):
            (root / split / "n01" / f"img{i}.JPEG").write_bytes(b"not a jpeg")
    return root


MISTAKES = {
    # unwritable or wrong-kind paths
    "out-is-a-file": (["shard", "--data", "{data}", "--out", "{a_file}"], "{a_file}"),
    "unwritable-out": (["shard", "--data", "{data}", "--out", "/proc/vn-out"], "/proc/vn-out"),
    "unwritable-yaml": (["pipeline", "compile", "/proc/vn.yaml"], "/proc/vn.yaml"),
    "synth-unwritable": (["data", "synth", "/proc/vn-data"], "/proc/vn-data"),
    "json-unwritable": (["data", "synth", "{tmp}/data", "--json", "/proc/vn.json"], "--json /proc/vn.json"),
    "json-is-a-folder": (["shard", "--data", "{data}", "--out", "{tmp}/shards", "--json", "{inputs}"],
                         "directory"),
    "data-is-a-file": (["shard", "--data", "{a_file}", "--out", "{tmp}/shards"], "is a file"),
    "shards-without-manifest": (["train", "--shards", "{inputs}", "--out", "{tmp}/model"],
                                "visionnode shard"),
    "run-missing-data": (["pipeline", "run", "--local", "--data", "{tmp}/missing"], "{tmp}/missing"),
    "run-data-twice": (["pipeline", "run", "--local", "--data", "{data}", "-p", "data_uri=s3://d/i"],
                       "--data and -p data_uri"),
    # malformed URLs, URIs and YAML
    "host-not-a-url": (["pipeline", "submit", "--host", "notaurl", "-p", "data_uri=s3://d/i"], "notaurl"),
    "malformed-param-file": (["pipeline", "submit", "--host", "http://127.0.0.1:9", "--param-file",
                              "{bad_yaml}"], "line 2"),
    "train-s3-typo": (["train", "--shards", "s3:/x", "--out", "{tmp}/model"], "s3://bucket/prefix"),
    "transfer-s3-typo": (["transfer", "upload", "{inputs}", "s3:/x"], "s3://bucket/prefix"),
    "data-uri-not-a-uri": (["pipeline", "submit", "--host", "http://127.0.0.1:9", "-p", "data_uri=notauri"],
                           "notauri"),
    # out-of-range pipeline parameters, refused by the phase's own config before anything starts
    "jpeg-quality-500": (["pipeline", "submit", "--host", "http://127.0.0.1:9", "-p", "data_uri=s3://d/i",
                          "-p", "shard_jpeg_quality=500"], "shard: --jpeg-quality 500"),
    "negative-epochs": (["pipeline", "run", "--local", "--data", "{data}", "-p", "train_epochs=-3"],
                        "train: --epochs"),
    "unknown-arch": (["pipeline", "run", "--local", "--data", "{data}", "-p", "train_arch=resnet99"],
                     "resnet99"),
    "unknown-precision": (["pipeline", "run", "--local", "--data", "{data}", "-p", "train_precision=fp8"],
                          "train: --precision 'fp8' is not known"),
    # data that cannot be read: the error names the first files and why
    "unreadable-images-shard": (["shard", "--data", "{unreadable}", "--out", "{tmp}/shards"], "n01/img"),
    "unreadable-images-validate": (["validate", "--data", "{unreadable}"], "n01/img"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_user_mistakes_are_one_line_errors_that_write_nothing(case: str, synth_dataset: Path,
                                                              tmp_path: Path) -> None:
    """The real CLI in a subprocess: exit 2, one `error:` line naming the path or value, nothing written,
    no service started (the state dir stays empty)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a-file").write_text("keep me\n")
    (inputs / "params.yaml").write_text("epochs: [1,\n")
    unreadable = _unreadable_dataset(inputs / "unreadable")
    before = {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()}
    names = {"data": synth_dataset, "a_file": inputs / "a-file", "bad_yaml": inputs / "params.yaml",
             "inputs": inputs, "unreadable": unreadable, "tmp": tmp_path}
    argv, named = MISTAKES[case]
    done = _cli(*[a.format(**names) for a in argv], env={"VISIONNODE_STATE_DIR": str(tmp_path / "state")})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and named.format(**names) in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["inputs"], "something was half-written or started"


def test_a_failed_steps_error_line_is_found_in_its_log_and_only_a_user_facing_one(tmp_path: Path) -> None:
    log = tmp_path / "fingerprint.log"
    traceback = ("    Traceback (most recent call last):\n" + "      progress line\n" * 20_000 +
                 "    visionnode.components.common.errors.DataError: the bucket of s3://x does not exist "
                 "(check the dataset URI)\n\n"
                 "10:00:00 - ERROR - Task 'fingerprint-op' finished with status FAILURE\n")
    log.write_text(traceback)  # longer than the tail it reads
    assert user_error(log) == "the bucket of s3://x does not exist (check the dataset URI)"
    log.write_text("    Traceback (most recent call last):\n    ValueError: a bug, not a user mistake\n")
    assert user_error(log) is None  # the run's error then points at the log alone
    assert user_error(tmp_path / "missing.log") is None


def test_a_silent_mlflow_is_one_line_within_its_timeout_and_nothing_is_left(synth_dataset: Path,
                                                                          tmp_path: Path) -> None:
    listeners, port = listeners_that_never_answer()
    try:
        done = _cli("shard", "--data", str(synth_dataset), "--out", str(tmp_path / "shards"),
                    env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    finally:
        listeners[0].close()
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert f"MLflow at http://127.0.0.1:{port}" in errors[0] and "did not answer within 10 s" in errors[0]
    assert not (tmp_path / "shards").exists(), "a failed shard run left its new, empty output directory"


def test_help_and_tables_in_a_pipe_are_whole(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    command = [str(Path(sys.executable).parent / "visionnode")]
    helped = subprocess.run([*command, "quantize", "--help"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert "--calibration-images" in helped.stdout and "--max-accuracy-drop" in helped.stdout, helped.stdout
    deep = tmp_path / ("a-directory-name-long-enough-to-wrap-" * 4) / "data"
    made = subprocess.run([*command, "data", "synth", str(deep), "--classes", "2", "--train-per-class", "2",
                           "--val-per-class", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert made.returncode == 0, made.stderr
    for shown in (helped.stdout, made.stdout):
        assert "…" not in shown and "None" not in shown and "[]" not in shown, shown
    assert str(deep) in "".join(line.strip("│ ") for line in made.stdout.splitlines()), made.stdout


def test_table_values_read_as_people_write_them() -> None:
    shown = [human_value(v) for v in (None, [], True, False, 0.123456, "x")]
    assert shown == ["-", "-", "yes", "no", "0.1235", "x"]
    assert human_value([1, 2]) == "1, 2" and human_value(list(range(32))).endswith("... (32 in all)")
    assert human_value([{"path": "a"}]) == "1 in the --json summary"


def test_json_dash_writes_the_summary_to_standard_output(tmp_path: Path) -> None:
    done = _cli("data", "synth", str(tmp_path / "d"), "--classes", "2", "--train-per-class", "2",
                "--val-per-class", "1", "--json", "-")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # nothing but the JSON on stdout
    assert summary["train_images"] == 4 and summary["val_images"] == 2
    assert not (Path.cwd() / "-").exists() and "train_images" in done.stderr  # the table went to stderr


def test_version_option() -> None:
    done = _cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"visionnode {project_version()}"


def test_run_without_local_is_a_clear_error() -> None:
    assert "--local" in _one_line_error(runner.invoke(app, ["pipeline", "run"]))


@pytest.mark.parametrize("fail, status", [(False, "FINISHED"), (True, "FAILED")])
def test_the_final_step_ends_the_mlflow_parent_run_with_the_runs_real_status(stack, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            fail: bool, status: str) -> None:
    """Our finish_op as the exit handler of a one-step pipeline, run by kfp.local: the parent run a cluster
    run would leave RUNNING ends FINISHED, or FAILED when the step fails, and carries the run's summary."""
    import mlflow
    from kfp import local

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    with tracked_run("pipeline-finish-test") as parent:  # as `pipeline run --local` opens it
        with tracked_run("transfer", tags={"phase": "transfer"}) as phase:  # phases' runs, with their figures
            phase.log_metrics({"mb_per_s": 22.5})
        with tracked_run("benchmark", tags={"phase": "benchmark"}) as phase:
            phase.log_metrics({"best_qps": 12.5, "slo_met": 1.0})
        with tracked_run("transfer", tags={"direction": "fetch"}) as fetch:  # a later step fetching shards
            fetch.log_metrics({"mb_per_s": 0.0})
        monkeypatch.setenv(PARENT_RUN_ENV, parent.run_id or "")

        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   raise_on_error=False)
        one_step_then_finish(fail=fail)
        ended = client.get_run(parent.run_id)
        assert ended.info.status == status and ended.info.end_time
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{parent.run_id}/summary.json"))
    assert (summary["qps"], summary["slo_verdict"], summary["transfer_MBps"]) == (12.5, "met", 22.5)
    expected = "not promoted: the pipeline did not finish" if fail else "not promoted: no promotion step ran"
    assert summary["promotion"].startswith(expected), summary
    note = ended.data.tags["mlflow.note.content"]  # the run's Description in MLflow's UI
    assert note.startswith(f"## Pipeline run: {status}") and "| qps | 12.5 |" in note
    shown = next((tmp_path / "root").glob("finish-test-*/finish-op/summary")).read_text()
    assert shown == note  # the final step's KFP Markdown artifact


TINY_DAG = {"train_arch": "resnet18", "train_epochs": 1, "train_batch_size": 16,
            "train_res_schedule": "64:64", "validate_subset": 48, "validate_steps": 12,
            "validate_image_size": 48, "validate_lr_probe_steps": 4,
            "shard_images_per_shard": 64, "shard_max_resolution": 64, "quantize_calibration_images": 32,
            "quantize_max_accuracy_drop": 100.0, "benchmark_concurrency": "1,2", "benchmark_duration_s": 1.5,
            # an SLO any machine meets: the run promotes
            "benchmark_target_p99_ms": 10_000.0, "benchmark_target_qps": 1.0}


def _run_local_dag(data: Path, params: dict, summary_path: Path, state: Path) -> subprocess.CompletedProcess:
    """`visionnode pipeline run --local` as a user runs it, its output in a pipe."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    env["VISIONNODE_STATE_DIR"] = str(state)
    return subprocess.run([str(Path(sys.executable).parent / "visionnode"), "pipeline", "run", "--local",
                           "--data", str(data), *[f"-p{k}={v}" for k, v in params.items()],
                           "--json", str(summary_path)], capture_output=True, text=True, timeout=900, env=env)


STEPS = (*PHASES, "promote", "reject", "finish")


def _step_lines(stderr: str) -> list[list[str]]:
    return [line.split() for line in stderr.splitlines() if line.split() and line.split()[0] in STEPS]


@pytest.mark.slow
def test_a_failed_quantize_stops_the_dag_and_a_rerun_reuses_the_steps_before_it(stack, synth_dataset: Path,
                                                                               tmp_path: Path) -> None:
    """No model gets past quantize's gate: an impossible bound (INT8 must beat FP32 by 100 points) fails
    the quantize task, and deploy and benchmark never start. Re-run with a bound it meets: the four steps
    before it come from KFP's cache (each line says so, and names the run and log they came from), quantize
    runs, deploy and benchmark (never cached) too. Then one parameter of train changed: train and what
    follows it run, the steps before it are reused."""
    state = tmp_path / "state"
    done = _run_local_dag(synth_dataset, {**TINY_DAG, "quantize_max_accuracy_drop": -100.0},
                          tmp_path / "run.json", state)
    assert done.returncode != 0, done.stderr[-3000:]
    steps = [(s[0], s[1]) for s in _step_lines(done.stderr)]
    # the exit handler's final step runs after the failed one; nothing else does
    assert steps[-4:] == [("quantize", "started"), ("quantize", "FAILED"), ("finish", "started"),
                          ("finish", "done")], done.stderr
    assert not [s for s in steps if s[0] in ("deploy", "benchmark", "promote", "reject")], done.stderr
    error = next(line for line in done.stderr.splitlines() if line.startswith("error:"))
    assert error.startswith("error: the pipeline stopped at step 'quantize': INT8 top-1 drop "), error  # why
    assert "a re-run reuses the steps before it" in done.stderr
    _the_parent_run_ended("FAILED", "not promoted: the pipeline did not finish")
    failed_logs = next((state / "pipeline-runs-logs").iterdir())
    assert "--max-accuracy-drop -100" in (failed_logs / "quantize.log").read_text()
    assert not (tmp_path / "run.json").exists()

    rerun = _run_local_dag(synth_dataset, TINY_DAG, tmp_path / "rerun.json", state)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = {s[0]: s for s in _step_lines(rerun.stderr) if s[1] != "started"}
    for phase in ("validate", "shard", "transfer", "train"):
        assert lines[phase][1] == "cached" and str(failed_logs / f"{phase}.log") in lines[phase], lines[phase]
    assert [lines[p][1] for p in ("quantize", "deploy", "benchmark")] == ["done"] * 3, rerun.stderr
    summary = json.loads((tmp_path / "rerun.json").read_text())
    assert set(summary["cached"]) == {"validate", "shard", "transfer", "train"}
    assert summary["steps"]["train"]["steps_this_run"] > 0 and summary["qps"] > 0

    changed = _run_local_dag(synth_dataset, {**TINY_DAG, "train_crop_min_scale": 0.5},
                             tmp_path / "changed.json", state)
    assert changed.returncode == 0, changed.stderr[-3000:]
    words = {s[0]: s[1] for s in _step_lines(changed.stderr) if s[1] != "started"}
    decided = {step: words.pop(step) for step in ("promote", "reject") if step in words}  # as top-1 compares
    assert words == {"validate": "cached", "shard": "cached", "transfer": "cached", "train": "done",
                     "quantize": "done", "deploy": "done", "benchmark": "done", "finish": "done"}, \
        changed.stderr
    assert list(decided.values()) == ["done"], changed.stderr


@pytest.mark.slow
def test_local_run_of_the_whole_dag_on_tiny_data_in_a_pipe(stack, synth_dataset: Path,
                                                           tmp_path: Path) -> None:
    """The real CLI with its output in a pipe, as `make demo | tee` shows it: a line per step as it starts and
    ends, KFP's executor JSON in the step logs only, the summary uncut, every step's metrics in the JSON."""
    params = {**TINY_DAG, "deploy_model_name": "pipe_test"}  # a name no other test serves: no champion yet
    summary_path = tmp_path / "run.json"
    done = _run_local_dag(synth_dataset, params, summary_path, tmp_path / "state")
    assert done.returncode == 0, done.stderr[-3000:]
    shown = (done.stdout + done.stderr).splitlines()
    steps = _step_lines(done.stderr)
    expected = [(p, w) for p in (*PHASES, "promote", "finish") for w in ("started", "done")]
    assert [(s[0], s[1]) for s in steps] == expected, done.stderr
    assert len(shown) < 60 and "executor_input" not in done.stdout + done.stderr, "\n".join(shown)
    assert not [line for line in shown if "…" in line], "a cut line in the output"

    summary = json.loads(summary_path.read_text())
    assert set(summary["steps"]) == {"fingerprint", *PHASES, "promote", "finish"}, summary["steps"]
    assert all(summary["steps"][p] for p in PHASES) and summary["cached"] == {}, summary
    # The headline figures are the benchmark step's (what Triton counted meanwhile: tests/test_benchmark.py).
    bench, deployed = summary["steps"]["benchmark"], summary["steps"]["deploy"]
    assert (summary["qps"], summary["p99_ms"]) == (bench["best_qps"], bench["best_p99_ms"])
    # No champion before this run and an SLO any machine meets: the candidate was promoted, serves under the
    # production name on the stack's Triton, and the staged candidate is gone.
    version = int(deployed["model_version"])
    promoted = f"promoted: {deployed['model_name']} version {version} serves on 1 replica"
    assert summary["promotion"].startswith(promoted), summary["promotion"]
    assert summary["candidate_top1"] == bench["candidate_top1"] and "champion_top1" not in summary
    triton = triton_http_client(deployed["http_url"])
    assert triton.is_model_ready(deployed["model_name"], str(version))
    assert not triton.is_model_ready(deployed["candidate_name"])
    # lr auto (the default): train ran with the LR validate's probe suggested, or with the batch rule where
    # the probe saw no signal (suggested_lr 0; its 12 held-out images here can seldom tell), the plan in the
    # summary
    if summary["suggested_lr"]:
        assert summary["suggested_lr"] in (0.03, 0.1, 0.3)
        assert summary["train_peak_lr"] == pytest.approx(summary["suggested_lr"])
        assert f"peak LR {summary['suggested_lr']:.3g} (probe;" in summary["train_lr_plan"]
    else:
        assert f"peak LR {summary['train_peak_lr']:.3g} (batch rule;" in summary["train_lr_plan"]
    # how good the result is: top-1's interval over the val images; the gate's verdict (the Markdown
    # artifact's metadata, which the KFP UI shows)
    val_images = summary["steps"]["train"]["val_images"]
    assert summary["train_top1_ci"].endswith(f"(95 %, {val_images:.0f} val images)")
    assert summary["int8_gate"] == summary["steps"]["quantize"]["verdict"] in ("pass", "pass with warning")
    assert summary["mlflow_run"].startswith("http://127.0.0.1:")
    logs = Path(summary["logs"])
    for phase in PHASES:
        log = (logs / f"{phase}.log").read_text()
        assert f"Executing task '{phase}-op'" in log and "executor_input" in log, phase
        assert str(logs / f"{phase}.log") in done.stderr, f"the {phase} line does not say where its log is"
    train_line = next(s for s in steps if s[:2] == ["train", "done"])
    assert "top-1" in " ".join(train_line), train_line
    # each step that ran says how many cores its processes kept busy (what they did is test_cpu_use.py's)
    cores = {s[0]: float(re.search(r"cores ([\d.]+) log:", " ".join(s))[1]) for s in steps if s[1] == "done"}
    assert set(cores) == {*PHASES, "promote", "finish"} and cores["train"] > 0.2, cores
    assert f"train {cores['train']:.2f}," in summary["cpu_cores"], summary["cpu_cores"]

    # The run link we print, opened in a real browser: the model-training view, the pipeline's parent run
    # with every phase as a child run; the registry lists the trained model.
    parent_page = rendered_text(summary["mlflow_run"])
    assert "visionnode-152-local" in parent_page and "Child runs" in parent_page, parent_page[:2000]
    children = parent_page.split("Child runs", 1)[1][:400]
    assert all(phase in children for phase in PHASES), children
    assert "Evaluation runs" not in parent_page and "Model registry" in parent_page  # not the GenAI view
    mlflow_root = summary["mlflow_run"].split("/#/", 1)[0]
    assert "visionnode-resnet18" in rendered_text(f"{mlflow_root}/#/models")
    _mlflow_shows_the_run_its_champion_and_confusion_matrix(summary, deployed["model_name"], version)


def _the_parent_run_ended(status: str, promotion: str) -> None:
    """The pipeline's MLflow parent run (the newest of that name) ended with `status`, saying `promotion`."""
    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("visionnode")
    parent = client.search_runs([experiment.experiment_id], "attributes.run_name = 'visionnode-152-local'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert parent.info.status == status, parent.info
    assert parent.data.tags["visionnode.promotion"].startswith(promotion), parent.data.tags


def _mlflow_shows_the_run_its_champion_and_confusion_matrix(summary: dict, model: str, version: int) -> None:
    """The parent run ended FINISHED with the summary; in a real browser, the registered INT8 model shows the
    alias champion on the promoted version and the train run shows its confusion-matrix artifact."""
    import mlflow

    run_id = summary["mlflow_run"].split("/runs/", 1)[1].split("?", 1)[0]
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED", parent.info
    assert parent.data.tags["visionnode.promotion"] == summary["promotion"]
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/summary.json"))
    assert logged["promotion"] == summary["promotion"] and logged["qps"] == summary["qps"]
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.tags["triton_version"] == str(version) and champion.tags["fp32_model"].startswith(
        "visionnode-resnet18/")
    mlflow_root = summary["mlflow_run"].split("/#/", 1)[0]
    registry_page = rendered_text(f"{mlflow_root}/#/models/{model}")
    assert f"Version {champion.version}" in registry_page, registry_page[:3000]
    assert "champion" in registry_page, registry_page[:3000]
    train = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' "
                               "and attributes.run_name = 'train'")[0]
    artifacts_page = rendered_text(f"{mlflow_root}/#/experiments/{parent.info.experiment_id}/runs/"
                                   f"{train.info.run_id}/artifacts/plots/confusion_matrix.png")
    assert "confusion_matrix.png" in artifacts_page and "training_curves.png" in artifacts_page, (
        artifacts_page[:3000])
