"""Mixed precision: which dtype the hardware runs well, the autocast context and the loss scaler.

`auto`: on CUDA bf16 when the GPU supports it (Ampere and newer), else fp16 with a GradScaler; on CPU bf16
only with AMX-BF16 tiles (Sapphire Rapids and newer), else fp32. AVX512-BF16 alone is not enough: on such a
CPU (2 cores, avx512_bf16, no AMX) bf16 autocast trained slower than fp32 (the casts cost more than the
dot-product instructions save), so it stays an explicit `--precision bf16` choice there.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from visionnode.components.common.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """AMX-BF16 present (Linux /proc/cpuinfo flag `amx_bf16`)."""
    return _cpuinfo_has("amx_bf16")


def _cpuinfo_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            return any(line.startswith("flags") and flag in line.split(":", 1)[-1].split() for line in fh)
    except OSError:
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """The dtype `requested` (one of config.PRECISIONS, checked by TrainConfig.validate) means on `device`."""
    if device.type == "cuda":
        if requested == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return requested
    if requested == "auto":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if requested == "fp16":
        raise ConfigError("--precision fp16 needs a CUDA GPU", "use bf16 or fp32 on CPU (or auto)")
    return requested


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling only for fp16 on CUDA (bf16 has fp32's range); disabled scalers are no-ops."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
