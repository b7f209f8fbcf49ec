"""`visionnode pipeline run --local`: the whole DAG on this machine with kfp.local against the embedded stack.

Steps: start (or reuse) the embedded S3/MLflow/Triton stack,
generate the demo dataset unless `--data` is given,
export the service endpoints into the environment the components inherit,
open the MLflow parent run that every
phase nests under, run the pipeline with kfp.local (local_dag.py: KFP's own task cache, keyed as a cluster
keys it, so a re-run reuses the steps whose inputs did not change and a run that failed resumes at the failed
step; the `dsl.If`/`dsl.Else` promotion; the exit handler, whose final step ends that parent run with the
run's status and summary), then read each task's metrics back from its `executor_output.json` into one
summary, with the promotion outcome.

Every run gets its own id (`VISIONNODE_PIPELINE_RUN_ID` in the tasks' environment, as KFP gives a pod its
run's id), which names its default checkpoint location; the pipeline's other defaults are the compiled ones.

Two runners: `subprocess` (kfp.local.SubprocessRunner: every task in this Python environment, the default) and
`docker` (kfp.local.DockerRunner: every task in its phase's image, as uid 10001 with a read-only root, host
networking to the embedded stack on 127.0.0.1, the dataset mounted read-only at its own path).
"""

from __future__ import annotations

import json
import os
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionnode.components.common.cpus import usable_cpus
from visionnode.components.common.errors import ConfigError, DataError, VisionNodeError
from visionnode.components.common.run_summary import summarize
from visionnode.components.common.settings import (
    Endpoints,
    named_in_environment,
    resolve_s3_credentials,
    service_env,
    state_dir,
)
from visionnode.components.common.tracking import PARENT_RUN_ENV, PIPELINE_RUN_ENV, tracked_run
from visionnode.components.local import containers
from visionnode.components.local.synth import SynthConfig, synthesize_dataset
from visionnode.pipeline.compile import compiled_spec, parameter_defaults
from visionnode.pipeline.local_dag import DagRun, run_dag, source_digest, step_metrics
from visionnode.pipeline.params import check_params
from visionnode.pipeline.pipeline import PIPELINE_NAME
from visionnode.pipeline.step_log import user_error

TASK_ORDER = ("fingerprint", *containers.PHASES)  # the DAG's steps (fingerprint runs in transfer's image)
DECISION_STEPS = ("promote", "reject")  # one of them runs, as benchmark decided (dsl.If / dsl.Else)
FINAL_STEP = "finish"                   # the exit handler: after every other step, failed or not

# Small enough for 2 CPU cores in minutes, large enough that every phase does real work; a strong class
# signal, so that a first run shows the pipeline learning (the cluttered kind stays near 25 % in 3 epochs).
DEMO_DATA = SynthConfig(classes=10, train_per_class=60, val_per_class=10, seed=0, min_side=64, max_side=128,
                        clutter=False)
DEMO_DATA_NOTE = (f"generated: {DEMO_DATA.classes} classes of one large shape on grey, "
                  f"{DEMO_DATA.classes * DEMO_DATA.train_per_class} train / "
                  f"{DEMO_DATA.classes * DEMO_DATA.val_per_class} val images, easy by design; real photos "
                  "need more epochs and data (docs/training.md)")
DEMO_PARAMS: dict[str, Any] = {
    "validate_subset": 256, "validate_image_size": 64, "validate_steps": 24,
    "shard_images_per_shard": 256, "shard_max_resolution": 96, "shard_jpeg_quality": 90,
    # One FFCV worker: on 2 cores, two decoding threads fight torch's two compute threads (2.4x slower steps).
    "train_arch": "resnet152", "train_epochs": 6, "train_batch_size": 32, "train_res_schedule": "64:64",
    "train_precision": "auto", "train_workers": 1,
    "quantize_calibration_images": 100, "quantize_max_accuracy_drop": 2.0,
    "benchmark_concurrency": "1,4,8", "benchmark_duration_s": 4.0,
}


RUNNERS = ("subprocess", "docker")


