# Triton Inference Server for VisionNode-152, built offline from the shared base: the CPU `tritonserver` 2.51
# that nvidia-pytriton ships (python backend) with OpenVINO, numpy and PIL already in the base's venv, so the
# models `visionnode deploy` writes load exactly as in the embedded stack. All layers but the last metadata
# are the base's. Entrypoint: `visionnode stack triton`, which runs tritonserver in the foreground as PID 1
# (it handles SIGTERM), listening on 127.0.0.1 unless --address is given:
#   docker run --network host -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY visionnode/triton-openvino:<version> \
#     --repository s3://127.0.0.1:8333/visionnode/triton-models
# Writable paths at run time: /tmp (backends, S3 model copies) and /dev/shm (python-backend shared memory).
# GPU clusters can use NVIDIA's image (nvcr.io/nvidia/tritonserver:24.10-py3, Triton 2.51) with the same
# OpenVINO pip-installed; see docker/README.md.
ARG BASE_IMAGE=visionnode/base:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="visionnode-triton-openvino" \
      org.opencontainers.image.description="Triton Inference Server (CPU, python backend) with OpenVINO for VisionNode-152"
USER 10001:10001
EXPOSE 8000 8001 8002
ENTRYPOINT ["visionnode", "stack", "triton"]
CMD ["--help"]
