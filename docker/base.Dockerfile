# VisionNode-152 shared base image: Python 3.11 in a venv (/opt/venv), the `visionnode` package and its
# dependencies (torch, FFCV, kfp, mlflow, boto3, openvino/nncf, tritonclient, the CPU tritonserver). Every
# component image and the Triton image are FROM this one.
#
# Layers, from the least to the most often changed:
#   1. the Python root: PYTHON_IMAGE (docker/rootfs.sh's Debian 12 image here, python:3.11-slim-bookworm in a
#      cluster build) + the shared libraries FFCV's extension links (installed only where missing);
#   2. the dependency closure, from the wheelhouse docker/build.sh serves on 127.0.0.1 (--network host):
#      no PyPI and no compiler in the build, and DEPS_DIGEST (the lock's sha256) rebuilds it when a pin changes;
#   3. the non-root user and the writable paths;
#   4. the project's own code (pip install --no-deps): the only layer a change under components/ rebuilds.
#
# Build with docker/build.sh (it makes the root image and the wheelhouse first and tags every image).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="visionnode-base" \
      org.opencontainers.image.description="VisionNode-152: ResNet-152 on ImageNet-1K as a Kubeflow pipeline" \
      org.opencontainers.image.licenses="Apache-2.0"
# What FFCV's compiled extension links (readelf: libturbojpeg.so.0, libopencv_core.so.406,
# libopencv_imgproc.so.406) and libpython for Triton's python-backend stub. docker/rootfs.sh's image has them;
# python:slim gets them from apt. Bookworm package versions move only for security fixes.
# hadolint ignore=DL3008
RUN missing=(); \
    for p in libturbojpeg0 libopencv-core406 libopencv-imgproc406; do \
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); \
    done; \
    if ((${#missing[@]})); then \
      apt-get update && apt-get install -y --no-install-recommends "${missing[@]}" && rm -rf /var/lib/apt/lists/*; \
    fi
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv

ARG WHEELHOUSE_URL=""
ARG DEPS_DIGEST=""
RUN if [ -z "${WHEELHOUSE_URL}" ]; then \
      echo "error: no WHEELHOUSE_URL: build the images with docker/build.sh, which serves the wheelhouse" >&2; exit 2; \
    fi \
    && echo "dependency lock ${DEPS_DIGEST}" \
    && pip install --no-index --no-deps --progress-bar off --find-links "${WHEELHOUSE_URL}/" \
         -r "${WHEELHOUSE_URL}/requirements.txt" \
    && python -c "import ffcv, cv2, torch, openvino, kfp, mlflow, tritonclient.grpc"

ENV HOME=/home/visionnode \
    VISIONNODE_STATE_DIR=/tmp/visionnode \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    XDG_CACHE_HOME=/tmp/cache
# A fixed numeric uid so that Kubernetes' runAsNonRoot can verify it. /gcs, /minio and /s3 are where the
# KFP v2 launcher puts input artifacts; older KFP backends do not mount them, so they must be writable here.
RUN groupadd --gid 10001 visionnode \
    && useradd --uid 10001 --gid 10001 --home-dir /home/visionnode --create-home --shell /usr/sbin/nologin visionnode \
    && mkdir -p /workspace /gcs /minio /s3 \
    && chown 10001:10001 /workspace /gcs /minio /s3

WORKDIR /opt/visionnode-src
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipeline ./pipeline
RUN pip install --no-index --no-deps --no-build-isolation --progress-bar off . \
    && rm -rf build ./*.egg-info \
    && visionnode --help >/dev/null

WORKDIR /workspace
USER 10001:10001
CMD ["visionnode", "--help"]
