"""Caching as KFP users expect it: cache keys that do not change per run, deploy/benchmark never cached,
`--no-cache` that really turns caching off (also for a run by pipeline version), and a local run that keeps
finished steps."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.toy_pipeline import TOY_STEPS, toy_pipeline
from visionnode.pipeline.compile import dag_tasks, load_compiled
from visionnode.pipeline.local_dag import run_dag, source_digest, tree_digest

NEVER_CACHED = {"fingerprint-op", "deploy-op", "benchmark-op", "promote-op", "reject-op", "finish-op"}
CACHED = {"validate-op", "shard-op", "transfer-op", "train-op", "quantize-op"}
GOLDEN = Path(__file__).parent / "golden" / "visionnode-152.yaml"
# What KFP resolves per run (kfp.dsl placeholders and the IR's run-time values): none may be a cacheable
# task's input, or its cache key is unique to the run (kubeflow/pipelines #4090, #7241).
RUN_UNIQUE = re.compile(r"\{\{\$\.pipeline_(job|task)_"
                        r"(uuid|name|resource_name|create_time_utc|schedule_time_utc)\}\}|\{\{workflow\.")


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return load_compiled(GOLDEN)


def _tasks(spec: dict[str, Any]) -> dict[str, Any]:
    """The steps, in whichever DAG they sit (the exit handler's, a promotion condition's), not the DAGs."""
    return {name: task for name, task in dag_tasks(spec).items()
            if not name.startswith(("exit-handler", "condition"))}


def test_no_cacheable_task_takes_a_value_that_differs_per_run(golden: dict[str, Any]) -> None:
    tasks = _tasks(golden)
    assert set(tasks) == CACHED | NEVER_CACHED
    for name in CACHED:
        inputs = json.dumps(tasks[name].get("inputs", {}))
        assert not RUN_UNIQUE.search(inputs), f"{name} takes a per-run value: {RUN_UNIQUE.search(inputs)[0]}"
        assert "pipeline_run_id" not in tasks[name]["inputs"]["parameters"]
    for name in ("validate-op", "shard-op", "transfer-op", "train-op"):  # keyed by the data, not its URI
        assert tasks[name]["inputs"]["parameters"]["data_digest"]["taskOutputParameter"] == {
            "producerTask": "fingerprint-op", "outputParameterKey": "data_digest"}
    # ... and the components' commands hold no placeholder either (the command is part of the key, too)
    for name in CACHED:
        executor = golden["deploymentSpec"]["executors"][f"exec-{name}"]["container"]
        assert not RUN_UNIQUE.search(json.dumps(executor)), name


def test_the_per_run_checker_finds_the_placeholder_the_pipeline_used_to_pass() -> None:
    before = {"parameters": {"pipeline_run_id": {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}}}
    assert RUN_UNIQUE.search(json.dumps(before))


def test_caching_is_on_exactly_where_it_is_safe(golden: dict[str, Any]) -> None:
    tasks = _tasks(golden)
    for name in CACHED:
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name
    for name in NEVER_CACHED:  # the IR leaves a false flag out: {} is "caching off"
        assert not tasks[name]["cachingOptions"].get("enableCache"), name


def test_every_task_gets_the_run_id_from_its_pods_label_not_an_input(golden: dict[str, Any]) -> None:
    executors = golden["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in CACHED | NEVER_CACHED:
        run_id = {"name": "VISIONNODE_PIPELINE_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"}
        assert run_id in executors[f"exec-{name}"]["fieldPathAsEnv"], name


def test_the_golden_file_shows_the_run_independent_inputs() -> None:
    """The lines a reviewer reads: train's inputs are the data digest and settings, no run id."""
    text = GOLDEN.read_text()
    train = text[text.index("        train-op:\n"):text.index("        transfer-op:\n")]
    assert "pipeline_job_uuid" not in text
    digest_input = ("data_digest:\n                taskOutputParameter:\n"
                    "                  outputParameterKey: data_digest")
    assert digest_input in train


# -- pipeline submit --no-cache, by pipeline version (kubeflow/pipelines #14253) --------------------------

