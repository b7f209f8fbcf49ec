"""The KFP v2 DAG: fingerprint -> validate -> shard -> transfer -> train -> quantize -> deploy -> benchmark ->
promote | reject, all inside an exit handler whose final step ends the run's MLflow parent run with its real
status.

Each task is one phase's component (components/<phase>/component.py); data flows only through typed
artifacts and parameters. The pipeline's parameters are the phases' declared settings (`<phase>_<setting>`,
pipeline/params.py), each handed to the component input of the setting's name. The raw data is read where
it lies (`data_uri`), never imported as an artifact (KFP's launcher would download all of it into every pod
that takes it). deploy stages the new model as a candidate beside the serving champion; benchmark measures it
and decides; `dsl.If` on its decision promotes it, `dsl.Else` withdraws it. Cluster-only settings (secrets,
resources, retries) are attached here; kfp.local accepts and ignores them, so the same definition runs in a
cluster and on one machine.

Caching (docs/caching.md): the first step fingerprints the data and is never cached; validate, shard,
transfer, train and quantize are, keyed by that fingerprint and their settings (no input differs per run: the
run id reaches every task as an environment variable from its pod's `pipeline/runid` label); deploy,
benchmark, promote, reject and finish act on live services and are never cached.
"""

import inspect
from collections.abc import Callable
from typing import Any

from kfp import dsl, kubernetes

from visionnode.components.benchmark.component import benchmark_op
from visionnode.components.common.tracking import PIPELINE_RUN_ENV
from visionnode.components.deploy.component import deploy_op, promote_op, reject_op
from visionnode.components.quantize.component import quantize_op
from visionnode.components.shard.component import shard_op
from visionnode.components.train.component import train_op
from visionnode.components.transfer.component import transfer_op
from visionnode.components.validate.component import validate_op
from visionnode.pipeline.compile import dag_tasks, fed_parameter
from visionnode.pipeline.fingerprint import fingerprint_op
from visionnode.pipeline.finish import finish_op
from visionnode.pipeline.params import PHASE_CONFIGS, phase_parameters, phase_values

PIPELINE_NAME = "visionnode-152"
S3_SECRET = "visionnode-s3"              # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, VISIONNODE_S3_ENDPOINT
MLFLOW_SECRET = "visionnode-mlflow"      # MLFLOW_TRACKING_URI
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "VISIONNODE_S3_ENDPOINT")
# KFP's API server labels every pod of a run with its id (backend/src/apiserver/template/v2_template.go:
# SetPodMetadataLabels(pipeline/runid, RunID)); the downward API hands it to the task as an environment
# variable, which is no part of the cache key (backend/src/v2/driver/cache.go: inputs, outputs, image,
# command, PVCs).
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"


def _with_services(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    """Credentials from Kubernetes Secrets (never in the pipeline spec), the run id, resource requests."""
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET,
                                 secret_key_to_env={k: k for k in S3_SECRET_KEYS})
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET,
                                 secret_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    kubernetes.use_field_path_as_env(task, env_name=PIPELINE_RUN_ENV, field_path=RUN_ID_FIELD)
    task.set_cpu_request(cpu).set_memory_request(memory)
    return task


def _cached(task: dsl.PipelineTask, cached: bool) -> dsl.PipelineTask:
    """Stated for every task: a step with side effects on a live service must never be served from cache."""
    return task.set_caching_options(enable_caching=cached)


def _retry(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """For steps that talk to services over the network: transient faults get exponential backoff."""
    return task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0,
                          backoff_max_duration="600s")


DESCRIPTION = ("ResNet-152 on ImageNet-1K: fingerprint, validate, shard (FFCV), transfer (S3), train (DDP, "
               "AMP), quantize (OpenVINO INT8), deploy (Triton), benchmark (QPS, P99, SLO), promote or "
               "reject.")


