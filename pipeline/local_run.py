"""`visionnode pipeline run --local`: the whole DAG on this machine with kfp.local against the embedded stack.

Steps: start (or reuse) the embedded S3/MLflow/Triton stack,
generate the demo dataset unless `--data` is given,
export the service endpoints into the environment the components inherit,
open the MLflow parent run that every
phase nests under, run the pipeline with kfp.local, then read each task's metrics back from its
`executor_output.json` into one summary.

Two runners: `subprocess` (kfp.local.SubprocessRunner: every task in this Python environment, the default) and
`docker` (kfp.local.DockerRunner: every task in its phase's image, as uid 10001 with a read-only root, host
networking to the embedded stack on 127.0.0.1, the dataset mounted read-only at its own path).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionnode.components.common.errors import ConfigError, DataError, VisionNodeError
from visionnode.components.common.settings import Endpoints, resolve_s3_credentials, service_env, state_dir
from visionnode.components.common.tracking import PARENT_RUN_ENV, tracked_run
from visionnode.components.local import containers
from visionnode.components.local.synth import SynthConfig, synthesize_dataset
from visionnode.pipeline.compile import compiled_spec, parameter_defaults
from visionnode.pipeline.params import check_params
from visionnode.pipeline.pipeline import PIPELINE_NAME
from visionnode.pipeline.step_log import StepEvent, StepLog

# A service named by one of these variables is external: the local run does not start an embedded one.
EXTERNAL_ENV = {"s3": ("VISIONNODE_S3_ENDPOINT",), "mlflow": ("MLFLOW_TRACKING_URI", "VISIONNODE_MLFLOW_URI"),
                "triton": ("VISIONNODE_TRITON_HTTP",)}
TASK_ORDER = containers.PHASES  # the DAG's steps, each in its phase's image

# Small enough for 2 CPU cores in minutes, large enough that every phase does real work.
DEMO_DATA = SynthConfig(classes=10, train_per_class=60, val_per_class=10, seed=0, min_side=64, max_side=128)
DEMO_PARAMS: dict[str, Any] = {
    "validate_subset": 256, "validate_image_size": 64, "validate_steps": 24,
    "images_per_shard": 256, "max_resolution": 96, "jpeg_quality": 90,
    # One FFCV worker: on 2 cores, two decoding threads fight torch's two compute threads (2.4x slower steps).
    "arch": "resnet152", "epochs": 3, "batch_size": 32, "res_schedule": "64:64", "precision": "auto",
    "workers": 1,
    "calibration_images": 100, "max_accuracy_drop": 2.0,
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


def run_local(config: LocalRunConfig) -> LocalRunResult:
    started = time.perf_counter()
    if config.runner not in RUNNERS:
        raise ConfigError(f"unknown runner {config.runner!r}", f"use one of: {', '.join(RUNNERS)}")
    if config.data is not None:
        _check_dataset(config.data)
    data = config.data.resolve() if config.data is not None else demo_data_dir()
    params = _pipeline_params(data, config)
    check_params(parameter_defaults(compiled_spec()) | params, local=True)
    pipeline_root = (config.work_dir or state_dir() / "pipeline-runs").resolve()
    if config.runner == "docker":
        _check_docker(pipeline_root, config.data)
    endpoints = _start_stack(config.triton_container)
    if config.data is None and not (data / "LOC_synset_mapping.txt").is_file():
        synthesize_dataset(data, DEMO_DATA)
    with (service_env := _service_environment(endpoints)), \
            tracked_run(f"{PIPELINE_NAME}-local", tags={"data": data}) as parent:
        os.environ[PARENT_RUN_ENV] = parent.run_id or ""
        parent.log_params(params)
        if config.runner == "docker":
            environment = {k: os.environ[k] for k in [*service_env.values, PARENT_RUN_ENV] if k in os.environ}
            runner = _docker_runner(environment, data, pipeline_root)
        else:
            runner = _subprocess_runner()
        run_dir, log_dir = _run_pipeline(params, pipeline_root, runner, config.on_step)
        task_metrics = read_task_metrics(run_dir)
        summary = summarize(task_metrics)
        parent.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        parent.set_tags({k: v for k, v in summary.items() if k in QUALITY_TAGS})
        url = parent.run_url
    return LocalRunResult(run_dir, log_dir, time.perf_counter() - started, data, params, summary,
                          task_metrics, url)


def _start_stack(triton_container: bool) -> Endpoints:
    """Start (or keep) the embedded services, except those the environment points at an external endpoint."""
    from visionnode.components.local.stack.stack import LocalStack, StackConfig

    external = {name: any(os.environ.get(var) for var in env_vars) for name, env_vars in EXTERNAL_ENV.items()}
    stack = LocalStack(StackConfig(with_s3=not external["s3"], with_mlflow=not external["mlflow"],
                                   with_triton=not external["triton"], triton_container=triton_container))
    stack.up()
    return stack.endpoints


def _check_dataset(data: Path) -> None:
    if not (data / "train").is_dir():
        raise DataError(f"{data} has no train/ folder",
                        "point --data at an ImageNet-layout root (train/<wnid>/*.JPEG, val/...)")


def _check_docker(pipeline_root: Path, data: Path | None) -> None:
    """Before anything starts: an engine, the seven phase images, and paths the images' uid can reach."""
    client = containers.docker_client()
    containers.require_images(client, containers.PHASES)
    client.close()
    for path, what in ((pipeline_root, "the pipeline root"), (data or state_dir(), "the dataset")):
        blocked = containers.unreachable_ancestor(path)
        if blocked is not None:
            raise ConfigError(f"the task containers (uid {containers.IMAGE_USER.split(':')[0]}) cannot reach "
                              f"{what} {path}: {blocked} is not searchable by other users",
                              "set VISIONNODE_STATE_DIR (and --data) to a directory outside it, e.g. "
                              "/var/tmp/visionnode, or chmod o+x it")


