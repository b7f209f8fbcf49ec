"""One S3 client and TransferManager, with the error translation and whole-object retries transfers use.

boto3's TransferManager (s3transfer) does parallel multipart upload and ranged parallel download on one
bounded thread pool, with botocore's adaptive retries from `storage.s3_client`. What it does not do is
here: errors a retry cannot fix become one-line user errors, and each object is retried as a whole
(backoff + full jitter), since a server restart can outlast botocore's per-request retries or leave a
multipart upload broken.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from visionnode.components.common.adapters.declared import setting
from visionnode.components.common.errors import ConfigError, ServiceError, VisionNodeError, one_line
from visionnode.components.common.numbers import MIB
from visionnode.components.common.storage.s3 import (
    MISSING_BUCKET_CODES,
    NOT_FOUND_CODES,
    S3Config,
    S3Location,
    resolve_s3_config,
    s3_client,
    s3_error_code,
)

DEFAULT_CONCURRENCY = 16          # parallel requests (multipart parts and objects together)
DEFAULT_PART_SIZE_MB = 16
MIN_PART_BYTES = 5 * MIB          # S3's smallest multipart part (except the last)
OBJECT_ATTEMPTS = 6               # whole-object tries on top of botocore's per-request retries
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 20.0
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
               "InvalidToken", "ExpiredToken"}


def concurrency_setting() -> Any:
    """The `concurrency` setting of every transfer (upload, place, fetch)."""
    return setting(DEFAULT_CONCURRENCY, "Parallel requests (objects, and the parts of large ones, together).")


def part_size_setting() -> Any:
    """The `part_size_mb` setting of every transfer; not a pipeline parameter (the store's copy picks it)."""
    return setting(DEFAULT_PART_SIZE_MB, "Multipart part size in MiB (at least 5: S3's smallest part).",
                   cli="--part-size", pipeline=False)


def check_transfer_settings(concurrency: int, part_size_mb: int) -> None:
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
    if part_size_mb * MIB < MIN_PART_BYTES:
        raise ConfigError(f"--part-size must be at least 5 MB (S3's minimum part), got {part_size_mb}")


class RetryCounter:
    """Counts botocore's request retries (from each response's RetryAttempts) and our object retries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        if n:
            with self._lock:
                self.count += n

    def on_after_call(self, parsed: dict | None = None, **_: Any) -> None:
        if isinstance(parsed, dict):
            self.add(int(parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0))


class S3Session:
    """One client, one TransferManager and the error translation every S3 call here goes through."""

    def __init__(self, concurrency: int, part_size_mb: int, config: S3Config | None = None) -> None:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        check_transfer_settings(concurrency, part_size_mb)
        base = config or resolve_s3_config()
        # Every upload here sends ChecksumSHA256, which the server verifies; signing the payload too would
        # hash each byte once more on both ends (botocore always does over plain http) for no extra safety.
        self.config = dataclasses.replace(base, max_pool_connections=max(base.max_pool_connections,
                                                                         concurrency + 4),
                                          payload_signing=False)
        self.endpoint = self.config.endpoint or "AWS S3"
        self.client = s3_client(self.config)
        # Preflight calls fail fast instead of backing off for a minute on a wrong endpoint.
        self.quick_client = s3_client(dataclasses.replace(self.config, max_attempts=2, connect_timeout_s=5.0))
        self.retries = RetryCounter()
        self.client.meta.events.register("after-call.s3", self.retries.on_after_call)
        self.part_size = part_size_mb * MIB
        self.transfer_config = TransferConfig(
            multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
            max_concurrency=concurrency, use_threads=True,
            # CRT would bypass our botocore retry config and checksum choice; keep the classic manager.
            preferred_transfer_client="classic")
        self.manager = create_transfer_manager(self.client, self.transfer_config)
        # botocore sends `Expect: 100-continue` with every part and waits for the answer: one extra round
        # trip per part (200 ms on a long link). Bucket and credentials are checked up front, so the early
        # refusal it could save is not worth that.
        from botocore.handlers import add_expect_header

        self.client.meta.events.unregister("before-call.s3", add_expect_header)
        self.hash_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vn-hash")

    def close(self) -> None:
        self.manager.shutdown()
        self.hash_pool.shutdown(cancel_futures=True)

    def translate(self, exc: Exception, what: str, bucket: str | None = None) -> VisionNodeError | None:
        """A user-facing error for failures that retrying cannot fix; None for transient ones."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, VisionNodeError):
            return exc
        if isinstance(exc, NoCredentialsError):
            return ServiceError(
                f"no S3 credentials for {self.endpoint}",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or run `visionnode stack up`")
        if isinstance(exc, ClientError):
            code = s3_error_code(exc)
            if code in _AUTH_CODES:
                return ServiceError(f"S3 at {self.endpoint} rejected the credentials while trying to {what} "
                                    f"({code})", "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
            if code in MISSING_BUCKET_CODES or (code == "404" and what.startswith("check bucket")):
                return ConfigError(f"bucket '{bucket}' does not exist on {self.endpoint}",
                                   "check the URI, or create it (`transfer upload --create-bucket`)")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status and status < 500 and code not in {"RequestTimeout", "SlowDown", "Throttling"}:
                return ServiceError(f"S3 at {self.endpoint} refused to {what}: {code} "
                                    f"{exc.response.get('Error', {}).get('Message', '')}".strip())
            return None
        if isinstance(exc, EndpointConnectionError) and what.startswith("check bucket"):
            return ServiceError(f"cannot connect to the S3 endpoint {self.endpoint}",
                                "check VISIONNODE_S3_ENDPOINT or start the stack with `visionnode stack up`")
        return None

    def check_bucket(self, bucket: str, create: bool) -> None:
        """Endpoint reachable, credentials accepted, bucket present (or created when asked)."""
        try:
            self.quick_client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            return
        except Exception as exc:  # noqa: BLE001 - translated or re-raised below
            error = self.translate(exc, f"check bucket {bucket}", bucket)
            if error is None:
                raise ServiceError(f"S3 at {self.endpoint} failed while checking bucket '{bucket}' "
                                   f"({type(exc).__name__})", "retry later") from None
            if not (create and isinstance(error, ConfigError)):
                raise error from None
        try:
            self.quick_client.create_bucket(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001
            raise (self.translate(exc, f"create bucket {bucket}", bucket)
                   or ServiceError(f"could not create bucket '{bucket}' ({type(exc).__name__})")) from None

    def with_object_retries(self, what: str, bucket: str, action: Callable[[], Any],
                            before_retry: Callable[[], None] | None = None) -> Any:
        """Run `action`; on transient failures retry it whole with exponential backoff and full jitter."""
        for attempt in range(1, OBJECT_ATTEMPTS + 1):
            try:
                return action()
            except Exception as exc:  # noqa: BLE001 - classified right here
                error = self.translate(exc, what, bucket)
                if error is not None:
                    raise error from None
                if attempt == OBJECT_ATTEMPTS:
                    raise ServiceError(f"gave up trying to {what} after {attempt} attempts "
                                       f"({one_line(exc)})",
                                       f"is {self.endpoint} up? re-run to resume") from None
                self.retries.add(1)
                time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt)))
                if before_retry is not None:
                    try:
                        before_retry()
                    except Exception:  # noqa: BLE001 - best effort; the next attempt reports real errors
                        pass
        raise AssertionError("unreachable")


def progress_subscriber(advance: Callable[[int], None]):
    from s3transfer.subscribers import BaseSubscriber

    class Progress(BaseSubscriber):
        def on_progress(self, future: Any, bytes_transferred: int, **_: Any) -> None:
            advance(bytes_transferred)

    return Progress()


def head_or_none(session: S3Session, loc: S3Location) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return session.client.head_object(Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if s3_error_code(exc) in NOT_FOUND_CODES:
            return None
        raise


class Rewindable:
    """Progress callback that can take back what a failed attempt reported, so the bar stays honest."""

    def __init__(self, advance: Callable[[int], None]) -> None:
        self.advance = advance
        self.total = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n
        self.advance(n)

    def rewind(self) -> None:
        with self._lock:
            n, self.total = self.total, 0
        if n:
            self.advance(-n)
