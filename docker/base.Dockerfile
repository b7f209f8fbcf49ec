# syntax=docker/dockerfile:1
# VisionNode-152 shared base image: Python 3.11, the `visionnode` package and its dependencies (torch, FFCV,
# kfp, mlflow, boto3, openvino/nncf, tritonclient). Every component image is FROM this one.
#
# builder: Debian's -dev packages FFCV compiles against, then wheels for the project and its whole
#          dependency closure (FFCV is an sdist: this is where it is compiled).
# runtime: python:slim + the shared libraries FFCV's extension links (libturbojpeg, opencv core/imgproc)
#          and the wheels, installed from the builder through a bind mount (no wheel copies in a layer).
#
# Build from the repository root:  docker build -f docker/base.Dockerfile -t visionnode/base:<version> .
# (docker/build.sh does this and tags every image with the version from pyproject.toml.)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian bookworm is a stable release: its package versions only move for security fixes, which we want.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libturbojpeg0-dev libopencv-dev pkg-config build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The Triton image serves the IR that quantize writes: both pin the same OpenVINO (docker/build.sh passes it).
ARG OPENVINO_VERSION=2025.4.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipeline ./pipeline
# opencv-python (an FFCV requirement) needs X11/GL libraries just to import cv2; the headless build of the
# same version has the same cv2 API without them. The wheel dir is a complete, resolved closure, so the
# runtime stage installs it with --no-deps.
RUN echo "openvino==${OPENVINO_VERSION}" > /tmp/constraints.txt \
    && pip wheel --wheel-dir /wheels --constraint /tmp/constraints.txt . \
    && cv_version="$(find /wheels -name 'opencv_python-*.whl' -printf '%f\n' | cut -d- -f2)" \
    && test -n "${cv_version}" \
    && rm /wheels/opencv_python-*.whl \
    && pip wheel --no-deps --wheel-dir /wheels "opencv-python-headless==${cv_version}"

FROM ${PYTHON_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="visionnode-base" \
      org.opencontainers.image.description="VisionNode-152: ResNet-152 on ImageNet-1K as a Kubeflow pipeline" \
      org.opencontainers.image.licenses="Apache-2.0"
# Runtime libraries only: what FFCV's compiled extension links (checked with readelf: libturbojpeg.so.0,
# libopencv_core.so.406, libopencv_imgproc.so.406). Bookworm package versions move only for security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libturbojpeg0 libopencv-core406 libopencv-imgproc406 \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/visionnode \
    VISIONNODE_STATE_DIR=/tmp/visionnode \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    XDG_CACHE_HOME=/tmp/cache
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/*.whl \
    && python -c "import ffcv, cv2, torch, visionnode.pipeline.cli"
# A fixed numeric uid so that Kubernetes' runAsNonRoot can verify it. /gcs, /minio and /s3 are where the
# KFP v2 launcher puts input artifacts; older KFP backends do not mount them, so they must be writable here.
RUN groupadd --gid 10001 visionnode \
    && useradd --uid 10001 --gid 10001 --home-dir /home/visionnode --create-home --shell /usr/sbin/nologin visionnode \
    && mkdir -p /workspace /gcs /minio /s3 \
    && chown 10001:10001 /workspace /gcs /minio /s3
WORKDIR /workspace
USER 10001:10001
CMD ["visionnode", "--help"]
