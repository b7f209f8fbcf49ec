# VisionNode-152 `validate` component: smoke-train on a data subset (loss must fall) and the ResNet-152 integrity check.
# Entrypoint = the component's CLI:  docker run visionnode/validate:<version> --help
# In a KFP pipeline the component's generated command replaces the entrypoint; the image only has to hold
# the package (it is the component's base_image, see components/common/adapters/kfp.py component_image()).
ARG BASE_IMAGE=visionnode/base:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="visionnode-validate" \
      org.opencontainers.image.description="VisionNode-152 validate: smoke-train on a data subset (loss must fall) and the ResNet-152 integrity check"
USER 10001:10001
ENTRYPOINT ["visionnode", "validate"]
CMD ["--help"]