@dataclass
class LocalRunConfig:
    data: Path | None = None                      # ImageNet-layout dir; None -> the generated demo dataset
    params: dict[str, Any] = field(default_factory=dict)  # pipeline parameter overrides (`--param k=v`)
    work_dir: Path | None = None                  # where kfp.local keeps run outputs; default: state dir
    runner: str = "subprocess"                    # "subprocess" or "docker" (RUNNERS)
    # serve from the triton-openvino image (docker runner's default)
    triton_container: bool = False
    cache: bool = True                            # reuse steps a run with the same inputs made (KFP's cache)
    on_step: Callable[[str], None] = print        # receives one line per step as it starts and ends


@dataclass
class LocalRunResult:
    run_dir: Path
    log_dir: Path
    wall_seconds: float
    data: Path
    params: dict[str, Any]
    summary: dict[str, Any]
    task_metrics: dict[str, dict[str, Any]]
    mlflow_run_url: str | None
    run_id: str = ""
    cached: dict[str, str] = field(default_factory=dict)  # step -> the run dir its outputs came from


def run_local(config: LocalRunConfig) -> LocalRunResult:
    started = time.perf_counter()
    if config.runner not in RUNNERS:
        raise ConfigError(f"unknown runner {config.runner!r}", f"use one of: {', '.join(RUNNERS)}")
    if config.data is not None:
        if "data_uri" in config.params:
            raise ConfigError("--data and -p data_uri both name the dataset", "pass one of them")
        _check_dataset(config.data)
    data = config.data.resolve() if config.data is not None else demo_data_dir()
    params = _pipeline_params(data, config)
    check_params(parameter_defaults(compiled_spec()) | params, local=True)
    pipeline_root = (config.work_dir or state_dir() / "pipeline-runs").resolve()
    images = _check_docker(pipeline_root, config.data) if config.runner == "docker" else []
    cache_root = _cache_root(pipeline_root, config.runner, images) if config.cache else None
    endpoints = _start_stack(config.triton_container)
    if config.data is None and not (data / "LOC_synset_mapping.txt").is_file():
        synthesize_dataset(data, DEMO_DATA)
    run_id = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    with (service_env := _service_environment(endpoints, run_id)), \
            tracked_run(f"{PIPELINE_NAME}-local", tags={"data": data, "pipeline_run_id": run_id}) as parent:
        os.environ[PARENT_RUN_ENV] = parent.run_id or ""
        parent.log_params(params)
        if config.runner == "docker":
            environment = {k: os.environ[k] for k in [*service_env.values, PARENT_RUN_ENV] if k in os.environ}
            runner = _docker_runner(environment, data, pipeline_root)
        else:
            runner = _subprocess_runner()
        run = _run_pipeline(params, pipeline_root, runner, config.on_step, cache_root)
        task_metrics = {step: step_metrics(path) for step, path in run.task_dirs.items()}
        summary = ({"data": DEMO_DATA_NOTE} if config.data is None else {}) | summarize(task_metrics) \
            | quality_summary(task_metrics)
        summary["promotion"] = promotion_outcome(run)
        if run.cpu_cores:
            summary["cpu_cores"] = ", ".join(f"{step} {cores:.2f}" for step, cores in run.cpu_cores.items()) \
                + f" (of {usable_cpus()} usable)"
        parent.set_tags({k: v for k, v in summary.items() if k in QUALITY_TAGS})
        parent.set_tags({f"cached.{step}": path.parent.name for step, path in run.cached.items()})
        url = parent.run_url
    return LocalRunResult(run.run_dir, run.log_dir, time.perf_counter() - started, data, params, summary,
                          task_metrics, url, run_id, {s: str(p.parent) for s, p in run.cached.items()})


def _cache_root(pipeline_root: Path, runner: str, images: list[str]) -> Path:
    """Beside the pipeline root, one namespace per version of the code (and of the images it runs in)."""
    return pipeline_root.parent / f"{pipeline_root.name}-cache" / f"{runner}-{source_digest(images)}"


def _start_stack(triton_container: bool) -> Endpoints:
    """Start (or keep) the embedded services, except those the environment points at an external endpoint."""
    from visionnode.components.local.stack.stack import LocalStack, StackConfig

    stack = LocalStack(StackConfig(with_s3=not named_in_environment("s3_endpoint"),
                                   with_mlflow=not named_in_environment("mlflow_uri"),
                                   with_triton=not named_in_environment("triton_http"),
                                   triton_container=triton_container))
    stack.up()
    return stack.endpoints


