"""`visionnode deploy`: thin Typer adapter onto deploy.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.common.adapters.declared import build, with_setting_options
from visionnode.components.deploy.config import DeployConfig, PromoteConfig, ServingConfig


@user_errors
@with_setting_options(DeployConfig, ServingConfig)
def deploy_command(
    model: Annotated[
        Path, typer.Option("--model", help="Quantize output dir (model.xml/.bin + model.json).")
    ],
    settings: dict[str, Any],
    json_path: JsonOption = None,
) -> None:
    """Stage the INT8 model on Triton as NAME_candidate beside the serving NAME (every replica), check its
    answers, register it in MLflow; then `visionnode benchmark --model NAME_candidate --champion NAME` and
    `visionnode promote` (or `reject`)."""
    from visionnode.components.deploy.deploy import (
        deploy,  # imports numpy, OpenVINO and tritonclient: only when the command runs
    )

    config = build(DeployConfig, settings, model_dir=model, serving=build(ServingConfig, settings))
    emit_result(deploy(config), json_path, "deploy")


EndpointOption = Annotated[Path, typer.Option(
    "--endpoint", help="The --json summary `visionnode deploy` wrote for the staged candidate.")]


@user_errors
@with_setting_options(PromoteConfig)
def promote_command(
    endpoint: EndpointOption,
    model: Annotated[Path, typer.Option("--model", help="The quantize output deploy staged.")],
    settings: dict[str, Any],
    json_path: JsonOption = None,
) -> None:
    """Serve the staged candidate under the production name on every replica (no request fails), unload the
    candidate, and point the MLflow alias `champion` at its registered version."""
    from visionnode.components.deploy.promote import promote

    emit_result(promote(build(PromoteConfig, settings, endpoint=endpoint, model_dir=model)), json_path,
                "promote")


@user_errors
@with_setting_options(PromoteConfig, skip=("load_timeout_s",))
def reject_command(
    endpoint: EndpointOption,
    settings: dict[str, Any],
    json_path: JsonOption = None,
) -> None:
    """Withdraw the staged candidate: unload it on every replica and delete its files (the champion serves
    on)."""
    from visionnode.components.deploy.promote import reject

    emit_result(reject(build(PromoteConfig, settings, endpoint=endpoint)), json_path, "reject")


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
    app.command("promote")(promote_command)
    app.command("reject")(reject_command)
