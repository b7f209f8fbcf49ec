# VisionNode-152 `deploy` component: Triton model repository (python backend running OpenVINO): upload, load, check.
# Entrypoint = the component's CLI:  docker run visionnode/deploy:<version> --help
# In a KFP pipeline the component's generated command replaces the entrypoint; the image only has to hold
# the package (it is the component's base_image, see components/common/adapters/kfp.py component_image()).
ARG BASE_IMAGE=visionnode/base:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="visionnode-deploy" \
      org.opencontainers.image.description="VisionNode-152 deploy: Triton model repository (python backend running OpenVINO): upload, load, check"
USER 10001:10001
ENTRYPOINT ["visionnode", "deploy"]
CMD ["--help"]
