"""`visionnode deploy`: thin Typer adapter onto deploy.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from visionnode.components.common.adapters.cli import JsonOption, emit_result, user_errors
from visionnode.components.common.numbers import parse_int_list
from visionnode.components.deploy.config import DEFAULTS, DeployConfig, ServingConfig

SERVING = DEFAULTS.serving


@user_errors
def deploy_command(
    model: Annotated[
        Path, typer.Option("--model", help="Quantize output dir (model.xml/.bin + model.json).")
    ],
    repository: Annotated[str, typer.Option(
        help="Also publish the repository here: s3://bucket/prefix or a dir. The running Triton's own "
             "repository (from settings) is always written.")] = DEFAULTS.repository,
    triton_url: Annotated[
        str, typer.Option("--triton-url", help="Triton HTTP HOST:PORT (default: settings).")
    ] = DEFAULTS.triton_http,
    grpc_url: Annotated[
        str, typer.Option("--grpc-url", help="Triton gRPC HOST:PORT (default: settings).")
    ] = DEFAULTS.triton_grpc,
    name: Annotated[
        str, typer.Option(help="Triton model name (the JPEG front end is NAME_jpeg).")
    ] = DEFAULTS.model_name,
    version: Annotated[
        Optional[int], typer.Option(help="Model version (default: newest + 1).")
    ] = DEFAULTS.version,
    shards: Annotated[Optional[str], typer.Option(
        help="Val shards (dir or s3://) for the answer check; default: seeded random images.")
    ] = DEFAULTS.shards,
    check_images: Annotated[
        int, typer.Option(help="Images compared between Triton and local OpenVINO.")
    ] = DEFAULTS.check_images,
    max_batch_size: Annotated[
        int, typer.Option(help="Triton max_batch_size.")
    ] = SERVING.max_batch_size,
    preferred_batch: Annotated[
        str, typer.Option(help="Dynamic batching preferred sizes, comma separated.")
    ] = ",".join(map(str, SERVING.preferred_batch_sizes)),
    max_queue_delay_us: Annotated[
        int, typer.Option(help="Dynamic batching max queue delay (µs).")
    ] = SERVING.max_queue_delay_us,
    queue_timeout_ms: Annotated[
        float, typer.Option(help="Queued requests older than this are rejected.")
    ] = SERVING.queue_timeout_us / 1000,
    max_queue_size: Annotated[
        int, typer.Option(help="Requests queued beyond this are rejected at once.")
    ] = SERVING.max_queue_size,
    instances: Annotated[int, typer.Option(
        help="Model instances (KIND_CPU); one alone stalls some requests ~500 ms in Triton's batcher.")
    ] = SERVING.instances,
    load_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for Triton to load the model.")
    ] = DEFAULTS.load_timeout_s,
    json_path: JsonOption = None,
) -> None:
    """Serve the INT8 model on Triton (python backend + OpenVINO), load it without downtime, check answers."""
    from visionnode.components.deploy.deploy import (
        deploy,  # imports numpy, OpenVINO and tritonclient: only when the command runs
    )

    serving = ServingConfig(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=parse_int_list(preferred_batch, "--preferred-batch", "4,8,16"),
        max_queue_delay_us=max_queue_delay_us, queue_timeout_us=int(queue_timeout_ms * 1000),
        max_queue_size=max_queue_size, instances=instances)
    config = DeployConfig(
        model_dir=model, repository=repository, triton_http=triton_url, triton_grpc=grpc_url, model_name=name,
        version=version, shards=shards, check_images=check_images, load_timeout_s=load_timeout,
        serving=serving)
    emit_result(deploy(config), json_path, "deploy")


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
