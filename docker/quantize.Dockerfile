# VisionNode-152 `quantize` component: ONNX + OpenVINO IR export and NNCF INT8 quantization with an accuracy gate.
# Entrypoint = the component's CLI:  docker run visionnode/quantize:<version> --help
# In a KFP pipeline the component's generated command replaces the entrypoint; the image only has to hold
# the package (it is the component's base_image, see components/common/adapters/kfp.py component_image()).
ARG BASE_IMAGE=visionnode/base:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="visionnode-quantize" \
      org.opencontainers.image.description="VisionNode-152 quantize: ONNX + OpenVINO IR export and NNCF INT8 quantization with an accuracy gate"
USER 10001:10001
ENTRYPOINT ["visionnode", "quantize"]
CMD ["--help"]
