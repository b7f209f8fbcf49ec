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
    replicas: Annotated[str, typer.Option(
        help="Every Triton server to load on: HOST:PORT[,HOST:PORT...], or a headless Service HOST:PORT "
             "whose DNS A records are the replicas (default: --triton-url alone).")] = DEFAULTS.replicas,
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
    """Stage the INT8 model on Triton as NAME_candidate beside the serving NAME (every replica), check its
    answers, register it in MLflow; then `visionnode benchmark --model NAME_candidate --champion NAME` and
    `visionnode promote` (or `reject`)."""
    from visionnode.components.deploy.deploy import (
        deploy,  # imports numpy, OpenVINO and tritonclient: only when the command runs
    )

    serving = ServingConfig(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=parse_int_list(preferred_batch, "--preferred-batch", "4,8,16"),
        max_queue_delay_us=max_queue_delay_us, queue_timeout_us=int(queue_timeout_ms * 1000),
        max_queue_size=max_queue_size, instances=instances)
    config = DeployConfig(
        model_dir=model, repository=repository, triton_http=triton_url, triton_grpc=grpc_url,
        replicas=replicas, model_name=name,
        version=version, shards=shards, check_images=check_images, load_timeout_s=load_timeout,
        serving=serving)
    emit_result(deploy(config), json_path, "deploy")


EndpointOption = Annotated[Path, typer.Option(
    "--endpoint", help="The --json summary `visionnode deploy` wrote for the staged candidate.")]
ReasonOption = Annotated[str, typer.Option(
    help="Why (e.g. the benchmark's decision); recorded with the outcome.")]
ReplicasOverride = Annotated[str, typer.Option(
    help="Every Triton server (as deploy's --replicas); default: those deploy loaded on.")]


@user_errors
def promote_command(
    endpoint: EndpointOption,
    model: Annotated[Path, typer.Option("--model", help="The quantize output deploy staged.")],
    reason: ReasonOption = "",
    replicas: ReplicasOverride = "",
    load_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for Triton to load the model.")
    ] = DEFAULTS.load_timeout_s,
    json_path: JsonOption = None,
) -> None:
    """Serve the staged candidate under the production name on every replica (no request fails), unload the
    candidate, and point the MLflow alias `champion` at its registered version."""
    from visionnode.components.deploy.promote import PromoteConfig, promote

    emit_result(promote(PromoteConfig(endpoint=endpoint, model_dir=model, reason=reason, replicas=replicas,
                                      load_timeout_s=load_timeout)), json_path, "promote")


@user_errors
def reject_command(
    endpoint: EndpointOption,
    reason: ReasonOption = "",
    replicas: ReplicasOverride = "",
    json_path: JsonOption = None,
) -> None:
    """Withdraw the staged candidate: unload it on every replica and delete its files (the champion serves
    on)."""
    from visionnode.components.deploy.promote import PromoteConfig, reject

    emit_result(reject(PromoteConfig(endpoint=endpoint, reason=reason, replicas=replicas)), json_path,
                "reject")


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
    app.command("promote")(promote_command)
    app.command("reject")(reject_command)
