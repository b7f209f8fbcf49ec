"""`visionnode pipeline compile | submit | run --local`: thin Typer adapters over compile/submit/local_run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from visionnode.components.common.adapters.cli import (
    JsonOption,
    emit_result,
    err_console,
    out_console,
    user_errors,
)
from visionnode.components.common.errors import ConfigError

pipeline_app = typer.Typer(help="The KFP pipeline: compile it, submit it to a cluster, or run it locally.",
                           no_args_is_help=True)

ParamOption = Annotated[Optional[list[str]], typer.Option(
    "--param", "-p", help="Pipeline parameter as name=value; repeat for several (e.g. -p train_epochs=4).")]
ParamFileOption = Annotated[Optional[Path], typer.Option(
    help="YAML file of pipeline parameters (name: value); --param values override it.")]
NoCacheOption = Annotated[bool, typer.Option(
    "--no-cache", help="Run every step, reusing nothing from earlier runs (KFP's cache off for this run).")]


@pipeline_app.command("compile")
@user_errors
def compile_command(
    out: Annotated[Path, typer.Argument(help="Where to write the KFP IR YAML (e.g. visionnode-152.yaml).")],
) -> None:
    """Compile the seven-step DAG to KFP v2 IR YAML (reproducible: same code, same bytes)."""
    from visionnode.pipeline.compile import compile_pipeline

    out_console.print(f"pipeline written to {compile_pipeline(out)}")


@pipeline_app.command("submit")
@user_errors
def submit_command(
    host: Annotated[str, typer.Option(help="KFP API endpoint, e.g. http://localhost:8080.")],
    experiment: Annotated[str, typer.Option(help="KFP experiment to file the run under.")] = "visionnode",
    param: ParamOption = None,
    param_file: ParamFileOption = None,
    run_name: Annotated[Optional[str],
                        typer.Option(help="Run name (default: pipeline name + version).")] = None,
    namespace: Annotated[Optional[str],
                         typer.Option(help="Kubeflow profile namespace (multi-user KFP).")] = None,
    no_cache: NoCacheOption = False,
    json_path: JsonOption = None,
) -> None:
    """Upload the pipeline (a new version when it changed), create a run and print its URL."""
    from visionnode.pipeline.submit import SubmitConfig, submit_pipeline

    params = _params(param, param_file)
    result = submit_pipeline(SubmitConfig(host, experiment, params, run_name, namespace, no_cache))
    emit_result(result, json_path, "submitted")


@pipeline_app.command("run")
@user_errors
def run_command(
    local: Annotated[bool,
                     typer.Option("--local", help="Run every step on this machine with kfp.local.")] = False,
    data: Annotated[Optional[Path], typer.Option(
        help="ImageNet-layout root (train/, val/). Default: a generated 10-class demo dataset.")] = None,
    param: ParamOption = None,
    param_file: ParamFileOption = None,
    runner: Annotated[str, typer.Option(
        help="subprocess: every step in this Python environment; docker: every step in its own phase image "
             "(uid 10001, read-only root; build them with `make images`).")] = "subprocess",
    triton_container: Annotated[Optional[bool], typer.Option(
        "--triton-container/--no-triton-container",
        help="Serve from the visionnode/triton-openvino image (default: with --runner docker).")] = None,
    no_cache: NoCacheOption = False,
    json_path: JsonOption = None,
) -> None:
    """Run the whole DAG locally against the embedded S3, MLflow and Triton, then print a summary.

    Steps whose inputs match an earlier run's (same data fingerprint, same parameters, same code) are taken
    from KFP's cache, as a cluster does: a re-run after a failure resumes at the failed step."""
    from visionnode.pipeline.local_run import LocalRunConfig, run_local

    if not local:
        raise ConfigError("only local runs are started from here",
                          "add --local, or use `visionnode pipeline submit --host URL` for a cluster")
    container_triton = runner == "docker" if triton_container is None else triton_container
    result = run_local(LocalRunConfig(data=data, params=_params(param, param_file), runner=runner,
                                      triton_container=container_triton, cache=not no_cache,
                                      on_step=_print_step))
    headline = result.summary | {"wall_seconds": round(result.wall_seconds, 1),
                                 "cached_steps": ", ".join(result.cached) or "none",
                                 "run_dir": str(result.run_dir),
                                 "logs": str(result.log_dir), "mlflow_run": result.mlflow_run_url}
    # Every step's metrics are in the JSON summary (and MLflow); the terminal gets the headline figures.
    emit_result(headline, json_path, "pipeline run",
                summary=headline | {"steps": result.task_metrics, "cached": result.cached,
                                    "pipeline_run_id": result.run_id})


def _print_step(line: str) -> None:
    err_console.print(line, highlight=False, soft_wrap=True)


def _params(pairs: list[str] | None, param_file: Path | None) -> dict[str, Any]:
    from visionnode.pipeline.compile import compiled_spec, parameter_types, parse_params

    types = parameter_types(compiled_spec())
    from_file: dict[str, Any] = {}
    if param_file is not None:
        if not param_file.is_file():
            raise ConfigError(f"parameter file {param_file} does not exist", "check the path")
        try:
            loaded = yaml.safe_load(param_file.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{param_file} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
                              "write one `name: value` per line") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{param_file} is not a mapping of name: value",
                              "see manifests/ for an example")
        from_file = parse_params([f"{k}={v}" for k, v in loaded.items()], types)
    return from_file | parse_params(pairs or [], types)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
