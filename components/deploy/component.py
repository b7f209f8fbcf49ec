"""KFP v2 components: stage the INT8 model on Triton as a candidate, then promote it or withdraw it."""

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from visionnode.components.common.adapters.declared import with_setting_inputs
from visionnode.components.common.adapters.kfp import phase_component
from visionnode.components.deploy.config import DeployConfig


@phase_component("deploy")
@with_setting_inputs(DeployConfig)
def deploy_op(
    int8_model: Input[Model],
    endpoint: Output[Artifact],
    metrics: Output[Metrics],
):
    """Publish the INT8 model as a candidate beside the serving champion, load it on every Triton replica,
    check each replica's answers, register it in MLflow. The champion keeps serving untouched.

    Args:
        int8_model: Quantize output dir (OpenVINO IR model.xml/.bin + model.json InferenceMetadata).
        endpoint: Output artifact; its metadata holds model_name (the champion's), candidate_name,
            model_version, jpeg_model_name, http_url, grpc_url, replicas, triton_repository and
            registered_version; its file is the deploy summary (JSON) that promotion reads.
        metrics: model_version, load_s, replicas, top1_agreement (tensor and JPEG model vs local OpenVINO).
    """
    settings = dict(locals())
    from pathlib import Path

    from visionnode.components.common.adapters.declared import build
    from visionnode.components.common.jsonio import write_json
    from visionnode.components.deploy.deploy import DeployConfig, deploy

    result = deploy(build(DeployConfig, settings, model_dir=Path(int8_model.path)))
    write_json(endpoint.path, result)
    for key in ("model_name", "candidate_name", "model_version", "jpeg_model_name", "http_url", "grpc_url",
                "replicas", "triton_repository", "registered_version"):
        endpoint.metadata[key] = getattr(result, key)
    for key, value in result.metrics().items():
        metrics.log_metric(key, value)


@phase_component("deploy")
def promote_op(
    int8_model: Input[Model],
    endpoint: Input[Artifact],
    report: Output[Markdown],
    metrics: Output[Metrics],
    decision: str = "",
) -> NamedTuple("Promotion", [("outcome", str)]):
    """Make the benchmarked candidate the champion: serve it under the production model name on every
    replica (a new version; no request fails meanwhile), check every replica's answers, unload the candidate,
    and point the MLflow alias `champion` at its registered version.

    Args:
        int8_model: The quantize output deploy staged (the same files are served under the production name).
        endpoint: Deploy's output: the staged candidate (names, version, replicas, serving config).
        report: Output Markdown: the outcome, what serves now and where, the registered version.
        metrics: promoted (1), model_version, replicas, load_s.
        decision: Why it is promoted (benchmark's decision), recorded with the outcome.
    """
    from pathlib import Path

    from visionnode.components.deploy.promote import PromoteConfig, promote, record_outputs

    result = promote(PromoteConfig(endpoint=Path(endpoint.path), model_dir=Path(int8_model.path),
                                   reason=decision))
    return NamedTuple("Promotion", [("outcome", str)])(record_outputs(result, report.path, metrics))


@phase_component("deploy")
def reject_op(
    endpoint: Input[Artifact],
    report: Output[Markdown],
    metrics: Output[Metrics],
    decision: str = "",
) -> NamedTuple("Promotion", [("outcome", str)]):
    """Withdraw a candidate the benchmark refused: unload it on every replica and delete its files; the
    champion never stopped serving. The run reports `not promoted: <decision>`.

    Args:
        endpoint: Deploy's output: the staged candidate (names, version, replicas).
        report: Output Markdown: `not promoted: <reason>`, what still serves and where.
        metrics: promoted (0), model_version (the withdrawn one), replicas.
        decision: Why it is refused (benchmark's decision), recorded with the outcome.
    """
    from pathlib import Path

    from visionnode.components.deploy.promote import PromoteConfig, record_outputs, reject

    result = reject(PromoteConfig(endpoint=Path(endpoint.path), reason=decision))
    return NamedTuple("Promotion", [("outcome", str)])(record_outputs(result, report.path, metrics))