def _check_dataset(data: Path) -> None:
    if not (data / "train").is_dir():
        raise DataError(f"{data} has no train/ folder",
                        "point --data at an ImageNet-layout root (train/<wnid>/*.JPEG, val/...)")


def _check_docker(pipeline_root: Path, data: Path | None) -> list[str]:
    """Before anything starts: an engine, the seven phase images, and paths the images' uid can reach.
    Returns the images' ids (what the cache is keyed by, besides the code)."""
    client = containers.docker_client()
    ids = [client.images.get(tag).id for tag in containers.require_images(client, containers.PHASES)]
    client.close()
    for path, what in ((pipeline_root, "the pipeline root"), (data or state_dir(), "the dataset")):
        blocked = containers.unreachable_ancestor(path)
        if blocked is not None:
            raise ConfigError(f"the task containers (uid {containers.IMAGE_USER.split(':')[0]}) cannot reach "
                              f"{what} {path}: {blocked} is not searchable by other users",
                              "set VISIONNODE_STATE_DIR (and --data) to a directory outside it, e.g. "
                              "/var/tmp/visionnode, or chmod o+x it")
    return ids


def demo_data_dir() -> Path:
    signal = "clutter" if DEMO_DATA.clutter else "strong"
    name = f"synth-{signal}-{DEMO_DATA.classes}x{DEMO_DATA.train_per_class}-s{DEMO_DATA.seed}"
    return state_dir() / "demo-data" / name


def _pipeline_params(data: Path, config: LocalRunConfig) -> dict[str, Any]:
    """The demo's parameters (without --data) and the data; shards and checkpoints go where the compiled
    pipeline's defaults put them, as in a cluster."""
    params: dict[str, Any] = dict(DEMO_PARAMS) if config.data is None else {}
    params["data_uri"] = str(data)
    params.update(config.params)
    return params


class _service_environment:
    """Export endpoints, S3 credentials and the run id for the tasks; restore the environment after."""

    def __init__(self, endpoints: Endpoints, run_id: str) -> None:
        self.values = service_env(endpoints, resolve_s3_credentials()) | {PIPELINE_RUN_ENV: run_id}
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in [*self.values, PARENT_RUN_ENV]}
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _subprocess_runner() -> Any:
    from kfp import local

    # Expected here, so not worth a warning per task: the SubprocessRunner runs our (non-Python-named)
    # component images' code in this very environment, which has visionnode installed.
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    return local.SubprocessRunner(use_venv=False)


def _docker_runner(environment: dict[str, str], data: Path, pipeline_root: Path) -> Any:
    """Each task in its phase's image, run as the manifests run it;
    kfp.local mounts the pipeline root itself."""
    from kfp import local
    from kfp.local import docker_task_handler

    # kfp.local's task handler calls this module-level function; ours reads the exit code before removal.
    docker_task_handler.run_docker_container = containers.run_task_container

    pipeline_root.mkdir(parents=True, exist_ok=True)
    # kfp.local creates it as this user; the tasks write their outputs as uid 10001
    pipeline_root.chmod(0o1777)
    run_args = containers.container_run_args(environment, mounts=[(data, data, True)])
    # The task's command replaces the image's entrypoint, as Kubernetes' `command` does in a cluster
    # ([""] is the engine's spelling of "no entrypoint"; the SDK's `command` alone would only replace CMD).
    return local.DockerRunner(entrypoint=[""], **run_args)


def _run_pipeline(params: dict[str, Any], pipeline_root: Path, runner: Any, on_step: Callable[[str], None],
                  cache_root: Path | None) -> DagRun:
    """The DAG with kfp.local (local_dag.py); a step that neither ran to the end nor came from cache stops
    the run with a one-line error naming it and its log."""
    from visionnode.pipeline.pipeline import visionnode_pipeline

    run = run_dag(visionnode_pipeline, params, (*TASK_ORDER, *DECISION_STEPS, FINAL_STEP), pipeline_root,
                  runner, on_step, cache_root, key_figure)
    if run.run_dir is None:
        raise ConfigError("kfp.local produced no run directory", f"look in {pipeline_root} and {run.log_dir}")
    # A step that neither ran to the end nor came from cache (the final step runs in any case, so a failed
    # phase is not the last line); a promotion step that did not run because of the decision is fine.
    failed = [step for step in (*TASK_ORDER, FINAL_STEP) if not _finished(run, step)]
    if failed:
        log, stopped = run.log_dir / f"{failed[0]}.log", f"the pipeline stopped at step {failed[0]!r}"
        reason = user_error(log)
        raise VisionNodeError(f"{stopped}: {reason}" if reason else stopped,
                              f"its log is {log}; outputs of the steps that ran are under {run.run_dir}; a "
                              "re-run reuses the steps before it")
    if not any(_finished(run, step) for step in DECISION_STEPS):  # kfp.local skips both if it cannot read
        raise VisionNodeError("benchmark decided, but neither promote nor reject ran",
                              f"see how kfp.local evaluated the condition in {run.log_dir / 'pipeline.log'}")
    return run


