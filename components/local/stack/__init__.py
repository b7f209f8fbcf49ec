"""The embedded local stack (SeaweedFS S3, MLflow server, Triton) behind `visionnode stack up|status|down`."""

from visionnode.components.local.stack.stack import LocalStack, ServiceStatus, StackConfig

__all__ = ["LocalStack", "ServiceStatus", "StackConfig"]
