# VisionNode-152 `transfer` component: parallel, sha256-verified, resumable shard upload/fetch to S3.
# Entrypoint = the component's CLI:  docker run visionnode/transfer:<version> --help
# In a KFP pipeline the component's generated command replaces the entrypoint; the image only has to hold
# the package (it is the component's base_image, see components/common/adapters/kfp.py component_image()).
ARG BASE_IMAGE=visionnode/base:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="visionnode-transfer" \
      org.opencontainers.image.description="VisionNode-152 transfer: parallel, sha256-verified, resumable shard upload/fetch to S3"
USER 10001:10001
ENTRYPOINT ["visionnode", "transfer"]
CMD ["--help"]
