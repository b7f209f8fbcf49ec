"""The one exception type users see: what went wrong and what to do about it."""

from __future__ import annotations


class VisionNodeError(Exception):
    """A user-facing failure. The CLI prints it as one line (no traceback) and exits non-zero.

    `problem` names what is wrong (with the offending path/URI/value); `hint` says what to do.
    """

    def __init__(self, problem: str, hint: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.problem} ({self.hint})" if self.hint else self.problem


class ConfigError(VisionNodeError):
    """A flag, parameter or setting has a value that cannot work."""


class DataError(VisionNodeError):
    """Input data is missing, malformed or inconsistent."""


class ServiceError(VisionNodeError):
    """An external or embedded service (S3, MLflow, Triton) is unreachable or refused a request."""


class IntegrityError(VisionNodeError):
    """A checksum or size does not match what a manifest promises."""


class QualityGateError(VisionNodeError):
    """A phase ran but its result fails a gate (loss did not fall, accuracy dropped too far, SLO missed)."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: message` on one line, cut to `limit` characters (tritonclient's `message()` preferred)."""
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    text = " ".join(str(message or exc).split())
    return f"{type(exc).__name__}: {text}"[:limit] if text else type(exc).__name__
