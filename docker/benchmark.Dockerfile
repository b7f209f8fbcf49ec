# VisionNode-152 `benchmark` component: Triton QPS and P50/P95/P99 over gRPC/HTTP, SLO verdict, HTML report.
# Entrypoint = the component's CLI:  docker run visionnode/benchmark:<version> --help
# In a KFP pipeline the component's generated command replaces the entrypoint; the image only has to hold
# the package (it is the component's base_image, see components/common/adapters/kfp.py component_image()).
ARG BASE_IMAGE=visionnode/base:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="visionnode-benchmark" \
      org.opencontainers.image.description="VisionNode-152 benchmark: Triton QPS and P50/P95/P99 over gRPC/HTTP, SLO verdict, HTML report"
USER 10001:10001
ENTRYPOINT ["visionnode", "benchmark"]
CMD ["--help"]
