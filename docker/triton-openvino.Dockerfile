# syntax=docker/dockerfile:1
# Triton Inference Server for VisionNode-152: NVIDIA's release image (HTTP 8000, gRPC 8001, metrics 8002; its
# backends include python and openvino) plus the Python packages our python-backend model.py imports
# (numpy, openvino, PIL), so the models `visionnode deploy` writes load as they do in the embedded stack.
#
# 24.10 is Triton 2.51, the server version the embedded stack (nvidia-pytriton 0.7.0) is tested against;
# its Python is 3.10 (Ubuntu 22.04).
#   docker build -f docker/triton-openvino.Dockerfile -t visionnode/triton-openvino:<version> .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Same OpenVINO as the base image that runs `quantize` (docker/build.sh passes one value to both): an IR is
# served by the runtime version that wrote it. numpy<2 like the project (pyproject.toml).
ARG OPENVINO_VERSION=2025.4.1
ARG NUMPY_VERSION=1.26.4
ARG PILLOW_VERSION=11.3.0
RUN python3 -m pip install --no-cache-dir \
        "openvino==${OPENVINO_VERSION}" "numpy==${NUMPY_VERSION}" "pillow==${PILLOW_VERSION}" \
    && python3 -c "import numpy, openvino, PIL; print('openvino', openvino.__version__)"
LABEL org.opencontainers.image.title="visionnode-triton-openvino" \
      org.opencontainers.image.description="Triton Inference Server with OpenVINO for the python backend"
# NVIDIA's image already has the unprivileged user `triton-server` (uid 1000); a numeric USER lets
# Kubernetes verify runAsNonRoot. Writable paths at run time: /tmp (S3 model copies) and /dev/shm
# (python-backend shared memory); the manifests mount both.
USER 1000:1000
ENV HOME=/tmp
WORKDIR /opt/tritonserver
# NVIDIA's entrypoint (it prints the banner, then runs the command) stays; Kubernetes sets the full command.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit"]
