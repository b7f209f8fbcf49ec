# VisionNode-152 `shard` component: FFCV .beton shards with a checksummed manifest.json.
# Entrypoint = the component's CLI:  docker run visionnode/shard:<version> --help
# In a KFP pipeline the component's generated command replaces the entrypoint; the image only has to hold
# the package (it is the component's base_image, see components/common/adapters/kfp.py component_image()).
ARG BASE_IMAGE=visionnode/base:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="visionnode-shard" \
      org.opencontainers.image.description="VisionNode-152 shard: FFCV .beton shards with a checksummed manifest.json"
USER 10001:10001
ENTRYPOINT ["visionnode", "shard"]
CMD ["--help"]
