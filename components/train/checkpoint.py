"""Training checkpoints: one plain dict (as torchvision's reference script), stored locally or in S3.

A checkpoint holds model, optimizer, scheduler and scaler state, epoch, step, batches done in the epoch,
RNG states (torch, numpy, python: as tensors and lists, so `torch.load(weights_only=True)` reads them),
the config and the class index. Writes are atomic: locally a temp file renamed into place; in S3 the object
is uploaded whole (a PUT is atomic per object) and the small `latest.json` pointer is written last, so a
reader never follows a pointer to a partial checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionnode.components.common.errors import DataError, IntegrityError, ServiceError
from visionnode.components.common.jsonio import atomic_path, atomic_write_text
from visionnode.components.common.storage.s3 import (
    MISSING_BUCKET_CODES,
    NOT_FOUND_CODES,
    is_s3_uri,
    parse_s3_uri,
    s3_client,
    s3_error_code,
)

CHECKPOINT_FORMAT = "visionnode.checkpoint/v1"
LATEST_FILE = "latest.json"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "epoch", "step", "batch_in_epoch")


def checkpoint_name(epoch: int, step: int) -> str:
    return f"checkpoint-e{epoch:04d}-s{step:09d}.pt"


def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class CheckpointStore:
    """Checkpoints under a local directory or an `s3://bucket/prefix`, with a `latest.json` pointer."""

    def __init__(self, location: str | os.PathLike[str], keep: int = 3) -> None:
        self.location = str(location)
        self.keep = keep
        self.remote = is_s3_uri(self.location)
        self._s3 = s3_client() if self.remote else None

    def uri(self, name: str) -> str:
        return f"{self.location.rstrip('/')}/{name}"

    def save(self, state: dict[str, Any], name: str) -> str:
        state = {"format": CHECKPOINT_FORMAT, **state}
        if self.remote:
            self._save_s3(state, name)
        else:
            with atomic_path(Path(self.location) / name) as tmp:
                torch.save(state, tmp)
        self._write_pointer({"checkpoint": name, "epoch": state["epoch"], "step": state["step"],
                             "batch_in_epoch": state["batch_in_epoch"]})
        self._prune(keep_name=name)
        return self.uri(name)

    def latest(self) -> str | None:
        """URI of the newest checkpoint, or None when this location holds none."""
        text = self._read_pointer()
        if text is None:
            return None
        try:
            name = json.loads(text)["checkpoint"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise IntegrityError(f"{self.uri(LATEST_FILE)} is corrupt",
                                 "delete it to start over, or pass --resume with a checkpoint path") from None
        return self.uri(name)

    # -- storage back ends -------------------------------------------------------------------------------

    def _save_s3(self, state: dict[str, Any], name: str) -> None:
        loc = parse_s3_uri(self.uri(name))
        with tempfile.TemporaryDirectory(prefix="vn-ckpt-") as tmp_dir:
            tmp = Path(tmp_dir) / name
            torch.save(state, tmp)
            try:  # TransferManager: multipart for large checkpoints, object appears only when complete
                self._s3.upload_file(str(tmp), loc.bucket, loc.key)
            except Exception as exc:  # boto3 raises several types for an unreachable/refusing S3
                raise ServiceError(f"could not write checkpoint {loc.uri} ({type(exc).__name__}: {exc})",
                                   "check the S3 endpoint, credentials and that the bucket exists") from None

    def _write_pointer(self, pointer: dict[str, Any]) -> None:
        text = json.dumps(pointer, indent=2) + "\n"
        if self.remote:
            loc = parse_s3_uri(self.uri(LATEST_FILE))
            self._s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=text.encode())
        else:
            atomic_write_text(Path(self.location) / LATEST_FILE, text)

    def _read_pointer(self) -> str | None:
        if not self.remote:
            path = Path(self.location) / LATEST_FILE
            return path.read_text() if path.is_file() else None
        loc = parse_s3_uri(self.uri(LATEST_FILE))
        try:
            return self._s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read().decode()
        except Exception as exc:
            if s3_error_code(exc) in NOT_FOUND_CODES | MISSING_BUCKET_CODES:
                return None
            raise ServiceError(f"could not read {loc.uri} ({type(exc).__name__})",
                               "check the S3 endpoint and credentials") from None

    def _prune(self, keep_name: str) -> None:
        names = sorted(self._list_checkpoints())
        stale = [n for n in names if n != keep_name][: max(0, len(names) - self.keep)]
        for name in stale:
            if self.remote:
                loc = parse_s3_uri(self.uri(name))
                self._s3.delete_object(Bucket=loc.bucket, Key=loc.key)
            else:
                (Path(self.location) / name).unlink(missing_ok=True)

    def _list_checkpoints(self) -> list[str]:
        if not self.remote:
            return [p.name for p in Path(self.location).glob("checkpoint-*.pt")]
        loc = parse_s3_uri(self.location)
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        names = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if name.startswith("checkpoint-") and name.endswith(".pt") and "/" not in name:
                    names.append(name)
        return names


def load_checkpoint(uri: str) -> dict[str, Any]:
    """Read a checkpoint (local path or s3:// URI) with `weights_only=True`; one clear error if unusable."""
    state = load_torch_file(uri, "checkpoint",
                            "pass --resume never to start over, or --resume PATH of an older "
                                               "checkpoint")
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing or state.get("format") != CHECKPOINT_FORMAT:
        raise IntegrityError(f"{uri} is not a VisionNode training checkpoint (missing "
                             f"{', '.join(missing) or 'format'})",
                             "pass --resume never to start over, or the path of a checkpoint `train` wrote")
    return state


def load_torch_file(uri: str, what: str, hint: str,
                    missing_hint: str = "pass --resume auto (newest in --checkpoint-uri), never, or an "
                    "existing "
                                        "file") -> Any:
    """`torch.load(weights_only=True)` of a local file or s3:// object; unreadable ones are one
    IntegrityError."""
    data = read_bytes(uri, what, missing_hint)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise IntegrityError(f"{what} {uri} is corrupt or not a torch file ({reason})", hint) from None


RESUME_HINT = "pass --resume auto (newest in --checkpoint-uri), never, or an existing file"


def read_bytes(uri: str, what: str = "checkpoint", hint: str = RESUME_HINT) -> bytes:
    """The bytes of a local file or an s3:// object; a missing one is a DataError naming `what` + `hint`."""
    if not is_s3_uri(uri):
        path = Path(uri)
        if not path.is_file():
            raise DataError(f"{what} {uri} does not exist", hint)
        return path.read_bytes()
    loc = parse_s3_uri(uri)
    client = s3_client()
    try:
        return client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except Exception as exc:
        code = s3_error_code(exc)
        if code in NOT_FOUND_CODES | MISSING_BUCKET_CODES:
            raise DataError(f"{what} {uri} does not exist", hint) from None
        raise ServiceError(f"could not read {what} {uri} ({type(exc).__name__})",
                           "check the S3 endpoint and credentials") from None
