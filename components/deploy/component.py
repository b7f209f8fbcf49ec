"""KFP v2 component: serve the INT8 model on Triton and hand on the endpoint."""

from kfp.dsl import Artifact, Input, Metrics, Model, Output

from visionnode.components.common.adapters.kfp import phase_component


@phase_component("deploy")
def deploy_op(
    int8_model: Input[Model],
    endpoint: Output[Artifact],
    metrics: Output[Metrics],
    repository: str = "",
    triton_http: str = "",
    triton_grpc: str = "",
    model_name: str = "resnet152_int8",
    instances: int = 2,
):
    """Publish the INT8 model as a Triton model repository, load it (no downtime), check Triton's answers.

    Args:
        int8_model: Quantize output dir (OpenVINO IR model.xml/.bin + model.json InferenceMetadata).
        endpoint: Output artifact; its metadata holds model_name, model_version, jpeg_model_name, http_url,
            grpc_url and triton_repository; its file is the deploy summary (JSON).
        metrics: model_version, load_s, top1_agreement (tensor and JPEG model vs local OpenVINO).
        repository: Also publish the repository here (s3://bucket/prefix or a dir); "" = only the
            repository the running Triton reads (from settings).
        triton_http: Triton HTTP host:port; "" = from settings (env / stack.json).
        triton_grpc: Triton gRPC host:port; "" = from settings.
        model_name: Triton model name; the encoded-image front end is served as `<model_name>_jpeg`.
        instances: Triton model instances (KIND_CPU);
            one alone lets Triton's batcher stall some requests 500 ms.
    """
    from pathlib import Path

    from visionnode.components.common.jsonio import write_json
    from visionnode.components.deploy.deploy import DeployConfig, deploy
    from visionnode.components.deploy.repository import ServingConfig

    result = deploy(DeployConfig(model_dir=Path(int8_model.path), repository=repository,
                                 triton_http=triton_http,
                                 triton_grpc=triton_grpc, model_name=model_name,
                                 serving=ServingConfig(instances=instances)))
    write_json(endpoint.path, result)
    for key in ("model_name", "model_version", "jpeg_model_name", "http_url", "grpc_url",
                "triton_repository"):
        endpoint.metadata[key] = getattr(result, key)
    for key, value in result.metrics().items():
        metrics.log_metric(key, value)
