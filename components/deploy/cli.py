"""`visionnode deploy`: thin Typer adapter onto deploy.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..common.cli import JsonOption, emit_result, user_errors
from .deploy import DEFAULT_MODEL_NAME, DeployConfig, deploy
from .repository import ServingConfig


@user_errors
def deploy_command(
    model: Annotated[Path, typer.Option("--model", help="Quantize output dir (model.xml/.bin + model.json).")],
    repository: Annotated[str, typer.Option(
        help="Also publish the repository here: s3://bucket/prefix or a dir. The running Triton's own "
             "repository (from settings) is always written.")] = "",
    triton_url: Annotated[str, typer.Option("--triton-url", help="Triton HTTP HOST:PORT (default: settings).")] = "",
    grpc_url: Annotated[str, typer.Option("--grpc-url", help="Triton gRPC HOST:PORT (default: settings).")] = "",
    name: Annotated[str, typer.Option(help="Triton model name (the JPEG front end is NAME_jpeg).")] = DEFAULT_MODEL_NAME,
    version: Annotated[Optional[int], typer.Option(help="Model version (default: newest + 1).")] = None,
    shards: Annotated[Optional[str], typer.Option(
        help="Val shards (dir or s3://) for the answer check; default: seeded random images.")] = None,
    check_images: Annotated[int, typer.Option(help="Images compared between Triton and local OpenVINO.")] = 16,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size.")] = 16,
    preferred_batch: Annotated[str, typer.Option(help="Dynamic batching preferred sizes, comma separated.")] = "4,8,16",
    max_queue_delay_us: Annotated[int, typer.Option(help="Dynamic batching max queue delay (µs).")] = 3000,
    queue_timeout_ms: Annotated[float, typer.Option(help="Queued requests older than this are rejected.")] = 2000.0,
    max_queue_size: Annotated[int, typer.Option(help="Requests queued beyond this are rejected at once.")] = 64,
    instances: Annotated[int, typer.Option(help="Model instances (KIND_CPU); one alone stalls some requests "
                                                "~500 ms in Triton's batcher.")] = ServingConfig.instances,
    load_timeout: Annotated[float, typer.Option(help="Seconds to wait for Triton to load the model.")] = 600.0,
    json_path: JsonOption = None,
) -> None:
    """Serve the INT8 model on Triton (python backend + OpenVINO), load it without downtime, check answers."""
    serving = ServingConfig(max_batch_size=max_batch_size, preferred_batch_sizes=_ints(preferred_batch),
                            max_queue_delay_us=max_queue_delay_us, queue_timeout_us=int(queue_timeout_ms * 1000),
                            max_queue_size=max_queue_size, instances=instances)
    config = DeployConfig(model_dir=model, repository=repository, triton_http=triton_url, triton_grpc=grpc_url,
                          model_name=name, version=version, shards=shards, check_images=check_images,
                          load_timeout_s=load_timeout, serving=serving)
    emit_result(deploy(config), json_path, "deploy")


def _ints(text: str) -> list[int]:
    from ..common.errors import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"'{text}' is not a comma-separated list of integers", "e.g. 4,8,16") from None


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
