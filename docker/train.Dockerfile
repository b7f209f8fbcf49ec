# VisionNode-152 `train` component: ResNet-152 training: mixed precision, checkpoints + resume in S3, DDP under torchrun.
# Entrypoint = the component's CLI:  docker run visionnode/train:<version> --help
# In a KFP pipeline the component's generated command replaces the entrypoint; the image only has to hold
# the package (it is the component's base_image, see components/common/adapters/kfp.py component_image()).
ARG BASE_IMAGE=visionnode/base:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="visionnode-train" \
      org.opencontainers.image.description="VisionNode-152 train: ResNet-152 training: mixed precision, checkpoints + resume in S3, DDP under torchrun"
# GPUs: the PyPI torch wheel bundles the CUDA runtime, cuDNN and NCCL (the nvidia-* wheels), so this image
# needs no CUDA base image: on a GPU node the NVIDIA container runtime mounts the host driver (libcuda) and
# torch uses it; on a CPU node the same image trains on the CPU. The variables below ask the NVIDIA runtime
# for the GPUs and the compute libraries. torchrun ships with torch:
#   torchrun --nproc-per-node=N -m visionnode.components.train --shards ... --out ...
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
ENTRYPOINT ["visionnode", "train"]
CMD ["--help"]