def _finished(run: DagRun, step: str) -> bool:
    return step in run.task_dirs and (run.task_dirs[step] / "executor_output.json").is_file()


def promotion_outcome(run: DagRun) -> str:
    """`promoted: ...` or `not promoted: <reason>`, as the promotion step that ran reported it."""
    for step in DECISION_STEPS:
        if _finished(run, step):
            output = json.loads((run.task_dirs[step] / "executor_output.json").read_text())
            return str(output.get("parameterValues", {}).get("outcome", ""))
    return "not promoted: no promotion step ran"


# The figure a step's end line shows: (metric name, label, format) from the step's metrics artifact.
KEY_FIGURES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "fingerprint": (("files", "files", "{:,.0f}"), ("total_mb", "MB", "{:,.1f}")),
    "validate": (("loss_first", "loss", "{:.3g}"), ("loss_last", "->", "{:.3g}")),
    "shard": (("images_written", "images", "{:,.0f}"), ("files_skipped", "unreadable skipped", "{:,.0f}")),
    "transfer": (("objects_skipped", "verified in place", "{:.0f}"),
                 ("objects_transferred", "copied", "{:.0f}")),
    "train": (("top1", "top-1 %", "{:.1f}"), ("images_per_second", "img/s", "{:.1f}"),
              ("training_cores", "cores while training", "{:.2f}")),
    "quantize": (("int8_top1", "INT8 top-1 %", "{:.1f}"), ("top1_agreement", "agreement %", "{:.1f}")),
    "deploy": (("load_s", "loaded in s", "{:.1f}"),),
    "benchmark": (("best_qps", "QPS", "{:.0f}"), ("best_p99_ms", "P99 ms", "{:.0f}"),
                  ("candidate_top1", "top-1 %", "{:.1f}"), ("champion_top1", "champion top-1 %", "{:.1f}")),
    "promote": (("model_version", "serving version", "{:.0f}"), ("replicas", "replicas", "{:.0f}")),
    "reject": (("model_version", "withdrew version", "{:.0f}"),),
}


def key_figure(step: str, metrics: dict[str, Any]) -> str:
    parts = [f"{label} {fmt.format(metrics[name])}" for name, label, fmt in KEY_FIGURES.get(step, ())
             if isinstance(metrics.get(name), (int, float))]
    return "  ".join(parts)


QUALITY_TAGS = ("train_lr_plan", "train_quality_note", "int8_gate", "int8_gate_note")


def quality_summary(task_metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How good the result is: top-1's 95 % interval, the LR plan, a note when top-1 is far below what
    validate's LR probe promised, and the INT8 gate's verdict (with its message unless a plain pass)."""
    from visionnode.components.common.training.lr_probe import promise_note

    train, validate, quantize = (task_metrics.get(t, {}) for t in ("train", "validate", "quantize"))
    out: dict[str, Any] = {}
    if "top1_ci_low" in train:
        out["train_top1_ci"] = f"{train['top1_ci_low']:.1f}-{train['top1_ci_high']:.1f} % (95 %, " \
                               f"{train['val_images']:.0f} val images)"
    if "lr_plan" in train:
        out["train_lr_plan"] = train["lr_plan"]
    if "lr_probe_top1" in validate and "val_images" in train:
        note = promise_note(train["top1"], int(train["val_images"]), validate["lr_probe_top1"],
                            int(validate["lr_probe_heldout_images"]))
        if note:
            out["train_quality_note"] = note
    if "verdict" in quantize:
        out["int8_gate"] = quantize["verdict"]
        if quantize["verdict"] != "pass":
            out["int8_gate_note"] = quantize["message"]
    return out