def _pipeline(data_uri: str, params: dict[str, Any]) -> None:
    """The whole pipeline. A parameter's name starts with the phase it configures (`data_uri` feeds several).
    Empty `deploy_repository`/`deploy_triton_*` mean "from the components' settings".

    `shard_store_uri` is the base of the shard store: shards go to `<it>/<data digest>/<settings digest>/`.
    `train_checkpoint_uri` empty gives each run its own (`s3://<shards bucket>/checkpoints/<run id>`).
    """

    def settings(phase: str) -> dict[str, Any]:
        return phase_values(phase, params)

    # The final step runs after the others whatever they did: it ends the MLflow parent run with the real
    # status.
    finish = finish_op()
    _cached(_with_services(finish, cpu="1", memory="1G"), False).set_display_name("finish")
    with dsl.ExitHandler(finish, name="run"):
        fingerprint = fingerprint_op(data_uri=data_uri)
        _cached(_with_services(fingerprint, cpu="1", memory="1G"), False)  # it alone sees the data change
        data_digest = fingerprint.outputs["data_digest"]

        validate = validate_op(data_uri=data_uri, data_digest=data_digest, **settings("validate"))
        _cached(_with_services(validate, cpu="2", memory="8G"), True)

        shard = shard_op(data_uri=data_uri, data_digest=data_digest, **settings("shard")).after(validate)
        _cached(_with_services(shard, cpu="4", memory="8G"), True)

        transfer = transfer_op(shards=shard.outputs["shards"], data_digest=data_digest,
                               **settings("transfer"))
        _cached(_retry(_with_services(transfer, cpu="2", memory="4G")), True)

        train = train_op(remote_shards=transfer.outputs["remote_shards"], data_digest=data_digest,
                         suggested_lr=validate.outputs["suggested_lr"], **settings("train"))
        _with_services(train, cpu="8",
                       memory="32G").set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        # A preempted train task resumes its own newest checkpoint (same run id), so a retry is safe.
        _cached(_retry(train), True)

        quantize = quantize_op(model=train.outputs["model"], remote_shards=transfer.outputs["remote_shards"],
                               **settings("quantize"))
        _cached(_with_services(quantize, cpu="4", memory="8G"), True)

        deploy = deploy_op(int8_model=quantize.outputs["int8_model"], **settings("deploy"))
        _cached(_retry(_with_services(deploy, cpu="1", memory="2G")), False)  # stages a model on live servers

        benchmark = benchmark_op(endpoint=deploy.outputs["endpoint"],
                                 remote_shards=transfer.outputs["remote_shards"], **settings("benchmark"))
        _cached(_with_services(benchmark, cpu="2", memory="2G"), False)  # measures the servers as they are

        # Champion/challenger: the candidate serves under the production name only if benchmark says so.
        with dsl.If(benchmark.outputs["promote"] == True, name="candidate-proved-itself"):  # noqa: E712
            promote = promote_op(int8_model=quantize.outputs["int8_model"],
                                 endpoint=deploy.outputs["endpoint"], decision=benchmark.outputs["decision"])
            _cached(_retry(_with_services(promote, cpu="1", memory="2G")), False)
        with dsl.Else(name="candidate-refused"):
            reject = reject_op(endpoint=deploy.outputs["endpoint"], decision=benchmark.outputs["decision"])
            _cached(_retry(_with_services(reject, cpu="1", memory="1G")), False)

        for task, name in ((fingerprint, "fingerprint"), (validate, "validate"), (shard, "shard"),
                           (transfer, "transfer"), (train, "train"), (quantize, "quantize"),
                           (deploy, "deploy"), (benchmark, "benchmark"), (promote, "promote"),
                           (reject, "reject")):
            task.set_display_name(name)


def with_declared_parameters(dag: Callable[[str, dict[str, Any]], None],
                             phases: dict[str, type] = PHASE_CONFIGS) -> Callable[..., None]:
    """The pipeline function KFP sees: `data_uri` and one parameter per phase setting the pipeline sets
    (`<phase>_<setting>`, with the setting's type and default), in DAG order; `dag` gets them as one dict.
    KFP calls a pipeline function with its parameters' channels positionally, in signature order."""
    parameters = [inspect.Parameter("data_uri", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)]
    for phase, config in phases.items():
        parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=spec.default,
                                         annotation=spec.kind)
                       for name, spec in phase_parameters(phase, config).items()]
    names = [p.name for p in parameters]

    def pipeline(*args: Any, **kwargs: Any) -> None:
        values = dict(zip(names, args)) | kwargs
        dag(values.pop("data_uri"), values)

    pipeline.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    pipeline.__doc__ = dag.__doc__
    pipeline.__name__ = pipeline.__qualname__ = dag.__name__
    return pipeline


def with_parameter_descriptions(pipeline: Callable[..., None]) -> Callable[..., None]:
    """Append an `Args:` section to the pipeline's docstring, which KFP turns into the run form's parameter
    descriptions: each parameter is described by the component inputs it feeds, as the DAG wires it (a
    parameter feeding several phases says so per phase). The help text stays in one place, the component."""
    from google.protobuf import json_format

    spec = json_format.MessageToDict(dsl.pipeline(name=PIPELINE_NAME)(pipeline).pipeline_spec)
    fed: dict[str, dict[str, str]] = {}
    for name, task in dag_tasks(spec).items():
        component = spec["components"][task["componentRef"]["name"]]["inputDefinitions"]["parameters"]
        for input_name, source in task.get("inputs", {}).get("parameters", {}).items():
            parameter = fed_parameter(source)
            if parameter and component[input_name].get("description"):
                phase = name.removesuffix("-op")
                fed.setdefault(parameter, {})[phase] = " ".join(component[input_name]["description"].split())
    missing = [name for name in inspect.signature(pipeline).parameters if name not in fed]
    if missing:
        raise TypeError(f"pipeline parameters without a described component input: {missing}")
    lines = [f"    {name}: {_joined(fed[name])}" for name in inspect.signature(pipeline).parameters]
    pipeline.__doc__ = f"{inspect.cleandoc(pipeline.__doc__ or '')}\n\nArgs:\n" + "\n".join(lines) + "\n"
    return pipeline


def _joined(by_phase: dict[str, str]) -> str:
    texts = set(by_phase.values())
    if len(texts) == 1:
        return texts.pop()
    return " ".join(f"[{phase}] {text}" for phase, text in sorted(by_phase.items()))  # the same every time


visionnode_pipeline = dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(
    with_parameter_descriptions(with_declared_parameters(_pipeline)))