def demo_data_dir() -> Path:
    name = f"synth-{DEMO_DATA.classes}x{DEMO_DATA.train_per_class}-s{DEMO_DATA.seed}"
    return state_dir() / "demo-data" / name


def _pipeline_params(data: Path, config: LocalRunConfig) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    params: dict[str, Any] = dict(DEMO_PARAMS) if config.data is None else {}
    params.update({
        "data_uri": str(data),
        "shards_uri": f"s3://visionnode/shards/{data.name}",
        "checkpoint_uri": f"s3://visionnode/checkpoints/{stamp}",
    })
    params.update(config.params)
    return params


class _service_environment:
    """Export endpoints and S3 credentials for the component subprocesses; restore the environment after."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.values = service_env(endpoints, resolve_s3_credentials())
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


def _run_pipeline(params: dict[str, Any], pipeline_root: Path, runner: Any,
                  on_step: Callable[[str], None]) -> tuple[Path, Path]:
    """Run the DAG with kfp.local; its output goes to one log file per step,
    one line per step to `on_step`."""
    from kfp import local

    from visionnode.pipeline.pipeline import visionnode_pipeline

    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    # Beside the pipeline root, not in it: a new directory in the root is how the run directory is found.
    log_dir = pipeline_root.parent / f"{pipeline_root.name}-logs" / time.strftime("%Y%m%d-%H%M%S")
    # Expected here, so not worth a warning per task: kfp.local ignores resources/accelerators/display names.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=False)
    reporter = _StepReporter(lambda: _newest_dir(pipeline_root, before), on_step)
    with contextlib.closing(StepLog(log_dir, reporter)) as step_log, contextlib.redirect_stdout(step_log):
        visionnode_pipeline(**params)
    run_dir = _newest_dir(pipeline_root, before)
    if run_dir is None:
        raise ConfigError("kfp.local produced no run directory", f"look in {pipeline_root} and {log_dir}")
    failed = [t for t in TASK_ORDER if _task_dir(run_dir, t) is None
              or not (_task_dir(run_dir, t) / "executor_output.json").is_file()]
    if failed:
        raise VisionNodeError(f"the pipeline stopped at step {failed[0]!r}",
                              f"its log is {log_dir / f'{failed[0]}.log'}; outputs of the steps that ran are "
                              f"under {run_dir}")
    return run_dir, log_dir


def _newest_dir(pipeline_root: Path, before: set[Path]) -> Path | None:
    new_dirs = sorted(set(pipeline_root.iterdir()) - before)
    return new_dirs[-1] if new_dirs else None


# The figure a step's end line shows: (metric name, label, format) from the step's metrics artifact.
KEY_FIGURES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "validate": (("loss_first", "loss", "{:.3g}"), ("loss_last", "->", "{:.3g}")),
    "shard": (("images_written", "images", "{:,.0f}"),),
    "transfer": (("mb_per_s", "MB/s", "{:.1f}"),),
    "train": (("top1", "top-1 %", "{:.1f}"), ("images_per_second", "img/s", "{:.1f}")),
    "quantize": (("int8_top1", "INT8 top-1 %", "{:.1f}"), ("top1_agreement", "agreement %", "{:.1f}")),
    "deploy": (("load_s", "loaded in s", "{:.1f}"),),
    "benchmark": (("best_qps", "QPS", "{:.0f}"), ("best_p99_ms", "P99 ms", "{:.0f}")),
}


def key_figure(step: str, metrics: dict[str, Any]) -> str:
    parts = [f"{label} {fmt.format(metrics[name])}" for name, label, fmt in KEY_FIGURES.get(step, ())
             if isinstance(metrics.get(name), (int, float))]
    return "  ".join(parts)


class _StepReporter:
    """Turns step events into one line each: `train  done   212 s  top-1 % 27.1  log: ...`."""

    def __init__(self, run_dir: Callable[[], Path | None], on_step: Callable[[str], None]) -> None:
        self.run_dir = run_dir
        self.on_step = on_step
        self.started: dict[str, float] = {}

    def __call__(self, event: StepEvent) -> None:
        if event.kind == "started":
            self.started[event.step] = time.perf_counter()
            self.on_step(f"{event.step:<9} started")
            return
        seconds = time.perf_counter() - self.started.get(event.step, time.perf_counter())
        if event.kind == "retrying":
            self.on_step(f"{event.step:<9} failed  {seconds:5.0f} s  retrying ({event.status})  log: "
                         f"{event.log}")
            return
        word = "done" if event.status == "SUCCESS" else "FAILED"
        run_dir = self.run_dir()
        figure = key_figure(event.step, read_task_metrics(run_dir).get(event.step, {})) if run_dir else ""
        self.on_step(f"{event.step:<9} {word:<6} {seconds:5.0f} s  {figure}  log: {event.log}")


def _task_dir(run_dir: Path, task: str) -> Path | None:
    """kfp.local names task dirs after the component (`validate-op`) or the display name."""
    for candidate in (f"{task}-op", task):
        if (run_dir / candidate).is_dir():
            return run_dir / candidate
    return None


# Per task, another output artifact whose metadata the summary reads too.
EXTRA_METADATA = {"train": "model", "quantize": "gate_report", "deploy": "endpoint"}
QUALITY_TAGS = ("train_lr_plan", "train_quality_note", "int8_gate", "int8_gate_note")


def read_task_metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Task -> the metadata of its `metrics` output artifact (and of EXTRA_METADATA's), from kfp.local's
    executor_output.json."""
    metrics: dict[str, dict[str, Any]] = {}
    for task in TASK_ORDER:
        task_dir = _task_dir(run_dir, task)
        output = task_dir / "executor_output.json" if task_dir else None
        if output is None or not output.is_file():
            continue
        artifacts = json.loads(output.read_text()).get("artifacts", {})
        metrics[task] = artifacts.get("metrics", {}).get("artifacts", [{}])[0].get("metadata", {})
        extra = EXTRA_METADATA.get(task)
        if extra in artifacts:
            metrics[task].update(artifacts[extra]["artifacts"][0].get("metadata", {}))
    return metrics


def summarize(task_metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of a run, picked from each phase's metrics by name."""
    headline = {
        "validate_loss_first": ("validate", "loss_first"), "validate_loss_last": ("validate", "loss_last"),
        "suggested_lr": ("validate", "suggested_lr"), "train_peak_lr": ("train", "peak_lr"),
        "shard_images": ("shard", "images_written"), "transfer_MBps": ("transfer", "mb_per_s"),
        "train_loss": ("train", "final_loss"), "train_top1": ("train", "top1"),
        "train_top5": ("train", "top5"),
        "fp32_top1": ("quantize", "fp32_top1"), "int8_top1": ("quantize", "int8_top1"),
        "int8_agreement": ("quantize", "top1_agreement"), "int8_size_mb": ("quantize", "int8_size_mb"),
        "qps": ("benchmark", "best_qps"), "p99_ms": ("benchmark", "best_p99_ms"),
        "slo_met": ("benchmark", "slo_met"),
    }
    summary = {key: task_metrics.get(task, {}).get(name) for key, (task, name) in headline.items()
               if task_metrics.get(task, {}).get(name) is not None}
    if "slo_met" in summary:
        summary["slo_verdict"] = "met" if summary["slo_met"] else "missed"
    return summary | quality_summary(task_metrics)


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