class _FakeKfp(http.server.BaseHTTPRequestHandler):
    """The few KFP v2beta1 API calls `pipeline submit` makes; records the uploaded versions and the run."""

    versions: dict[str, str] = {}   # version id -> uploaded YAML
    runs: list[dict[str, Any]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._answer({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/pipelines/p1/versions"):
            self._answer({"pipeline_versions": [], "total_size": 0})
        elif self.path.startswith("/apis/v2beta1/pipelines"):
            self._answer({"pipelines": [{"pipeline_id": "p1", "display_name": "visionnode-152"}],
                          "total_size": 1})
        else:
            self._answer({})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/apis/v2beta1/pipelines/upload_version"):
            version_id = f"v{len(self.versions) + 1}"
            self.versions[version_id] = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0].decode()
            self._answer({"pipeline_id": "p1", "pipeline_version_id": version_id})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._answer({"experiment_id": "e1", "display_name": "visionnode"})
        elif self.path.startswith("/apis/v2beta1/runs"):
            self.runs.append(json.loads(body))
            self._answer({"run_id": f"r{len(self.runs)}"})
        else:
            self._answer({})


@pytest.fixture()
def fake_kfp() -> Any:
    _FakeKfp.versions, _FakeKfp.runs = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", _FakeKfp
    finally:
        server.shutdown()


def _caching_of_version(yaml_text: str) -> dict[str, bool]:
    spec = next(yaml.safe_load_all(yaml_text))
    return {name: bool(task.get("cachingOptions", {}).get("enableCache"))
            for name, task in _tasks(spec).items()}


def test_submit_no_cache_runs_a_version_with_caching_off_everywhere(fake_kfp: Any) -> None:
    from visionnode.pipeline.submit import SubmitConfig, submit_pipeline

    host, api = fake_kfp
    params = {"data_uri": "s3://datasets/imagenet"}
    cached = submit_pipeline(SubmitConfig(host, params=params))
    uncached = submit_pipeline(SubmitConfig(host, params=params, no_cache=True))
    assert [run["pipeline_version_reference"]["pipeline_version_id"] for run in api.runs] == \
        [cached.version_id, uncached.version_id]
    assert _caching_of_version(api.versions[cached.version_id])["train-op"] is True
    assert not any(_caching_of_version(api.versions[uncached.version_id]).values())
    assert all("pipeline_spec" not in run for run in api.runs)  # by version: the spec is the version's


def test_the_sdk_alone_drops_enable_caching_for_a_run_by_version(fake_kfp: Any) -> None:
    """Why --no-cache uploads a version of its own: kfp.Client sends no caching setting with a run by version
    (kubeflow/pipelines #14253), so the version's compiled caching applies."""
    import kfp

    host, api = fake_kfp
    client = kfp.Client(host=host)
    client.run_pipeline(experiment_id="e1", job_name="j", pipeline_id="p1", version_id="v9",
                        enable_caching=False)
    assert "caching" not in json.dumps(api.runs[-1]).lower() and "pipeline_spec" not in api.runs[-1]


# -- pipeline run --local: KFP's cache, keyed as in a cluster ---------------------------------------------



def _toy_run(tmp_path: Path, cache: bool = True, **params: Any) -> tuple[list[str], list[str], Any]:
    from kfp import local

    executions = tmp_path / "executions.log"
    executions.write_text("")
    lines: list[str] = []
    run = run_dag(toy_pipeline, params, TOY_STEPS, tmp_path / "runs", local.SubprocessRunner(use_venv=False),
                  lines.append, tmp_path / "cache" if cache else None)
    return executions.read_text().split(), lines, run


def _words(lines: list[str]) -> list[tuple[str, str]]:
    return [tuple(line.split()[:2]) for line in lines]


def test_local_cache_hit_miss_on_a_changed_parameter_and_reuse_after_a_failure(tmp_path: Path,
                                                                             monkeypatch) -> None:
    monkeypatch.setenv("TOY_EXECUTIONS", str(tmp_path / "executions.log"))
    ran, lines, failed = _toy_run(tmp_path, x=1, fail=True)
    assert ran == ["make", "use"] and ("use", "FAILED") in _words(lines), lines

    # re-run after the failure: the step before it is reused, with where it came from and its log
    ran, lines, fixed = _toy_run(tmp_path, x=1, fail=False)
    assert ran == ["use", "side"], lines
    cached = next(line for line in lines if line.startswith("make"))
    assert cached.split()[1] == "cached" and f"from {failed.run_dir.name}" in cached, cached
    assert str(failed.log_dir / "make.log") in cached
    assert fixed.cached == {"make": failed.run_dir / "make-op"}
    assert fixed.task_dirs["make"] == failed.run_dir / "make-op"
    assert fixed.task_dirs["use"].parent == fixed.run_dir

    # the same parameters again: every cacheable step is reused, the never-cached one runs
    ran, lines, _ = _toy_run(tmp_path, x=1, fail=False)
    assert ran == ["side"] and _words(lines) == [("make", "cached"), ("use", "cached"), ("side", "started"),
                                                 ("side", "done")], lines

    # one parameter changed: the steps it reaches run again
    ran, _, _ = _toy_run(tmp_path, x=2, fail=False)
    assert ran == ["make", "use", "side"]

    # caching off: everything runs
    ran, lines, _ = _toy_run(tmp_path, cache=False, x=1, fail=False)
    assert ran == ["make", "use", "side"] and not [line for line in lines if " cached " in line]


def test_the_cache_namespace_follows_the_code(tmp_path: Path) -> None:
    """A code change must not reuse a step the old code made: the namespace is a digest of the package
    source (and of the images, for the Docker runner)."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "phase.py").write_text("x = 1\n")
    (package / "notes.txt").write_text("not code\n")
    before = tree_digest([package])
    (package / "notes.txt").write_text("still not code\n")
    assert tree_digest([package]) == before
    (package / "sub" / "phase.py").write_text("x = 2\n")
    assert tree_digest([package]) != before
    assert source_digest(["sha256:aaa"]) != source_digest(["sha256:bbb"]) != source_digest()
